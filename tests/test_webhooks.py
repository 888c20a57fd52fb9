"""Completion webhooks: delivered once per terminal status, signed, retried; refused targets never called."""
from __future__ import annotations

import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import api_jobs
import repository_webhooks
from support import Receiver, fresh_settings, submit
from errors import BadRequestError, TransientError
from queue_driver import QueueDriver
from repositories import Repositories
from repository_webhook_rules import SIGNATURE_HEADER, TargetRefused, check_addresses, check_url, sign, verify
from task_manager import Engine

SECRET = "s3cret with spaces"


@pytest.fixture
def engine(azurite):
    settings = fresh_settings(azurite.connection_string, retry_base_delay_s=0, sweeper_grace_s=0,
                              webhook_secret=SECRET, webhook_allow_loopback=True)
    return Engine(Repositories(settings).ensure())


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


# ---------------------------------------------------------------- pure rules
@pytest.mark.parametrize("url", ["http://example.com/h", "ftp://x/y", "https://user:pw@example.com/h", "not a url",
                                 "https:///nohost"])
def test_bad_callback_urls_are_refused(url):
    with pytest.raises(TargetRefused):
        check_url(url, allow_loopback=False)


def test_loopback_http_only_with_the_development_setting():
    assert check_url("http://127.0.0.1:8080/h", allow_loopback=True) == ("127.0.0.1", 8080)
    with pytest.raises(TargetRefused):
        check_url("http://127.0.0.1:8080/h", allow_loopback=False)
    assert check_url("https://hooks.example.com/x", allow_loopback=False) == ("hooks.example.com", 443)


@pytest.mark.parametrize("address,kind", [("10.1.2.3", "private"), ("192.168.0.1", "private"),
                                          ("172.16.5.5", "private"), ("169.254.169.254", "link-local"),
                                          ("fe80::1", "link-local"), ("fd00::1", "private"), ("127.0.0.1", "loopback"),
                                          ("0.0.0.0", "unspecified"), ("240.0.0.1", "reserved"), ("::1", "loopback")])
def test_private_link_local_and_loopback_addresses_are_refused(address, kind):
    with pytest.raises(TargetRefused, match=kind):
        check_addresses(["93.184.216.34", address], allow_loopback=False)  # one bad address is enough


def test_public_addresses_pass_and_signatures_verify():
    check_addresses(["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"], allow_loopback=False)
    body = b'{"job_id": "x"}'
    assert verify(body, SECRET, sign(body, SECRET)) and not verify(body + b" ", SECRET, sign(body, SECRET))


# ---------------------------------------------------------------- delivery
def test_delivered_once_per_terminal_status_and_signed(engine, receiver):
    job_id = submit(engine, {"n": 2}, receiver.url)
    QueueDriver(engine).run(job_id)
    QueueDriver(engine).run()
    assert len(receiver.requests) == 1
    sent = receiver.requests[0]
    assert verify(sent.body, SECRET, sent.headers[SIGNATURE_HEADER])
    status = json.loads(sent.body)
    assert status["job_id"] == job_id and status["status"] == "completed" and status["result_data"]["task_count"] == 4
    assert sent.headers["X-Geoetl-Event"] == "job.completed"
    assert engine.store.get_job(job_id).webhook == "delivered"
    assert api_jobs.status(engine, job_id)[1]["webhook"] == "delivered"


def test_failed_and_cancelled_jobs_notify_too(engine, receiver):
    failed = submit(engine, {"n": 2, "fail_indices": [0]}, receiver.url)
    QueueDriver(engine).run(failed)
    cancelled = submit(engine, {"n": 2, "message": "to cancel"}, receiver.url)
    api_jobs.cancel(engine, cancelled)
    QueueDriver(engine).run()
    events = sorted(r.headers["X-Geoetl-Event"] for r in receiver.requests)
    assert events == ["job.cancelled", "job.failed"]


def test_a_failing_receiver_is_retried_until_it_answers(engine):
    flaky = Receiver(fail_first=2)
    try:
        job_id = submit(engine, {"n": 1}, flaky.url)
        QueueDriver(engine).run(job_id)
        QueueDriver(engine).run()
        assert len(flaky.requests) == 3
        assert engine.store.get_job(job_id).webhook == "delivered"
    finally:
        flaky.close()


