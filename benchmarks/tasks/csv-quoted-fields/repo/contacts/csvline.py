"""A minimal CSV line splitter (we only import one simple export format)."""


def parse_line(line: str, sep: str = ",") -> list[str]:
    """Split one CSV line into fields. Fields may be wrapped in double quotes."""
    fields = line.rstrip("\r\n").split(sep)
    return [field.strip('"') for field in fields]
