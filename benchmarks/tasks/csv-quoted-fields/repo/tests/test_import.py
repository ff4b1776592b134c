from contacts import import_contacts, parse_line


def test_plain_fields():
    assert parse_line("ann,ann@example.com,Oslo\n") == ["ann", "ann@example.com", "Oslo"]


def test_import():
    text = "name,email,city\nann,ann@example.com,Oslo\n"
    assert import_contacts(text) == [{"name": "ann", "email": "ann@example.com", "city": "Oslo"}]
