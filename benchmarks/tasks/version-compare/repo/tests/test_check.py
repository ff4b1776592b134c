from updater import is_newer, update_message


def test_patch_release_is_newer():
    assert is_newer("1.2.4", "1.2.3")


def test_same_version_is_not_newer():
    assert not is_newer("v2.0.0", "2.0.0")
    assert update_message("2.0.0", "2.0.0") is None
