"""The shop's own end-to-end tests, written with no knowledge of laneway.

`laneway run --sandbox NAME -- python -m pytest examples/shop/tests` points them at the sandbox:
httpx honours HTTP_PROXY, and laneway's run proxy adds the routing key to every request.
"""

import os

import httpx

WEB = os.environ.get("LANEWAY_URL_WEB", "http://127.0.0.1:19401")
ORDERS = os.environ.get("LANEWAY_URL_ORDERS", "http://127.0.0.1:19402")


def test_buying_a_book_quotes_two_of_them() -> None:
    resp = httpx.get(f"{WEB}/buy", params={"item": "book", "currency": "EUR"})
    assert resp.status_code == 200
    quote = resp.json()["quote"]
    assert quote["qty"] == 2
    assert quote["total"] == round(quote["unit"] * 2, 2)


def test_the_legacy_quote_still_answers() -> None:
    resp = httpx.get(f"{ORDERS}/quote-v1", params={"item": "mug"})
    assert resp.status_code == 200
    assert resp.json()["item"] == "mug"