def test_gives_up_after_max_attempts_with_a_readable_error(engine):
    down = Receiver(fail_first=100)
    try:
        job_id = submit(engine, {"n": 1}, down.url)
        QueueDriver(engine).run(job_id)
        QueueDriver(engine).run()
        job = engine.store.get_job(job_id)
        assert len(down.requests) == engine.settings.webhook_max_attempts
        assert job.webhook == "failed" and job.webhook_error == (
            f"gave up after {engine.settings.webhook_max_attempts} attempts: receiver answered HTTP 500")
    finally:
        down.close()


def test_refused_targets_are_never_contacted(engine, monkeypatch):
    calls = []
    monkeypatch.setattr(repository_webhooks, "post", lambda *a, **k: calls.append(a) or 204)
    monkeypatch.setattr(repository_webhooks, "resolve",
                        lambda host, port: {"internal.example.com": ["10.0.0.7"]}.get(host, ["127.0.0.1"]))
    engine.settings.webhook_allow_loopback = False
    ids = [submit(engine, {"n": 1, "message": m}, url) for m, url in
           [("private", "https://internal.example.com/hook"), ("loopback", "https://localhost:9/hook")]]
    QueueDriver(engine).run()
    for job_id, kind in zip(ids, ("private", "loopback")):
        job = engine.store.get_job(job_id)
        assert job.webhook == "refused" and kind in job.webhook_error
    assert calls == []
    with pytest.raises(BadRequestError, match="https"):
        api_jobs.submit(engine, "hello_world", b"{}", "http://t", "http://example.com/hook")


def test_callback_needs_a_secret_and_does_not_change_the_job_id(azurite, receiver):
    plain = Engine(Repositories(fresh_settings(azurite.connection_string)).ensure())
    with pytest.raises(BadRequestError, match="WEBHOOK_SECRET"):
        api_jobs.submit(plain, "hello_world", b"{}", "http://t", "https://example.com/hook")
    a = api_jobs.submit(plain, "hello_world", b'{"n": 2}', "http://t")[1]["job_id"]
    signed = Engine(Repositories(fresh_settings(azurite.connection_string, webhook_secret=SECRET,
                                                webhook_allow_loopback=True)).ensure())
    assert api_jobs.submit(signed, "hello_world", b'{"n": 2}', "http://t", receiver.url)[1]["job_id"] == a


def test_sweeper_resends_a_webhook_whose_message_was_lost(engine, receiver):
    job_id = submit(engine, {"n": 1}, receiver.url)
    driver = QueueDriver(engine)
    driver.run(job_id)
    engine.repos.jobs_queue.client.clear_messages()  # the notify message is lost
    job = engine.store.get_job(job_id)  # as the terminal write left it: a new chain, due now
    engine.store.replace_job(job.model_copy(update=job.webhook_fields()))
    assert engine.sweep().get("resent_webhook") == 1
    QueueDriver(engine).run()
    assert len(receiver.requests) >= 1 and engine.store.get_job(job_id).webhook == "delivered"


# ---------------------------------------------------------------- hostile receivers and resolvers
class RawServer:
    """A loopback TCP server that reads one request per connection, then runs ``answer(conn)``."""

    def __init__(self, answer) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.answer, self.sent, self.done = answer, 0, threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            while len(body) < length:
                body += conn.recv(65536)
            try:
                self.answer(self, conn)
            except OSError:
                pass  # the client hung up: what these tests want
            finally:
                self.done.set()

    def close(self) -> None:
        self.listener.close()


def post_to(server: RawServer, timeout_s: float) -> int:
    return repository_webhooks.post(server.url, b'{"x":1}', {"Content-Type": "application/json"}, timeout_s,
                                    host="127.0.0.1", port=server.port, addresses=["127.0.0.1"])


def trickle(server: RawServer, conn: socket.socket) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
        conn.sendall(bytes([byte]))
        server.sent += 1
        time.sleep(0.5)


