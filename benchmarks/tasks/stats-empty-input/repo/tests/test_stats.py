from reportlib import summarize
from reportlib.stats import format_summary


def test_summary_of_values():
    assert summarize([1, 2, 3, 6]) == {"count": 4, "mean": 3.0, "min": 1, "max": 6}


def test_format_summary():
    assert format_summary(summarize([2, 4])) == "2 values, mean 3.00 (min 2, max 4)"
