"""loopcli: a local coding assistant for LoopCoder-V2."""

__version__ = "0.1.0"
