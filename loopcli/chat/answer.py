"""The model's answers as markdown. Its own module because Textual's Markdown (markdown-it,
pygments) takes as long to import as the rest of the app: it loads after the first screen."""

from textual.widgets import Markdown


class Answer(Markdown):
    """The model's prose, streamed as markdown (code blocks highlighted)."""
