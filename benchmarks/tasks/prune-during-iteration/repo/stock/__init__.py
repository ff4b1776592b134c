from .inventory import Inventory

__all__ = ["Inventory"]
