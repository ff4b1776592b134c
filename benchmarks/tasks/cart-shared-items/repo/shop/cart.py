"""Shopping carts."""

from dataclasses import dataclass


@dataclass
class LineItem:
    sku: str
    price_cents: int
    quantity: int = 1


class Cart:
    def __init__(self, customer: str, items: list = []):
        self.customer = customer
        self.items = items

    def add(self, sku: str, price_cents: int, quantity: int = 1) -> None:
        self.items.append(LineItem(sku, price_cents, quantity))

    def total_cents(self) -> int:
        return sum(item.price_cents * item.quantity for item in self.items)
