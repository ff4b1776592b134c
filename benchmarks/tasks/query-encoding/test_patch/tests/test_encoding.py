from urllib.parse import parse_qs, urlsplit

from searchapi import build_url


def test_ampersand_in_value_is_encoded():
    url = build_url("https://s.example.com", "v1/search", {"q": "R&D", "page": 1})
    assert parse_qs(urlsplit(url).query) == {"q": ["R&D"], "page": ["1"]}


def test_spaces_and_unicode():
    url = build_url("https://s.example.com", "v1/search", {"q": "crème brûlée = 5€"})
    assert parse_qs(urlsplit(url).query) == {"q": ["crème brûlée = 5€"]}
    assert " " not in url
