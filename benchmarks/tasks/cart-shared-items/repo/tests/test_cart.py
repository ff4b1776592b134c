from shop import Cart, LineItem


def test_total():
    cart = Cart("ann", [LineItem("tea", 450, 2)])
    cart.add("cake", 300)
    assert cart.total_cents() == 1200


def test_starts_with_given_items():
    assert Cart("bob", [LineItem("tea", 450)]).items == [LineItem("tea", 450)]
