"""A small HTTP client wrapper that retries failed requests."""


class RequestFailed(Exception):
    """Every attempt failed; the last error is chained."""


class Client:
    """Send requests through `transport`, a callable (method, url) -> response.

    retries: how many times a failed request is tried again (default 3).
    timeout: seconds per attempt (default 10).
    """

    def __init__(self, base_url: str, transport, retries: int = 0, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.transport = transport
        self.retries = retries
        self.timeout = timeout

    def get(self, path: str):
        url = f"{self.base_url}/{path.lstrip('/')}"
        last = None
        for _ in range(self.retries + 1):
            try:
                return self.transport("GET", url)
            except ConnectionError as exc:
                last = exc
        raise RequestFailed(f"GET {url} failed after {self.retries + 1} attempts") from last
