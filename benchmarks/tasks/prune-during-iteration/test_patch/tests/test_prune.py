from stock import Inventory


def test_prune_removes_empty_skus():
    inv = Inventory()
    for sku in ("bolt", "nut", "washer"):
        inv.receive(sku, 1)
    inv.ship("bolt", 1)
    inv.ship("washer", 1)
    assert inv.prune() == ["bolt", "washer"]
    assert inv.levels == {"nut": 1}


def test_prune_with_nothing_to_remove():
    inv = Inventory()
    inv.receive("nut", 4)
    assert inv.prune() == []
