from .cart import Cart, LineItem

__all__ = ["Cart", "LineItem"]
