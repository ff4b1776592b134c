from searchapi import build_url


def test_no_params():
    assert build_url("https://s.example.com/", "/v1/search") == "https://s.example.com/v1/search"


def test_simple_params():
    url = build_url("https://s.example.com", "v1/search", {"q": "tea", "page": 2, "lang": None})
    assert url == "https://s.example.com/v1/search?q=tea&page=2"
