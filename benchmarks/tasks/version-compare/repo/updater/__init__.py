from .check import is_newer, update_message

__all__ = ["is_newer", "update_message"]
