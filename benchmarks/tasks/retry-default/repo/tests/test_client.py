import pytest

from httpkit import Client, RequestFailed


def test_joins_base_url_and_path():
    seen = []
    client = Client("https://api.example.com/", lambda m, u: seen.append((m, u)) or "ok")
    assert client.get("/users") == "ok"
    assert seen == [("GET", "https://api.example.com/users")]


def test_gives_up_after_retries():
    def down(method, url):
        raise ConnectionError("refused")

    with pytest.raises(RequestFailed):
        Client("https://api.example.com", down, retries=1).get("x")
