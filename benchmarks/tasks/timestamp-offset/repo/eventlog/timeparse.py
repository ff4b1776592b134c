"""Timestamps from the servers' event logs, as aware datetimes in UTC."""

from datetime import datetime, timezone

_FORMAT = "%Y-%m-%dT%H:%M:%S"


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO 8601 timestamp such as 2024-03-01T12:00:00Z into UTC.

    A timestamp without an offset is taken to be UTC already.
    """
    text = text.strip()
    moment = datetime.strptime(text[:19], _FORMAT)
    return moment.replace(tzinfo=timezone.utc)
