"""HTTP triggers for ``local_host``: route templates and a threaded server that calls the functions.

Route templates follow ASP.NET Core, as the Functions host does: literal segments (case-insensitive),
``{name}``, ``{name:constraint(...)}``, optional ``{name?}``, defaults ``{name=value}`` and catch-all
``{*name}``. Function keys are not enforced, like ``func start``. Bounded like a server facing a network:
at most ``MAX_CONNECTIONS`` connections are served at once (others get a 503), a connection that sends
nothing for ``READ_TIMEOUT_S`` is closed, and a body over ``MAX_BODY_BYTES`` is refused (413) while it is
read, chunked or not.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func

from logs import RedactFilter

logger = logging.getLogger(__name__)
logger.addFilter(RedactFilter())  # a function's traceback may carry a SAS or a connection string

MAX_BODY_BYTES = 100 * 1024 * 1024  # the host's default request size limit
MAX_CONNECTIONS = 64  # connections served at once; one thread each
READ_TIMEOUT_S = 15  # a request line, header or body read that waits longer closes the connection
_MAX_CHUNK_LINE = 1024
_MAX_TRAILERS = 100
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
         b"Connection: close\r\nContent-Length: %d\r\n\r\n%s")
_PARAM = re.compile(r"\{((?:[^{}]|\{\{|\}\})+)\}")
_INT = re.compile(r"-?\d+")
_RANKS = ("literal", "complex", "constrained", "param", "optional", "catch-all")  # matched in this order


def _number(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


def _date(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
        return True
    except ValueError:
        return False


def _bounds(arg: str) -> tuple[int, int]:
    low, _, high = arg.partition(",")
    return int(low), int(high or low)


_CONSTRAINTS: dict[str, Callable[[str, str], bool]] = {
    "int": lambda v, a: bool(_INT.fullmatch(v)) and -2**31 <= int(v) < 2**31,
    "long": lambda v, a: bool(_INT.fullmatch(v)) and -2**63 <= int(v) < 2**63,
    "bool": lambda v, a: v.lower() in ("true", "false"),
    "guid": lambda v, a: bool(re.fullmatch(r"\{?[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}\}?", v)),
    "alpha": lambda v, a: bool(re.fullmatch(r"[A-Za-z]+", v)),
    "decimal": lambda v, a: _number(v), "double": lambda v, a: _number(v), "float": lambda v, a: _number(v),
    "datetime": lambda v, a: _date(v),
    "required": lambda v, a: bool(v),
    "minlength": lambda v, a: len(v) >= int(a), "maxlength": lambda v, a: len(v) <= int(a),
    "length": lambda v, a: _bounds(a)[0] <= len(v) <= _bounds(a)[1],
    "min": lambda v, a: bool(_INT.fullmatch(v)) and int(v) >= int(a),
    "max": lambda v, a: bool(_INT.fullmatch(v)) and int(v) <= int(a),
    "range": lambda v, a: bool(_INT.fullmatch(v)) and _bounds(a)[0] <= int(v) <= _bounds(a)[1],
    "regex": lambda v, a: re.search(a, v, re.IGNORECASE) is not None,
}


def _parse_constraints(text: str, template: str) -> list[tuple[str, str]]:
    """``:int:min(1)`` -> [("int", ""), ("min", "1")]; a regex() argument may hold anything."""
    found = []
    while text:
        match = re.match(r":(\w+)", text)
        if not match or match.group(1).lower() not in _CONSTRAINTS:
            raise ValueError(f"unsupported route constraint {text!r} in route {template!r}")
        kind, text, arg = match.group(1).lower(), text[match.end():], ""
        if text.startswith("("):
            end = text.rindex(")") if kind == "regex" else text.index(")")
            arg, text = text[1:end], text[end + 1:]
        found.append((kind, arg))
    return found


@dataclass
class Route:
    """One HTTP function's compiled route template."""

    template: str
    methods: frozenset[str] | None
    binding: Any
    regex: re.Pattern[str] = field(init=False)
    params: list[tuple[str, str, list[tuple[str, str]], str | None]] = field(init=False, default_factory=list)
    rank: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        pattern, ranks = "", []
        for segment in [s for s in self.template.strip("/").split("/") if s]:
            pieces, last, kinds = [], 0, []
            for found in _PARAM.finditer(segment):
                pieces.append(re.escape(segment[last:found.start()]))
                group, kind = self._param(found.group(1).replace("{{", "{").replace("}}", "}"))
                pieces.append(f"(?P<{group}>.*)" if kind == "catch-all" else f"(?P<{group}>[^/]+)")
                kinds.append(kind)
                last = found.end()
            pieces.append(re.escape(segment[last:]))
            optional = bool({"optional", "catch-all"} & set(kinds))
            pattern += f"(?:/{''.join(pieces)})?" if optional else f"/{''.join(pieces)}"
            whole = len(kinds) == 1 and not pieces[0] and not pieces[2]  # the segment is one parameter
            kind = kinds[0] if whole else "complex" if kinds else "literal"
            ranks.append(_RANKS.index(kind))
        self.regex = re.compile(f"{pattern}/?", re.IGNORECASE)
        self.rank = tuple(ranks)

    def _param(self, text: str) -> tuple[str, str]:
        """Record ``[*]name[:constraint...][?|=default]``; return its regex group and its kind."""
        found = re.match(r"(\*{0,2})([^:=?]+)(.*)$", text)
        if not found:
            raise ValueError(f"bad route parameter {{{text}}} in route {self.template!r}")
        stars, name, rest = found.groups()
        optional, default = rest.endswith("?"), None
        rest = rest[:-1] if optional else rest
        equals = rest.rfind("=")
        if equals >= 0 and equals > rest.rfind(")"):
            rest, default, optional = rest[:equals], rest[equals + 1:], True
        constraints = _parse_constraints(rest, self.template)
        group = f"p{len(self.params)}"
        self.params.append((group, name, constraints, default))
        kind = "catch-all" if stars else "optional" if optional else "constrained" if constraints else "param"
        return group, kind

    def match(self, path: str) -> dict[str, str] | None:
        """Route values when ``path`` (below the route prefix, with a leading slash) fits the template."""
        found = self.regex.fullmatch(path)
        if not found:
            return None
        values = {}
        for group, name, constraints, default in self.params:
            raw = found.group(group)
            if raw is None or raw == "":
                if default is not None:
                    values[name] = default
                continue
            value = unquote(raw)
            if not all(_CONSTRAINTS[kind](value, arg) for kind, arg in constraints):
                return None
            values[name] = value
        return values

    def allows(self, method: str) -> bool:
        """True when the function accepts this HTTP method (no declared methods = all)."""
        return self.methods is None or method.upper() in self.methods


