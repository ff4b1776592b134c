from httpkit import Client


def flaky(failures):
    calls = []

    def transport(method, url):
        calls.append(url)
        if len(calls) <= failures:
            raise ConnectionError("reset by peer")
        return "ok"

    return transport


def test_default_client_retries_three_times():
    assert Client("https://api.example.com", flaky(3)).get("status") == "ok"


def test_default_retries_value():
    assert Client("https://api.example.com", flaky(0)).retries == 3
