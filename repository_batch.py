"""Entity-group transactions (``$batch``) without the email package.

``TableClient.submit_transaction`` builds the multipart body with Python's ``email`` library and parses the
answer with it again; in a worker that commits every task through transactions that was a quarter of its
CPU (py-spy, hello_world on 2 hosts). ``submit_transaction`` here keeps everything else of the SDK: the
operations are built by its ``TableBatchOperations`` (entity serialization, URLs, If-Match), the request goes
through the client's own pipeline (authentication, retries, our transports and fault injection), and
failures are the SDK's exceptions (``TableTransactionError`` with ``index``, ``RequestTooLargeError``), so
callers and ``translate_errors`` see no difference. Only the multipart text is written and read directly, in
the wire format the SDK itself sends (checked against Azurite in ``tests/test_repository_batch.py``).
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from wsgiref.handlers import format_date_time

from azure.core.rest import HttpRequest
from azure.data.tables import RequestTooLargeError, TableClient, TableTransactionError
from azure.data.tables._error import _decode_error, _validate_tablename_error
from azure.data.tables._table_batch import TableBatchOperations

CRLF = "\r\n"


@dataclass
class Part:
    """One operation's answer inside a batch response."""

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: str = ""


def encode(requests: list[HttpRequest], changeset: str, batch: str, date: str) -> bytes:
    """The multipart/mixed body of one changeset holding ``requests`` (as azure-core writes it)."""
    out = [f"--{batch}{CRLF}Content-Type: multipart/mixed; boundary={changeset}{CRLF}{CRLF}"]
    for index, request in enumerate(requests):
        content = request.content if request.content is not None else ""
        if isinstance(content, bytes | bytearray):
            content = content.decode("utf-8")
        headers = {**request.headers, "x-ms-date": date, "Date": date}
        headers.pop("Content-Length", None)
        head = [f"{request.method} {request.url} HTTP/1.1"]
        if "Content-Type" in headers:
            head.append(f"Content-Type: {headers.pop('Content-Type')}")
        head.append(f"Content-Length: {len(content.encode('utf-8'))}")
        head += [f"{name}: {value}" for name, value in headers.items()]
        out.append(f"--{changeset}{CRLF}Content-Type: application/http{CRLF}Content-Transfer-Encoding: binary{CRLF}"
                   f"Content-ID: {index}{CRLF}{CRLF}{CRLF.join(head)}{CRLF}{CRLF}{content}{CRLF}")
    out.append(f"--{changeset}--{CRLF}{CRLF}--{batch}--{CRLF}")
    return "".join(out).encode("utf-8")


def decode(text: str) -> list[Part]:
    """Every HTTP answer in a (nested) multipart batch response, in order."""
    lines = text.replace(CRLF, "\n").split("\n")
    parts: list[Part] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.startswith("HTTP/1.1 "):
            continue
        code, _, reason = line[len("HTTP/1.1 "):].partition(" ")
        part = Part(status=int(code), reason=reason.strip())
        while i < len(lines) and lines[i] and not lines[i].startswith("--"):
            name, _, value = lines[i].partition(":")
            part.headers[name.strip().lower()] = value.strip()
            i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("--"):
            body.append(lines[i])
            i += 1
        part.body = "\n".join(body).strip()
        parts.append(part)
    return parts


def _error(part: Part) -> TableTransactionError:
    """The SDK's exception for a failed operation (``index`` from the service's ``<index>:`` message)."""
    code, message = part.headers.get("x-ms-error-code"), part.body or part.reason
    try:
        error = json.loads(part.body).get("odata.error", {})
        code = error.get("code", code)
        message = error.get("message", {}).get("value", message)
    except (ValueError, AttributeError):
        pass
    kind = RequestTooLargeError if part.status == 413 else TableTransactionError
    exc = kind(message=f"{message}\nErrorCode:{code}")
    exc.status_code, exc.reason, exc.error_code = part.status, part.reason, code
    return exc


def submit_transaction(table: TableClient, operations: Iterable[tuple]) -> list[dict[str, Any]]:
    """``table.submit_transaction(operations)`` with the multipart body written and read here: a list with
    each operation's ``{"etag": ...}``; the SDK's exceptions on failure."""
    endpoint = f"{table.scheme}://{table._primary_hostname}"
    ops = TableBatchOperations(config=table._client._config, endpoint=endpoint, table_name=table.table_name,
                               is_cosmos_endpoint=table._cosmos_endpoint)
    for operation in operations:
        ops.add_operation(operation)
    batch, changeset = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
    body = encode(ops.requests, changeset, batch, format_date_time(time.time()))
    request = HttpRequest("POST", f"{endpoint}/$batch", content=body, headers={
        "x-ms-version": table.api_version, "DataServiceVersion": "3.0", "MaxDataServiceVersion": "3.0;NetFx",
        "Content-Type": f"multipart/mixed; boundary={batch}", "Accept": "application/json"})
    response = table._client.send_request(request, stream=True)  # not decoded by the pipeline: read here
    response.read()
    if response.status_code == 413:
        raise _decode_error(response, error_message="The transaction request was too large",
                            error_type=RequestTooLargeError)
    if response.status_code != 202:
        decoded = _decode_error(response)
        _validate_tablename_error(decoded, table.table_name)
        raise decoded
    parts = decode(response.text())
    failed = [p for p in parts if not 200 <= p.status < 300]
    if failed:
        raise _error(failed[0])
    if len(parts) != len(ops.requests):
        raise TableTransactionError(message=f"the batch answered {len(parts)} parts for {len(ops.requests)} "
                                            f"operations")
    return [{"etag": p.headers["etag"]} if "etag" in p.headers else {} for p in parts]
