import pytest

from pager import paginate


def test_first_page():
    page = paginate(list(range(30)), 1, per_page=10)
    assert page.items == list(range(10))
    assert page.total_pages == 3
    assert page.has_next


def test_page_out_of_range():
    with pytest.raises(IndexError):
        paginate(list(range(20)), 5, per_page=10)
