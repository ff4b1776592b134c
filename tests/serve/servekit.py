"""Tiny synthetic models and a real uvicorn server on a free loopback port, always shut down
(helpers of tests/serve; the fixtures are in conftest.py)."""

from __future__ import annotations

import contextlib
import threading
import time

import torch
from safetensors.torch import load_file, save_file

from loopcli.convert.export import convert
from loopcli.runtime.synthetic import write_synthetic
from loopcli.runtime.tokenizer import Tokenizer
from loopcli.serve import bound_socket, uvicorn_server

START_TIMEOUT = 60  # seconds for a server to come up
TOOL_TEXT = "<tool_call><function=get_weather><parameter=city>Paris"  # what the tool model writes


def confident_model(root, scale: float = 1.0):
    """A q8_0 LoopCoder (R = 2) whose head reads a fixed permutation of the input embedding:
    its predictions are confident, as a trained model's are, yet sampling still varies."""
    d = write_synthetic(root / "confident", arch="loopcoder", dtype="f32", plt_window_size=[3, 0])
    t = load_file(d / "model.safetensors")
    E = t["model.embed_tokens.weight"]
    perm = torch.randperm(E.shape[0], generator=torch.Generator().manual_seed(3))
    t["lm_head.weight"] = scale * E[perm] / E[perm].norm(dim=-1, keepdim=True)
    save_file(t, d / "model.safetensors", metadata={"format": "pt"})
    return convert(d, root / "confident-q8_0.gguf", "q8_0", show_progress=False)


def tool_model(root):
    """A LoopCoder (R = 2) that answers any chat with TOOL_TEXT, then <|im_end|>.

    Its layers add nothing (zero output projections, unit norms), and loop 2 reads its token's
    embedding plus the previous token's (emb_scale = hidden_scale), so the last hidden state is
    the sum of the last two tokens' embeddings. The head maps each such pair along the text to the
    token that follows it: a successor table keyed by token pairs, which all differ in TOOL_TEXT."""
    d = write_synthetic(root / "tool", arch="loopcoder", dtype="f32", tokenizer="qwen2", hidden_size=256,
                        plt_window_size=[3, 0], plt_emb_scale=0.7, plt_hidden_scale=0.7)
    tok = Tokenizer.load(d)
    t = load_file(d / "model.safetensors")
    vocab, hidden = t["model.embed_tokens.weight"].shape
    E = torch.randn(vocab, hidden, generator=torch.Generator().manual_seed(5))
    E = E / E.pow(2).mean(-1, keepdim=True).sqrt()  # rms 1: a norm leaves a row as it is
    t["model.embed_tokens.weight"] = E
    for name in t:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            t[name] = torch.zeros_like(t[name])
        elif name.endswith("norm.weight"):
            t[name] = torch.ones_like(t[name])
    tail = tok.encode("<|im_start|>assistant\n", add_bos=False)[-2:]  # how every chat prompt ends
    text = tok.encode(TOOL_TEXT, add_bos=False)
    assert tok.decode(text) == TOOL_TEXT
    chain = [*tail, *text, tok.token_to_id("<|im_end|>")]
    pairs = list(zip(chain, chain[1:]))
    assert len(set(pairs[:-1])) == len(pairs) - 1, "a token pair repeats: the table would be ambiguous"
    head = torch.zeros(vocab, hidden)
    for (a, b), nxt in zip(pairs, chain[2:]):
        u = E[a] + E[b]
        head[nxt] += 40.0 * u / u.norm()
    t["lm_head.weight"] = head
    save_file(t, d / "model.safetensors", metadata={"format": "pt"})
    return d


@contextlib.contextmanager
def running(server, host: str = "127.0.0.1"):
    """Serve `server` with uvicorn in a thread; yields the base URL; always stops it."""
    sock = bound_socket(host, 0)
    port = sock.getsockname()[1]
    uv = uvicorn_server(server, host, port)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not uv.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        yield f"http://{host}:{port}"
    finally:
        uv.should_exit = True
        thread.join(20)
        server.scheduler.close()
        sock.close()
        assert not thread.is_alive(), "the server did not stop"
