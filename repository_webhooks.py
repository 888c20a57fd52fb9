"""Outbound HTTP for webhooks: resolve a host, POST a body. The only code that calls other servers."""
from __future__ import annotations

import socket

import requests

from errors import TransientError


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to now (checked before connecting, never trusted from the name)."""
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
    except socket.gaierror as exc:
        raise TransientError(f"could not resolve {host}: {exc}") from None


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """POST and return the status code; connection failures and timeouts are TransientError."""
    try:
        response = requests.post(url, data=body, headers=headers, timeout=timeout_s, allow_redirects=False)
    except requests.RequestException as exc:
        raise TransientError(f"{type(exc).__name__}: {exc}") from None
    return response.status_code
