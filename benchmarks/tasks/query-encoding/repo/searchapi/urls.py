"""URLs for the search service."""


def build_url(base: str, path: str, params: dict | None = None) -> str:
    """base + path, plus the query string made from `params` (None values are left out)."""
    url = base.rstrip("/") + "/" + path.lstrip("/")
    pairs = [f"{key}={value}" for key, value in (params or {}).items() if value is not None]
    return url + ("?" + "&".join(pairs) if pairs else "")
