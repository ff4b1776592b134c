import pytest

from stock import Inventory


def test_receive_and_ship():
    inv = Inventory()
    inv.receive("bolt", 5)
    inv.ship("bolt", 2)
    assert inv.levels == {"bolt": 3}


def test_cannot_ship_more_than_stock():
    inv = Inventory()
    inv.receive("nut", 1)
    with pytest.raises(ValueError):
        inv.ship("nut", 2)
