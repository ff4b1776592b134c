from .stats import summarize

__all__ = ["summarize"]