def huge_body(server: RawServer, conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
    chunk = b"x" * (1 << 20)
    while server.sent < 256 << 20:
        conn.sendall(chunk)
        server.sent += len(chunk)


def endless_headers(server: RawServer, conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    while server.sent < 64 << 20:
        conn.sendall(b"X-Pad: " + b"a" * 1000 + b"\r\n")
        server.sent += 1009


def test_a_trickling_receiver_is_cut_at_the_deadline():
    server = RawServer(trickle)
    try:
        started = time.monotonic()
        with pytest.raises(TransientError, match="within 1.5s"):
            post_to(server, timeout_s=1.5)
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert elapsed < 1.5 + 0.5, f"a 1.5 s deadline held the caller {elapsed:.1f} s"
    assert server.sent <= 5  # the receiver was still trickling its status line


def test_a_huge_answer_is_not_read_whole():
    server = RawServer(huge_body)
    try:
        started = time.monotonic()
        assert post_to(server, timeout_s=10) == 200  # the status is all we need
        assert time.monotonic() - started < 2
        assert server.done.wait(10)
    finally:
        server.close()
    assert server.sent < 64 << 20, f"the receiver got {server.sent >> 20} MiB out before the caller hung up"


def test_endless_headers_stop_at_the_byte_cap():
    server = RawServer(endless_headers)
    try:
        with pytest.raises(TransientError, match=f"exceeds {repository_webhooks.MAX_RESPONSE_BYTES} bytes"):
            post_to(server, timeout_s=10)
        assert server.done.wait(10)
    finally:
        server.close()
    assert server.sent < 64 << 20


def teredo(client: str, server: str = "65.54.227.120") -> str:
    """The Teredo address of ``client`` (RFC 4380: flags, port and client obfuscated)."""
    value = ((0x20010000 << 96) | (int(ipaddress.IPv4Address(server)) << 64) | (0x8000 << 48)
             | ((~40000 & 0xFFFF) << 32) | (~int(ipaddress.IPv4Address(client)) & 0xFFFFFFFF))
    assert ipaddress.IPv6Address(value).teredo[1] == ipaddress.IPv4Address(client)
    return str(ipaddress.IPv6Address(value))


@pytest.mark.parametrize("address,inside", [
    ("::ffff:127.0.0.1", "127.0.0.1"), ("64:ff9b::7f00:1", "127.0.0.1"), ("2002:7f00:1::1", "127.0.0.1"),
    (teredo("127.0.0.1"), "127.0.0.1"), ("64:ff9b:1::7f00:1", "local-use"), ("::127.0.0.1", "IPv4-compatible"),
    ("::ffff:10.0.0.1", "10.0.0.1"), ("64:ff9b::a00:1", "10.0.0.1"), ("2002:a00:1::1", "10.0.0.1"),
    (teredo("10.0.0.1"), "10.0.0.1"), ("100.64.0.1", "carrier-grade NAT"), ("198.18.0.1", "benchmarking"),
    ("192.0.2.1", "documentation"), ("2001:db8::1", "documentation"), ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"), ("fec0::1", "site-local"), ("64:ff9b::a9fe:a9fe", "169.254.169.254")])
def test_ipv4_embedded_in_ipv6_and_special_ranges_are_refused(address, inside):
    for allow_loopback in (False, True):  # loopback in development means 127.0.0.0/8 and ::1, no other form
        with pytest.raises(TargetRefused, match=re.escape(inside)):
            check_addresses(["93.184.216.34", address], allow_loopback=allow_loopback)


def test_ipv6_forms_of_public_ipv4_pass():
    check_addresses(["64:ff9b::5db8:d822", "2002:5db8:d822::1", "::ffff:93.184.216.34"], allow_loopback=False)
    check_addresses(["127.0.0.1", "::1"], allow_loopback=True)


def test_an_idna_host_is_encoded_once_with_uts46():
    assert check_url("https://faß.example/hook", allow_loopback=False) == ("xn--fa-hia.example", 443)
    assert "faß.example".encode("idna") == b"fass.example"  # IDNA 2003, what the resolver used to get
    assert check_url("https://Bücher.example。com:8443/h", allow_loopback=False) == ("xn--bcher-kva.example.com",
                                                                                    8443)
    with pytest.raises(TargetRefused, match="internationalised"):
        check_url("https://a\u200db.example/h", allow_loopback=False)  # a joiner where IDNA forbids it


# ---------------------------------------------------------------- pinned TLS delivery
def make_certificates(directory: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for ``names``, written as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(timezone.utc)

    def build(subject, issuer, key, signer, ca: bool):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
                   .not_valid_after(now + timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                                            critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "geoetl test CA")])
    ca = build(ca_name, ca_name, ca_key, ca_key, True)
    leaf = build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]), ca_name, key, ca_key, False)
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class TlsReceiver(Receiver):
    """``Receiver`` over TLS with a certificate for ``names``; records the SNI names it was asked for."""

    def __init__(self, directory: Path, names: list[str]) -> None:
        super().__init__()
        self.ca, cert, key = make_certificates(directory, names)
        self.server_names: list[str | None] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.sni_callback = lambda sslobj, name, ctx: self.server_names.append(name)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]


