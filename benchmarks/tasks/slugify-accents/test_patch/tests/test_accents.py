from blog import slugify


def test_accented_letters_keep_their_base_letter():
    assert slugify("Crème brûlée for beginners") == "creme-brulee-for-beginners"


def test_german_title():
    assert slugify("Über die Brücke") == "uber-die-brucke"
