"""Tell the user when a newer release is out."""


def is_newer(latest: str, current: str) -> bool:
    """Whether release `latest` (e.g. "1.10.0") is newer than `current`."""
    return latest.strip().lstrip("v") > current.strip().lstrip("v")


def update_message(latest: str, current: str) -> str | None:
    if is_newer(latest, current):
        return f"Version {latest} is available (you have {current})."
    return None
