from humanize import format_size


def test_bytes():
    assert format_size(512) == "512 B"


def test_kibibytes():
    assert format_size(1536) == "1.5 KiB"
