from reportlib import summarize
from reportlib.stats import format_summary


def test_empty_summary():
    assert summarize([]) == {"count": 0, "mean": None, "min": None, "max": None}


def test_empty_report_text():
    assert format_summary(summarize([])) == "no data"
