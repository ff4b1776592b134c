from wordfreq import top_words


def test_case_is_ignored():
    assert top_words("The cat saw the dog. THE end", 1) == [("the", 3)]


def test_punctuation_is_not_part_of_words():
    assert top_words("Stop. Stop, stop! Don't stop", 2) == [("stop", 4), ("don't", 1)]