@pytest.fixture
def pinned(tmp_path, monkeypatch):
    """A TLS receiver for hooks.example.com and its IDNA twin, reached only through ``open_socket``:
    every connection lands on it, whatever address was asked for; the addresses asked for are recorded."""
    receiver = TlsReceiver(tmp_path, ["hooks.example.com", "xn--fa-hia.example"])
    connected: list[str] = []

    def open_socket(address, port, timeout_s):
        connected.append(address)
        return socket.create_connection(("127.0.0.1", receiver.port), timeout=timeout_s)

    monkeypatch.setattr(repository_webhooks, "open_socket", open_socket)
    monkeypatch.setattr(repository_webhooks, "tls_context", lambda: ssl.create_default_context(cafile=receiver.ca))
    receiver.connected = connected
    yield receiver
    receiver.close()


def test_the_connection_goes_to_the_checked_address_not_a_rebound_one(engine, pinned, monkeypatch):
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])  # public when checked, loopback on any later lookup
    looked_up = []
    monkeypatch.setattr(repository_webhooks, "resolve", lambda host, port: looked_up.append(host) or next(answers))
    monkeypatch.setattr(socket, "getaddrinfo", _no_name_lookups(socket.getaddrinfo))
    engine.settings.webhook_allow_loopback = False
    job_id = submit(engine, {"n": 1, "message": "rebind"}, "https://hooks.example.com/hook?x=1")
    QueueDriver(engine).run(job_id)
    QueueDriver(engine).run()
    assert engine.store.get_job(job_id).webhook == "delivered"
    assert looked_up == ["hooks.example.com"] and pinned.connected == ["93.184.216.34"]
    assert pinned.server_names == ["hooks.example.com"]  # SNI: the name, though the connection went to an IP
    assert pinned.requests[0].headers["Host"] == "hooks.example.com"
    assert verify(pinned.requests[0].body, SECRET, pinned.requests[0].headers[SIGNATURE_HEADER])


def _no_name_lookups(real):
    """``socket.getaddrinfo`` that refuses names: only IP literals (no DNS in tests, none in ``post``)."""
    def getaddrinfo(host, *args, **kwargs):
        ipaddress.ip_address(host)
        return real(host, *args, **kwargs)
    return getaddrinfo


def test_an_idna_host_is_resolved_verified_and_named_in_its_one_ascii_form(engine, pinned, monkeypatch):
    looked_up = []
    monkeypatch.setattr(repository_webhooks, "resolve",
                        lambda host, port: looked_up.append((host, port)) or ["2606:2800:220:1:248:1893:25c8:1946"])
    engine.settings.webhook_allow_loopback = False
    job_id = submit(engine, {"n": 1, "message": "idna"}, "https://faß.example:8443/hook")
    QueueDriver(engine).run(job_id)
    QueueDriver(engine).run()
    assert engine.store.get_job(job_id).webhook == "delivered"
    assert looked_up == [("xn--fa-hia.example", 8443)]
    assert pinned.connected == ["2606:2800:220:1:248:1893:25c8:1946"]
    assert pinned.server_names == ["xn--fa-hia.example"]
    assert pinned.requests[0].headers["Host"] == "xn--fa-hia.example:8443"


def test_the_certificate_must_name_the_host_even_when_connecting_to_an_ip(pinned):
    with pytest.raises(TransientError, match="certificate verify failed"):
        repository_webhooks.post("https://other.example/hook", b"{}", {}, 5, host="other.example", port=443,
                                 addresses=["93.184.216.34"])
    assert pinned.requests == []
