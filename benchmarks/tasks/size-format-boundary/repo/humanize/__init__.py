from .sizes import format_size

__all__ = ["format_size"]
