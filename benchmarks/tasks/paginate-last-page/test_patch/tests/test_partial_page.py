from pager import paginate


def test_last_partial_page_is_reachable():
    page = paginate(list(range(25)), 3, per_page=10)
    assert page.items == [20, 21, 22, 23, 24]
    assert not page.has_next


def test_total_pages_counts_partial_page():
    assert paginate(list(range(25)), 1, per_page=10).total_pages == 3
