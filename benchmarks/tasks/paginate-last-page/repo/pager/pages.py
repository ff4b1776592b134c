"""Split a list of results into numbered pages."""

from dataclasses import dataclass


@dataclass
class Page:
    number: int
    items: list
    total_pages: int

    @property
    def has_next(self) -> bool:
        return self.number < self.total_pages


def page_count(total: int, per_page: int) -> int:
    if per_page < 1:
        raise ValueError("per_page must be at least 1")
    return total // per_page


def paginate(items: list, page: int, per_page: int = 10) -> Page:
    """Page `page` (1-based) of `items`, `per_page` items a page."""
    pages = page_count(len(items), per_page)
    if page < 1 or (pages and page > pages):
        raise IndexError(f"page {page} out of range 1..{pages}")
    start = (page - 1) * per_page
    return Page(page, items[start:start + per_page], pages)
