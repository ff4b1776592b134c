from .slugs import slugify

__all__ = ["slugify"]
