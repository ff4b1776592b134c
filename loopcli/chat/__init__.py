"""`loopcli chat`: the Textual terminal app around the agent loop (see docs/chat.md)."""
