from shop import Cart, LineItem


def test_new_carts_are_empty():
    first = Cart("ann")
    first.add("tea", 450)
    second = Cart("bob")
    assert second.items == []
    assert second.total_cents() == 0


def test_cart_does_not_change_callers_list():
    mine = [LineItem("tea", 450)]
    cart = Cart("ann", mine)
    cart.add("cake", 300)
    assert mine == [LineItem("tea", 450)]
