"""Outbound HTTP for webhooks: resolve a host, POST a body to an address that was checked.

The only code that calls other servers. ``post`` never looks the name up again: it connects to one of
the addresses its caller resolved and checked (no DNS rebinding between check and connect), and keeps
the host name for TLS (SNI and certificate verification) and the ``Host`` header. One deadline bounds
the whole exchange (connect, TLS handshake, send, read), and at most ``MAX_RESPONSE_BYTES`` of the
answer are read: its status line and headers; the body is never read.
"""
from __future__ import annotations

import http.client
import io
import socket
import ssl
import time
from urllib.parse import quote, urlsplit

from errors import TransientError

MAX_RESPONSE_BYTES = 64 * 1024
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"  # RFC 3986 pchar and '/': kept as is, everything else percent-encoded


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to now (checked before connecting, never trusted from the name)."""
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
    except (socket.gaierror, UnicodeError) as exc:
        raise TransientError(f"could not resolve {host}: {exc}") from None


def open_socket(address: str, port: int, timeout_s: float) -> socket.socket:
    """A TCP connection to exactly ``address``, an IP literal (``AI_NUMERICHOST``: no name lookup)."""
    family, kind, proto, _, sockaddr = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_NUMERICHOST)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.settimeout(timeout_s)
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def tls_context() -> ssl.SSLContext:
    """Certificate chain and host-name verification against the system's trust store."""
    return ssl.create_default_context()


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float, *, host: str, port: int,
         addresses: list[str], max_response_bytes: int = MAX_RESPONSE_BYTES) -> int:
    """POST ``body`` to ``url``'s path at one of ``addresses`` (already checked), as ``host``; the status code.

    ``host`` and ``port`` are what ``repository_webhook_rules.check_url`` returned for ``url`` (the ASCII form of
    the name). Redirects are not followed. Connection and TLS failures, the deadline and oversized or
    malformed answers are TransientError.
    """
    parts = urlsplit(url)
    deadline = time.monotonic() + timeout_s
    target = quote(parts.path or "/", safe=_PATH_SAFE) + (f"?{quote(parts.query, safe=_PATH_SAFE + '?')}"
                                                           if parts.query else "")
    sock = _connect(host, addresses, port, deadline, timeout_s)
    try:
        bounded = _Bounded(sock, deadline, timeout_s, max_response_bytes)
        if parts.scheme == "https":
            sock = bounded.sock = tls_context().wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
            bounded.arm()
            sock.do_handshake()
        connection = http.client.HTTPConnection(host, port)
        connection.sock = bounded  # type: ignore[assignment] - what http.client needs of a socket
        connection.request("POST", target, body=body, headers={**headers, "Host": _host_header(parts.scheme, host,
                                                                                                 port)})
        return connection.getresponse().status
    except TimeoutError:
        raise TransientError(f"no answer from {host} within {timeout_s:g}s") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:  # ssl errors are OSErrors
        raise TransientError(f"{type(exc).__name__}: {exc}") from None
    finally:
        sock.close()


def _connect(host: str, addresses: list[str], port: int, deadline: float, timeout_s: float) -> socket.socket:
    """A connection to the first of ``addresses`` that answers before the deadline."""
    failures = []
    for address in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            return open_socket(address, port, left)
        except OSError as exc:
            failures.append(f"{address}: {exc}")
    raise TransientError(f"could not connect to {host} within {timeout_s:g}s: "
                         + ("; ".join(failures) or "no address left"))


def _host_header(scheme: str, host: str, port: int) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port == (443 if scheme == "https" else 80) else f"{name}:{port}"


class _Bounded:
    """The connected socket as ``http.client`` uses it: each send and receive gets only the time left
    before the deadline, and no more than ``limit`` bytes are received in all."""

    def __init__(self, sock: socket.socket, deadline: float, timeout_s: float, limit: int) -> None:
        self.sock, self.deadline, self.timeout_s, self.left_bytes = sock, deadline, timeout_s, limit
        self.limit = limit

    def arm(self) -> None:
        """Give the next socket operation the time left; TransientError once it is spent."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TransientError(f"the receiver did not answer within {self.timeout_s:g}s")
        self.sock.settimeout(left)

    def sendall(self, data: bytes) -> None:
        """Send everything before the deadline."""
        view = memoryview(data)
        while view:
            self.arm()
            view = view[self.sock.send(view[:65536]):]

    def readinto(self, buffer: memoryview) -> int:
        """Receive into ``buffer`` before the deadline and within the byte cap."""
        if self.left_bytes <= 0:
            raise TransientError(f"the receiver's answer exceeds {self.limit} bytes; not read further")
        self.arm()
        received = self.sock.recv_into(buffer, min(len(buffer), self.left_bytes))
        self.left_bytes -= received
        return received

    def makefile(self, mode: str = "rb", *args: object, **kwargs: object) -> io.BufferedReader:
        """A buffered reader over ``readinto`` (``http.client`` reads the answer through it)."""
        return io.BufferedReader(_Reader(self))

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class _Reader(io.RawIOBase):
    def __init__(self, owner: _Bounded) -> None:
        self.owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001 - io's signature
        return self.owner.readinto(buffer)
