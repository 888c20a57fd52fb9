"""The CLI's HTTP client: base URL rules, the function key (never over plain http to another host, never
across a redirect to another origin), JSON calls with readable errors, and ``key=value`` parameters."""
from __future__ import annotations

import ipaddress
import json
import re
import sys
from datetime import timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

try:
    import requests
except ImportError:  # pragma: no cover
    sys.exit("error: cli.py needs the 'requests' package: pip install requests (or use the project's .venv)")

import cli_render as render

DEFAULT_URL = "http://localhost:7071/api"
KEY_HEADER = "x-functions-key"
POLL_S = 0.5
REQUEST_TIMEOUT_S = 30
POLL_GRACE_S = 30  # how long --wait rides out a lost connection or a 5xx before giving up
EXIT_OK, EXIT_JOB_FAILED, EXIT_ERROR, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class CliError(Exception):
    """A failure to report on stderr as ``error: <message>``, exiting with ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR, status: int | None = None, body: Any = None) -> None:
        """``status`` and ``body``: the HTTP status and JSON body, when the API answered."""
        super().__init__(message)
        self.message, self.code, self.status, self.body = message, code, status, body


def base_url(url: str) -> str:
    """The API root: no trailing slash; ``/api`` added when the URL has no path (``https://app.net``)."""
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://", url):
        raise CliError(f"--url must start with http:// or https://, got {url!r}")
    return url if urlsplit(url).path else url + "/api"


def reason(exc: requests.RequestException) -> str:
    """A connection failure in a few words (``Connection refused``), not urllib3's paragraph."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {REQUEST_TIMEOUT_S}s"
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
    return found.group(1).strip() if found else type(exc).__name__


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (where plain http cannot be overheard)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


class KeySession(requests.Session):
    """A session that drops the function key, as requests drops ``Authorization``, on a redirect to
    another host, port or scheme (an https -> http downgrade included)."""

    def rebuild_auth(self, prepared_request, response) -> None:  # noqa: ANN001 - requests' signature
        """requests' own rule, applied to ``x-functions-key`` too."""
        super().rebuild_auth(prepared_request, response)
        if self.should_strip_auth(response.request.url, prepared_request.url):
            prepared_request.headers.pop(KEY_HEADER, None)


class Client:
    """The HTTP API: JSON bodies in and out; errors become CliError with the API's message."""

    def __init__(self, url: str, key: str | None = None) -> None:
        """``url`` is the API root (``.../api``); ``key`` a function key, sent as ``x-functions-key``
        over https, or over http to loopback only."""
        self.url = base_url(url)
        parts = urlsplit(self.url)
        if key and parts.scheme != "https" and not is_loopback(parts.hostname):
            raise CliError(f"refusing to send the function key over plain http to {parts.hostname}: use https:// "
                           "(http is accepted for localhost only)")
        self.session = KeySession()
        self.session.headers["Accept"] = "application/json"
        if key:
            self.session.headers[KEY_HEADER] = key
        self.skew = timedelta(0)  # server clock minus ours, from the Date header

    def call(self, method: str, path: str, params: dict | None = None, body: Any = None) -> dict:
        """One request; the JSON body of a 2xx, else CliError naming the API's ``message``."""
        url = f"{self.url}/{path}"
        data = None if body is None else json.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        try:
            r = self.session.request(method, url, params={k: v for k, v in (params or {}).items() if v is not None},
                                     data=data, headers=headers, timeout=REQUEST_TIMEOUT_S)
        except requests.RequestException as exc:
            raise CliError(f"cannot reach {self.url}: {reason(exc)}") from None
        self._clock(r)
        try:
            payload = r.json()
        except ValueError:
            payload = None
        if r.ok and isinstance(payload, dict):
            return payload
        if r.ok:
            raise CliError(f"{method} {url}: expected a JSON object, got {r.text[:200]!r}", status=r.status_code)
        message = payload.get("message") if isinstance(payload, dict) else None
        if not message:
            hint = " (is --key / GEOETL_KEY set?)" if r.status_code in (401, 403) else ""
            message = f"HTTP {r.status_code} {r.reason} from {method} {url}{hint}"
        raise CliError(message, status=r.status_code, body=payload)

    def _clock(self, response: requests.Response) -> None:
        try:
            server = parsedate_to_datetime(response.headers["Date"])
        except (KeyError, TypeError, ValueError):
            return
        skew = server - render.utcnow()
        self.skew = skew if abs(skew.total_seconds()) > 2 else timedelta(0)

    def now(self):
        """Now on the server's clock (so elapsed times are right even when ours is off)."""
        return render.utcnow() + self.skew

    def status(self, job_id: str) -> dict:
        """GET jobs/status/{id}."""
        return self.call("GET", f"jobs/status/{quote(job_id, safe='')}")


def parse_params(pairs: list[str], param_file: str | None) -> dict[str, Any]:
    """Parameters from ``--param-file`` then ``key=value`` pairs (values JSON when they parse, else strings)."""
    params: dict[str, Any] = {}
    if param_file:
        try:
            text = sys.stdin.read() if param_file == "-" else Path(param_file).read_text()
            params = json.loads(text)
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read --param-file {param_file}: {exc}") from None
        if not isinstance(params, dict):
            raise CliError(f"--param-file {param_file} must hold a JSON object")
    given: set[str] = set()
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CliError(f"parameter {pair!r} is not key=value")
        if key in given:
            raise CliError(f"parameter {key!r} given twice")
        given.add(key)
        try:
            params[key] = json.loads(raw, parse_constant=_no_constant)
        except ValueError:
            params[key] = raw
    return params


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN/Infinity stay strings
