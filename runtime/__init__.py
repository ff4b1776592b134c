"""Model config, checkpoint reading, the reference PLT forward and its decode paths, and the
engine (`load`)."""


def load(path, **options):
    """An Engine for a GGUF file or HF checkpoint directory (options: engine.load)."""
    from .engine import load as load_engine

    return load_engine(path, **options)
