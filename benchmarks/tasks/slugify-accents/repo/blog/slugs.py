"""URL slugs for blog post titles."""

import re


def slugify(title: str, max_length: int = 60) -> str:
    """'Hello, World!' -> 'hello-world'."""
    ascii_only = title.encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_only.lower()).strip("-")
    return slug[:max_length].rstrip("-")
