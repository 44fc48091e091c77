"""A JSON transform: normalizes a list of order records and totals them.

    curl -X POST localhost:8080/v1/functions/transform/invoke \
         -d '{"orders": [{"sku": " a-1 ", "qty": "2", "price": "9.50"}]}'
"""

from decimal import Decimal


def normalize(order):
    quantity = int(order["qty"])
    price = Decimal(str(order["price"]))
    return {
        "sku": order["sku"].strip().upper(),
        "qty": quantity,
        "price": str(price),
        "line_total": str(price * quantity),
    }


def handler(event, context):
    orders = [normalize(order) for order in event.get("orders", [])]
    total = sum((Decimal(o["line_total"]) for o in orders), Decimal("0"))
    return {"orders": orders, "total": str(total), "count": len(orders)}
