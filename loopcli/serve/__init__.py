"""`loopcli serve`: an OpenAI-compatible HTTP server on the runtime engine.

Starlette (routes, streaming responses) on uvicorn (the ASGI server); the engine runs in one
worker thread (scheduler.py) that decodes the active sequences together.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from loopcli.runtime.errors import ModelError

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Anything beyond loopback is reachable by others: it needs a key."""
    if not is_loopback(host) and not api_key:
        raise ModelError(f"binding to {host} exposes the model to the network; pass --api-key KEY "
                         "(or bind to 127.0.0.1)")


def load_server(model: str | Path, ctx: int | None = None, parallel: int = 1, queue: int = 64,
                api_key: str | None = None, name: str | None = None, threads: int | None = None):
    """The Server (engine, tokenizer, scheduler) for a GGUF file or checkpoint directory."""
    from loopcli.runtime.engine import load
    from loopcli.runtime.tokenizer import Tokenizer

    from .app import Server

    model = Path(model)
    if not model.exists():
        raise ModelError(f"model {model} does not exist; give a .gguf file or a checkpoint directory")
    engine = load(model, max_context=ctx, threads=threads)
    tokenizer = Tokenizer.load(model)
    return Server(engine, tokenizer, name or (model.stem if model.is_file() else model.name),
                  parallel=parallel, queue=queue, api_key=api_key)


def uvicorn_server(server, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning"):
    """A uvicorn.Server for `server` (run it with .run(), or .run(sockets=[...]) on a bound socket)."""
    import uvicorn

    from .app import make_app

    config = uvicorn.Config(make_app(server), host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=5, access_log=False)
    return uvicorn.Server(config)


def bound_socket(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), so the address is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ModelError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
    sock.listen(128)
    return sock
