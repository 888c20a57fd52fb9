"""Webhook rules, pure: which targets may be called, and how a delivery is signed."""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
from urllib.parse import urlsplit

from errors import BadRequestError

SIGNATURE_HEADER = "X-Geoetl-Signature"


class TargetRefused(BadRequestError):
    """A callback URL we will not call."""

    code = "callback_refused"


def check_url(url: str, allow_loopback: bool) -> tuple[str, int]:
    """(host, port) of a callback URL: https, or http to loopback only when ``allow_loopback``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"callback_url is not a valid URL: {exc}") from None
    if not parts.hostname or parts.scheme not in ("https", "http"):
        raise TargetRefused("callback_url must be an absolute https:// URL")
    if parts.username or parts.password:
        raise TargetRefused("callback_url must not carry credentials")
    if parts.scheme == "http" and not (allow_loopback and _is_loopback_name(parts.hostname)):
        raise TargetRefused("callback_url must use https (http only to loopback, in development)")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _is_loopback_name(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_addresses(addresses: list[str], allow_loopback: bool) -> None:
    """Refuse unless every address the name resolved to is public (or loopback, when allowed)."""
    if not addresses:
        raise TargetRefused("callback_url's host did not resolve to any address")
    for text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])
        if address.is_loopback and allow_loopback:
            continue
        if not address.is_global or address.is_multicast:
            kind = ("unspecified" if address.is_unspecified else "loopback" if address.is_loopback
                    else "link-local" if address.is_link_local else "reserved" if address.is_reserved
                    else "private" if address.is_private else "non-public")
            raise TargetRefused(f"callback_url resolves to {kind} address {address}; refused")


def sign(body: bytes, secret: str) -> str:
    """Value of the signature header: ``sha256=<hex HMAC-SHA256 of the body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header: str) -> bool:
    """What a receiver does: constant-time comparison of the signature header."""
    return hmac.compare_digest(sign(body, secret), header or "")
