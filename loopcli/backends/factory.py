"""One place that turns a backend name and its options into a Backend.

Backend modules are imported only when chosen: llama-cpp-python and openai are optional.
"""

from __future__ import annotations

from .base import Backend, BackendError

KINDS = ("local", "llama.cpp", "openai", "scripted")
ALIASES = {"llama_cpp": "llama.cpp", "llamacpp": "llama.cpp", "openai-compatible": "openai"}
MODEL_HELP = {
    "local": "a checkpoint directory or a .gguf file (LoopCoder or Llama/Qwen2 layout)",
    "llama.cpp": "a .gguf file of an architecture llama.cpp runs",
    "scripted": "a JSONL file of model turns",
}
# the constructor argument each backend takes the context length (--ctx) as
CONTEXT_ARG = {"local": "max_context", "llama.cpp": "n_ctx", "openai": "context_window",
               "scripted": "context_window"}
INSTALL = {"llama_cpp": "pip install 'loopcli[llama]' (llama-cpp-python)", "openai": "pip install openai"}


def make_backend(kind: str, model: str | None = None, base_url: str | None = None,
                 api_key: str | None = None, ctx: int | None = None, **opts) -> Backend:
    """`model` is a path (local, llama.cpp, scripted) or a served model name (openai, optional).

    `ctx` is the context length in tokens (None: the backend's own choice). Bad choices raise
    ValueError; a missing optional package or a model that fails to load raises BackendError.
    `opts` go to the backend's constructor.
    """
    kind = ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise ValueError(f"unknown backend {kind!r}; choose one of: {', '.join(KINDS)}")
    if ctx is not None:
        if ctx < 1:
            raise ValueError(f"the context length must be a positive number of tokens, got {ctx}")
        opts[CONTEXT_ARG[kind]] = ctx
    if kind == "openai":
        if not base_url:
            raise ValueError("the openai backend needs the base URL of an OpenAI-compatible server, "
                             "e.g. http://127.0.0.1:8000/v1")
        return _load("openai_compat", "OpenAIBackend")(base_url, model=model, api_key=api_key, **opts)
    if base_url or api_key:
        raise ValueError(f"a base URL and an API key apply only to the openai backend, not {kind!r}")
    if not model:
        raise ValueError(f"the {kind} backend needs a model: {MODEL_HELP[kind]}")
    module, cls = {"local": ("local", "LocalBackend"), "llama.cpp": ("llama_cpp", "LlamaCppBackend"),
                   "scripted": ("scripted", "ScriptedBackend")}[kind]
    return _load(module, cls)(model, **opts)


def _load(module: str, cls: str):
    try:
        mod = __import__(f"{__package__}.{module}", fromlist=[cls])
    except ImportError as exc:
        if exc.name in INSTALL:
            raise BackendError(f"this backend needs the {exc.name} package: {INSTALL[exc.name]}") from None
        raise
    return getattr(mod, cls)