def build_routes(bindings: list[Any]) -> list[Route]:
    """Routes of the HTTP bindings, most specific first (literal segments before parameters)."""
    routes = [Route(b.route, frozenset(m.upper() for m in b.methods) if b.methods else None, b) for b in bindings]
    return sorted(routes, key=lambda r: r.rank)


class LocalHttpServer(ThreadingHTTPServer):
    """A threaded HTTP server that knows its routes and counts requests in progress."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], routes: list[Route], route_prefix: str) -> None:
        super().__init__(address, _Handler)
        self.routes = routes
        self.prefix = "/" + route_prefix.strip("/") if route_prefix.strip("/") else ""
        self.active = 0
        self.idle = threading.Condition()
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection on its own thread while a slot is free; else answer 503 and close it."""
        if not self.slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """The connection's thread; frees its slot when the connection ends."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def _refuse(self, request: Any) -> None:
        body = json.dumps({"error": "server_busy", "message": f"more than {MAX_CONNECTIONS} connections at "
                                                              "once; retry"}).encode()
        try:
            request.settimeout(1)
            request.sendall(_BUSY % (len(body), body))
        except OSError:
            pass
        logger.warning("refused a connection: %d connections already being served", MAX_CONNECTIONS)
        self.shutdown_request(request)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is being handled; True if none is."""
        with self.idle:
            return self.idle.wait_for(lambda: self.active == 0, max(0.0, timeout))


def _json(status: int, **body: Any) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")


