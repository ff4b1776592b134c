from updater import is_newer, update_message


def test_two_digit_minor_is_newer():
    assert is_newer("1.10.0", "1.9.2")
    assert update_message("1.10.0", "1.9.2") == "Version 1.10.0 is available (you have 1.9.2)."


def test_older_two_digit_is_not_newer():
    assert not is_newer("1.9.2", "1.10.0")
