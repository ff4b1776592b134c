"""The one exception tools raise: its message is shown to the model or the user as is."""


class ToolError(Exception):
    """A tool call that cannot be carried out; the message names the problem and the fix."""
