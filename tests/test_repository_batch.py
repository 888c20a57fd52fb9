"""repository_batch: the $batch body written and read without the email package, against real Azurite."""
from __future__ import annotations

import re
import uuid

import pytest
from azure.core import MatchConditions
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableServiceClient, TableTransactionError, UpdateMode

from errors import ConflictError
from repository_batch import decode, submit_transaction
from repository_clients import translate_errors

IF_MATCH = {"mode": UpdateMode.REPLACE, "match_condition": MatchConditions.IfNotModified}
STALE = 'W/"datetime\'2020-01-01T00%3A00%3A00.0000000Z\'"'


class Capture(RequestsTransport):
    """Keeps the body of every $batch request sent through it."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def send(self, request, **kwargs):
        if request.url.endswith("$batch"):
            self.bodies.append(request.body if isinstance(request.body, bytes) else request.body.encode())
        return super().send(request, **kwargs)


@pytest.fixture
def tables(azurite):
    transport = Capture()
    service = TableServiceClient.from_connection_string(azurite.connection_string, transport=transport)
    name = f"batch{uuid.uuid4().hex[:10]}"
    yield service.create_table(name), transport
    service.delete_table(name)


def normalized(body: bytes) -> str:
    """A body with its random boundaries and its clock taken out."""
    text = re.sub(r"(batch|changeset)_[0-9a-f-]{36}", r"\1_X", body.decode())
    return re.sub(r"(x-ms-date|Date): [^\r\n]+", r"\1: D", text)


def test_the_body_is_the_one_the_sdk_writes_and_the_results_carry_each_rows_etag(tables):
    table, transport = tables
    ops = [("create", {"PartitionKey": "p", "RowKey": f"r{i}", "n": i, "s": "é\n\"x\"", "f": 1.5, "b": True})
           for i in range(3)]
    table.submit_transaction(ops)  # the SDK's own body, for comparison
    ours = submit_transaction(table, [("create", {**e, "PartitionKey": "q"}) for _, e in ops])
    sdk_body, our_body = transport.bodies
    assert normalized(our_body) == normalized(sdk_body).replace("PartitionKey\": \"p\"", "PartitionKey\": \"q\"")
    stored = {e["RowKey"]: e for e in table.query_entities("PartitionKey eq 'q'")}
    assert [r["etag"] for r in ours] == [stored[f"r{i}"].metadata["etag"] for i in range(3)]
    assert stored["r1"]["s"] == "é\n\"x\"" and stored["r2"]["n"] == 2 and stored["r0"]["b"] is True

    rows = [table.get_entity("q", f"r{i}") for i in range(3)]
    updated = submit_transaction(table, [("update", {**r, "n": 10 + i}, {**IF_MATCH, "etag": r.metadata["etag"]})
                                         for i, r in enumerate(rows)])
    assert [u["etag"] for u in updated] == [table.get_entity("q", f"r{i}").metadata["etag"] for i in range(3)]


def test_a_stale_etag_fails_the_whole_transaction_and_names_its_operation(tables):
    table, _ = tables
    submit_transaction(table, [("create", {"PartitionKey": "p", "RowKey": f"r{i}", "n": i}) for i in range(3)])
    rows = [table.get_entity("p", f"r{i}") for i in range(3)]
    ops = [("update", {**r, "n": 99}, {**IF_MATCH, "etag": STALE if i == 1 else r.metadata["etag"]})
           for i, r in enumerate(rows)]
    with pytest.raises(TableTransactionError) as caught:
        submit_transaction(table, ops)
    assert caught.value.status_code == 412 and caught.value.index == 1
    assert [table.get_entity("p", f"r{i}")["n"] for i in range(3)] == [0, 1, 2]  # none applied
    with pytest.raises(ConflictError) as conflict, translate_errors("commit"):
        submit_transaction(table, ops)
    assert conflict.value.__cause__.index == 1


def test_creating_a_row_that_exists_is_a_conflict_and_creates_nothing(tables):
    table, _ = tables
    submit_transaction(table, [("create", {"PartitionKey": "p", "RowKey": "b"})])
    with pytest.raises(TableTransactionError) as caught:
        submit_transaction(table, [("create", {"PartitionKey": "p", "RowKey": "a"}),
                                   ("create", {"PartitionKey": "p", "RowKey": "b"})])
    assert caught.value.status_code == 409 and caught.value.index == 1
    assert [e["RowKey"] for e in table.query_entities("PartitionKey eq 'p'")] == ["b"]


def test_decode_reads_parts_with_and_without_a_blank_line_before_the_boundary():
    text = ("--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n"
            "--changesetresponse_2\r\nContent-Type: application/http\r\n\r\n"
            "HTTP/1.1 204 No Content\r\nETag: W/\"a\"\r\n--changesetresponse_2\r\n"
            "Content-Type: application/http\r\n\r\nHTTP/1.1 412 Precondition Failed\r\nContent-Type: application/json"
            "\r\n\r\n{\"odata.error\":{\"code\":\"UpdateConditionNotSatisfied\",\"message\":{\"value\":\"1:no\"}}}"
            "\r\n--changesetresponse_2--\r\n--batchresponse_1--\r\n")
    first, second = decode(text)
    assert (first.status, first.headers, first.body) == (204, {"etag": 'W/"a"'}, "")
    assert second.status == 412 and second.reason == "Precondition Failed" and second.body.startswith("{")
