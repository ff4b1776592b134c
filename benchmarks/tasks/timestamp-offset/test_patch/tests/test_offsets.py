from datetime import datetime, timezone

from eventlog import parse_timestamp


def test_positive_offset_converted_to_utc():
    parsed = parse_timestamp("2024-03-01T12:00:00+02:00")
    assert parsed == datetime(2024, 3, 1, 10, tzinfo=timezone.utc)
    assert parsed.utcoffset().total_seconds() == 0


def test_negative_offset_crosses_midnight():
    assert parse_timestamp("2024-03-01T22:30:00-05:00") == datetime(2024, 3, 2, 3, 30, tzinfo=timezone.utc)
