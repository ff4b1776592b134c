"""Import contacts exported by the address book (name,email,city)."""

from .csvline import parse_line


def import_contacts(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    header = parse_line(lines[0])
    return [dict(zip(header, parse_line(line))) for line in lines[1:]]
