from contacts import import_contacts, parse_line


def test_comma_inside_quotes():
    assert parse_line('"Doe, Jane",jane@example.com,"Washington, D.C."') == [
        "Doe, Jane", "jane@example.com", "Washington, D.C."]


def test_escaped_quote_and_empty_field():
    assert parse_line('"say ""hi""",,x') == ['say "hi"', "", "x"]


def test_import_quoted_name():
    text = 'name,email,city\n"Doe, Jane",jane@example.com,Oslo\n'
    assert import_contacts(text)[0]["name"] == "Doe, Jane"