class _Handler(BaseHTTPRequestHandler):
    server: LocalHttpServer
    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT_S

    def _handle(self) -> None:
        started = time.monotonic()
        with self.server.idle:
            self.server.active += 1
        name = "-"
        try:
            try:
                body = self._read_body()
            except (TimeoutError, ConnectionError):
                self.close_connection = True
                logger.info("%s %s: the client stopped sending its body; connection closed", self.command, self.path)
                return
            if body is None:
                return
            try:
                name, response = self._dispatch(body)
            except Exception as exc:  # a bug here, not in the function: still answer
                logger.exception("local host failed on %s %s", self.command, self.path)
                name, response = "-", _json(500, error="internal_error", message=str(exc))
            self._write(response)
            logger.info("%s %s -> %s %d (%.0f ms)", self.command, self.path, name, response.status_code,
                        (time.monotonic() - started) * 1000)
        finally:
            with self.server.idle:
                self.server.active -= 1
                self.server.idle.notify_all()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering 400/413 (the connection is then closed)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            return self._refuse_body(400, "bad_request", "invalid Content-Length")
        if length > MAX_BODY_BYTES:
            return self._refuse_body(413, "payload_too_large", f"body over {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes | None:
        """A chunked body, refused (413) as soon as a chunk's announced size takes it over the limit."""
        chunks, total = [], 0
        while True:
            line = self.rfile.readline(_MAX_CHUNK_LINE)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                size = -1
            if size < 0:
                return self._refuse_body(400, "bad_request", "invalid chunked body: bad chunk size line")
            if size == 0:
                break
            total += size
            if total > MAX_BODY_BYTES:
                return self._refuse_body(413, "payload_too_large", f"body over {MAX_BODY_BYTES} bytes")
            chunk = self.rfile.read(size)
            if len(chunk) < size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                return self._refuse_body(400, "bad_request", "invalid chunked body: truncated chunk")
            chunks.append(chunk)
        for _ in range(_MAX_TRAILERS):
            if self.rfile.readline(_MAX_CHUNK_LINE) in (b"\r\n", b"\n", b""):
                return b"".join(chunks)
        return self._refuse_body(400, "bad_request", "invalid chunked body: too many trailer lines")

    def _refuse_body(self, status: int, error: str, message: str) -> None:
        self.close_connection = True
        self._write(_json(status, error=error, message=message))

    def _dispatch(self, body: bytes) -> tuple[str, func.HttpResponse]:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        prefix = self.server.prefix
        if prefix and not (path.lower() == prefix.lower() or path.lower().startswith(prefix.lower() + "/")):
            return "-", _json(404, error="not_found", message=f"no function serves {url.path}")
        below, allowed = path[len(prefix):] or "/", set()
        for route in self.server.routes:
            values = route.match(below)
            if values is None:
                continue
            if not route.allows(self.command):
                allowed |= route.methods or set()
                continue
            return route.binding.name, self._invoke(route, values, url.query, body)
        if allowed:
            response = _json(405, error="method_not_allowed",
                             message=f"{self.command} is not allowed on {url.path}", allowed=sorted(allowed))
            response.headers["Allow"] = ", ".join(sorted(allowed))
            return "-", response
        return "-", _json(404, error="not_found", message=f"no function serves {url.path}")

    def _invoke(self, route: Route, values: dict[str, str], query: str, body: bytes) -> func.HttpResponse:
        headers: dict[str, str] = {}
        for key, value in self.headers.items():
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        request = func.HttpRequest(self.command, f"http://{host}{self.path}", headers=headers,
                                   params=dict(parse_qsl(query, keep_blank_values=True)),
                                   route_params=values, body=body)
        invocation = str(uuid.uuid4())
        try:
            result = route.binding.invoke(request, invocation_id=invocation)
        except Exception as exc:
            logger.exception("Executed %s (Failed, invocation %s)", route.binding.name, invocation)
            return _json(500, error="internal_error", function=route.binding.name, invocation_id=invocation,
                         message=f"Exception while executing function {route.binding.name}: "
                                 f"{type(exc).__name__}: {exc}")
        if isinstance(result, func.HttpResponse):
            return result
        if result is None:
            return func.HttpResponse(status_code=204)
        if isinstance(result, (str, bytes, bytearray)):
            return func.HttpResponse(result)
        logger.error("%s returned %s, not an HttpResponse", route.binding.name, type(result).__name__)
        return _json(500, error="internal_error", function=route.binding.name, invocation_id=invocation,
                     message=f"function returned {type(result).__name__}, expected HttpResponse")

    def _write(self, response: func.HttpResponse) -> None:
        body = response.get_body() or b""
        self.send_response(response.status_code)
        names = set()
        for key, value in response.headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(key, value)
                names.add(key.lower())
        if "content-type" not in names:  # as azure.functions' HttpResponseConverter does
            mimetype = response.mimetype
            charset = f"; charset={response.charset}" if mimetype.startswith("text/") else ""
            self.send_header("Content-Type", mimetype + charset)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are logged once, with their function, in ``_handle``."""
        logger.debug(format, *args)
