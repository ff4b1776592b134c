from humanize import format_size


def test_exactly_one_kib():
    assert format_size(1024) == "1.0 KiB"


def test_exactly_one_mib():
    assert format_size(1024 * 1024) == "1.0 MiB"


def test_just_below_one_kib():
    assert format_size(1023) == "1023 B"
