"""Most frequent words of a text, for the tag cloud."""

from collections import Counter


def words(text: str) -> list[str]:
    return text.split()


def top_words(text: str, n: int = 3) -> list[tuple[str, int]]:
    """The `n` most common words with their counts, most common first (ties: first seen)."""
    return Counter(words(text)).most_common(n)
