"""Webhook rules, pure, kept beside the code that connects: which targets may be called, and how a
delivery is signed.

A target passes in three steps, and the delivery uses exactly what passed: the URL (https; its host
encoded once to ASCII with IDNA/UTS46, ``check_url``), then every address that ASCII name resolves to
(``check_addresses``: public unicast only, with IPv4 embedded in IPv6 decoded and judged too), then the
connection, made to one of those checked addresses (``repository_webhooks.post``).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
from urllib.parse import urlsplit

import idna

from errors import BadRequestError

SIGNATURE_HEADER = "X-Geoetl-Signature"
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# IANA special-purpose ranges (first match names the kind), whatever this Python's ipaddress thinks.
_V4_SPECIAL = [(ipaddress.ip_network(net), kind) for net, kind in (
    ("0.0.0.0/8", "unspecified"), ("10.0.0.0/8", "private"), ("100.64.0.0/10", "shared (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"), ("169.254.0.0/16", "link-local"), ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol"), ("192.0.2.0/24", "documentation"), ("192.88.99.0/24", "6to4 relay"),
    ("192.168.0.0/16", "private"), ("198.18.0.0/15", "benchmarking"), ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"), ("224.0.0.0/4", "multicast"), ("240.0.0.0/4", "reserved"))]
_V6_SPECIAL = [(ipaddress.ip_network(net), kind) for net, kind in (
    ("::/128", "unspecified"), ("::1/128", "loopback"), ("::/96", "IPv4-compatible (deprecated)"),
    ("64:ff9b:1::/48", "NAT64 local-use"), ("100::/64", "discard-only"), ("2001::/32", "Teredo"),
    ("2001::/23", "IETF protocol"), ("2001:db8::/32", "documentation"), ("3fff::/20", "documentation"),
    ("5f00::/16", "SRv6"), ("fc00::/7", "private (unique local)"), ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"), ("ff00::/8", "multicast"))]
_V6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class TargetRefused(BadRequestError):
    """A callback URL we will not call."""

    code = "callback_refused"


def ascii_host(host: str) -> str:
    """The one form of a URL host used to resolve, connect, verify TLS and send ``Host``: an IP literal
    as is, an ASCII name lower-cased, an internationalised name IDNA-encoded (UTS46, as browsers do)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if host.isascii():
        return host.lower()
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise TargetRefused(f"callback_url's host is not a valid internationalised domain name: {exc}") from None


def check_url(url: str, allow_loopback: bool) -> tuple[str, int]:
    """(ASCII host, port) of a callback URL: https, or http to loopback only when ``allow_loopback``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"callback_url is not a valid URL: {exc}") from None
    if not parts.hostname or parts.scheme not in ("https", "http"):
        raise TargetRefused("callback_url must be an absolute https:// URL")
    if parts.username or parts.password:
        raise TargetRefused("callback_url must not carry credentials")
    host = ascii_host(parts.hostname)
    if parts.scheme == "http" and not (allow_loopback and _is_loopback_name(host)):
        raise TargetRefused("callback_url must use https (http only to loopback, in development)")
    return host, port or (443 if parts.scheme == "https" else 80)


def _is_loopback_name(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiouAEIOU" else f"a {kind}"


def _v4_kind(address: ipaddress.IPv4Address) -> str | None:
    for network, kind in _V4_SPECIAL:
        if address in network:
            return kind
    return None if address.is_global else "non-public"


def refusal(address: Address, allow_loopback: bool = False) -> str | None:
    """Why ``address`` may not be called (``"a private address"``...), or None for a public one.

    IPv4 embedded in IPv6 (IPv4-mapped ``::ffff:0:0/96``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) is
    decoded and judged as IPv4; Teredo, NAT64 local-use and everything outside global unicast are refused.
    Loopback passes only with ``allow_loopback`` and only in its plain form (127.0.0.0/8, ::1).
    """
    if address.is_loopback and allow_loopback and (address.version == 4 or address == ipaddress.ip_address("::1")):
        return None
    if address.version == 4:
        kind = _v4_kind(address)
        return None if kind is None else f"{_a(kind)} address"
    embedded, form = None, ""
    if address.ipv4_mapped is not None:
        embedded, form = address.ipv4_mapped, "IPv4-mapped"
    elif address in _NAT64:
        embedded, form = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
    elif address.sixtofour is not None:
        embedded, form = address.sixtofour, "6to4"
    if embedded is not None:
        kind = _v4_kind(embedded)
        return None if kind is None else f"the {form} form of {embedded}, {_a(kind)} address"
    for network, kind in _V6_SPECIAL:
        if address in network:
            if kind == "Teredo" and address.teredo:
                return f"a Teredo address (tunnel to {address.teredo[1]})"
            return f"{_a(kind)} address"
    if address not in _V6_GLOBAL_UNICAST:
        return "a reserved address (outside global unicast 2000::/3)"
    if not address.is_global or address.is_private or address.is_reserved or address.is_multicast:
        return "a non-public address"
    return None


def check_addresses(addresses: list[str], allow_loopback: bool) -> None:
    """Refuse unless every address the name resolved to is public (or loopback, when allowed)."""
    if not addresses:
        raise TargetRefused("callback_url's host did not resolve to any address")
    for text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])
        reason = refusal(address, allow_loopback)
        if reason:
            raise TargetRefused(f"callback_url resolves to {address}, {reason}; refused")


def sign(body: bytes, secret: str) -> str:
    """Value of the signature header: ``sha256=<hex HMAC-SHA256 of the body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header: str) -> bool:
    """What a receiver does: constant-time comparison of the signature header."""
    return hmac.compare_digest(sign(body, secret), header or "")
