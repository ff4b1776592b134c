from blog import slugify


def test_basic():
    assert slugify("Hello, World!") == "hello-world"


def test_max_length():
    assert slugify("a" * 10 + " " + "b" * 10, max_length=12) == "aaaaaaaaaa-b"
