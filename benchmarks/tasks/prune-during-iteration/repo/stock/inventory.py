"""Warehouse stock levels."""


class Inventory:
    def __init__(self):
        self.levels: dict[str, int] = {}

    def receive(self, sku: str, count: int) -> None:
        self.levels[sku] = self.levels.get(sku, 0) + count

    def ship(self, sku: str, count: int) -> None:
        if self.levels.get(sku, 0) < count:
            raise ValueError(f"only {self.levels.get(sku, 0)} of {sku} in stock")
        self.levels[sku] -= count

    def prune(self) -> list[str]:
        """Forget SKUs that are out of stock; returns them."""
        removed = []
        for sku, count in self.levels.items():
            if count == 0:
                del self.levels[sku]
                removed.append(sku)
        return removed
