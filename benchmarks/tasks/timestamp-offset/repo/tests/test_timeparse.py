from datetime import datetime, timezone

from eventlog import parse_timestamp


def test_zulu_time():
    assert parse_timestamp("2024-03-01T12:00:00Z") == datetime(2024, 3, 1, 12, tzinfo=timezone.utc)


def test_naive_is_utc():
    parsed = parse_timestamp("2024-03-01T12:00:00")
    assert parsed.tzinfo is not None
    assert parsed == datetime(2024, 3, 1, 12, tzinfo=timezone.utc)
