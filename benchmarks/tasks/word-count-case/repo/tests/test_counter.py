from wordfreq import top_words


def test_counts():
    assert top_words("tea cake tea jam tea cake", 2) == [("tea", 3), ("cake", 2)]


def test_empty_text():
    assert top_words("") == []
