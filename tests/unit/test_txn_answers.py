"""How jailsyncd reads the answer of a writing transaction (``transport.txn_errors``):
an applied transaction's echo of everything it wrote is not decoded, errors are
still found, anything that is not Consul's JSON still fails. Answer shapes as Consul
1.8.7 writes them (indented, ``"Errors": null`` last); pure, no Consul."""

from __future__ import annotations

import json

import pytest
from consul.base import ConsulException, Response

from jailsyncd.adapters.consul.transport import txn_errors

RESULTS = [{"Node": {"ID": "", "Node": "web1", "Address": "10.0.0.1", "Meta": {"note": '"Errors": null}'}, "CreateIndex": 13, "ModifyIndex": 13}}]
ERROR = {"OpIndex": 1, "What": 'failed to insert service: node "web1" doesn\'t exist'}


@pytest.mark.parametrize(
    "code,body,errors",
    [
        (200, json.dumps({"Results": RESULTS, "Errors": None}, indent=4) + "\n", []),
        (200, json.dumps({"Results": RESULTS, "Errors": None}, separators=(",", ":")), []),
        (200, json.dumps({"Results": RESULTS, "Errors": None}, indent=2), []),
        (200, "", []),
        (409, json.dumps({"Results": None, "Errors": [ERROR]}, indent=4) + "\n", [ERROR]),
        # Errors in a 200 (Consul sends 409 then, but the answer says what it says).
        (200, json.dumps({"Results": None, "Errors": [ERROR]}, indent=4), [ERROR]),
        # A value that looks like the end of an answer, inside the echo, is not the end.
        (200, json.dumps({"Results": RESULTS, "Errors": [ERROR]}), [ERROR]),
    ],
)
def test_errors_of_a_transaction(code: int, body: str, errors: list) -> None:
    assert txn_errors(Response(code, {}, body, body.encode())) == errors


@pytest.mark.parametrize(
    "code,body,raised",
    [
        (200, "<html>portal</html>", ValueError),
        (200, '{"Results": [], "Errors": nul', ValueError),  # cut short
        (200, "[]", ValueError),
        (409, "not json", ValueError),
        (500, "rpc error", ConsulException),
    ],
)
def test_an_answer_that_is_not_a_transactions_fails(code: int, body: str, raised: type[Exception]) -> None:
    with pytest.raises(raised):
        txn_errors(Response(code, {}, body, body.encode()))
