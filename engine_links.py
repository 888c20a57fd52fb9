"""Short-lived read links, minted when the API answers, never stored.

Results hold blob references (a plain blob ``url``, beside ``container``/``blob``). Each time the status,
task or listing endpoints answer, every result object with the plain URL of a blob in one of the app's job
containers gains ``href`` (a read-only SAS, https-only on Azure) and ``expires_at``; a ``sas_url`` stored
by an older version is dropped. ``POST /api/sign`` does the same for catalogue readers: an href, a STAC
item or an item collection comes back with its asset hrefs signed, and anything outside the job
containers (another account or container, not a blob URL) is a 400 naming the containers allowed.

Signing is local (an account key on Azurite; under managed identity the one user-delegation key the
blob store caches and renews), so a response with N links costs no storage request per link.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from errors import BadRequestError, echo
from models import utcnow
from repository_rasters import RasterStore, ReadLink

STORED_SAS = "sas_url"  # what results stored before links were signed on read


class Signer:
    """Signs blob URLs of the containers ``rasters`` may reach, all with one clock (``now``)."""

    def __init__(self, rasters: RasterStore, now: datetime | None = None) -> None:
        self.rasters = rasters
        self.now = now or utcnow()

    @property
    def allowed(self) -> list[str]:
        """The containers whose blobs it signs."""
        return list(self.rasters.allowed_containers or ())

    def link(self, url: Any) -> ReadLink | None:
        """A read link for the plain URL of a blob in an allowed container; None for anything else."""
        ref = self.rasters.blob_at(url) if isinstance(url, str) else None
        if ref is None or not self.rasters.reaches(ref[0]):
            return None
        return self.rasters.read_link(*ref, now=self.now)

    def results(self, value: Any) -> Any:
        """``value`` (a task's result, a job's result_data: plain JSON) with every object holding a signable
        ``url`` given ``href`` and ``expires_at``, and every stored ``sas_url`` dropped."""
        if isinstance(value, list):
            return [self.results(v) for v in value]
        if not isinstance(value, dict):
            return value
        out = {k: self.results(v) for k, v in value.items() if k != STORED_SAS}
        link = self.link(value.get("url"))
        if link is not None:
            out["href"] = link.href
            if link.expires_at is not None:
                out["expires_at"] = link.expires_at.isoformat()
        return out

    def required(self, href: Any, what: str) -> ReadLink:
        """The link for ``href``; a 400 naming the allowed containers when it is not one of their blobs."""
        link = self.link(href)
        if link is None:
            allowed = self.allowed
            raise BadRequestError(f"{what} {echo(href)} is not a blob of this app's containers; only blob URLs of "
                                  f"{self.rasters.endpoint()} in these containers are signed: "
                                  f"{', '.join(allowed) or '(none)'}", allowed_containers=allowed)
        return link

    def href(self, href: Any) -> dict[str, Any]:
        """``{"href": signed, "expires_at": ...}`` for one blob URL."""
        link = self.required(href, "href")
        return _with_expiry({"href": link.href}, link)

    def item(self, item: dict[str, Any]) -> dict[str, Any]:
        """A STAC item (or any object with ``assets``) with every asset href signed and its expiry beside it."""
        name = f"item {echo(item.get('id'))}" if item.get("id") is not None else "item"
        assets = {}
        for key, asset in (item.get("assets") or {}).items():
            link = self.required(asset.get("href") if isinstance(asset, dict) else None,
                                 f"asset {echo(key)} of {name}: href")
            assets[key] = _with_expiry({**asset, "href": link.href}, link)
        return {**item, "assets": assets}

    def stac(self, document: dict[str, Any]) -> dict[str, Any]:
        """An href object, a STAC item or an item collection (FeatureCollection), signed."""
        if document.get("type") == "FeatureCollection":
            return {**document, "features": [self.item(f) for f in document.get("features") or []]}
        if document.get("type") == "Feature":
            return self.item(document)
        return self.href(document.get("href"))


def _with_expiry(target: dict[str, Any], link: ReadLink) -> dict[str, Any]:
    if link.expires_at is not None:
        target["expires_at"] = link.expires_at.isoformat()
    else:
        target.pop("expires_at", None)
    return target


def signer(rasters: RasterStore, now: datetime | None = None) -> Signer:
    """A signer over ``rasters``' containers: the engine's ``io.rasters``, the job containers (the allow-list
    jobs use: never the payload container nor the Functions host's)."""
    return Signer(rasters, now)


def sign_tasks(rasters: RasterStore, tasks: list[dict[str, Any]],
               now: datetime | None = None) -> list[dict[str, Any]]:
    """Task views (as JSON) with their results' links signed."""
    return _tasks(signer(rasters, now), tasks)


def _tasks(sign: Signer, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**t, "result": sign.results(t["result"])} if t.get("result") is not None else t for t in tasks]


def sign_status(rasters: RasterStore, document: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """A status document (as JSON) with the links of its result and of its page of tasks signed."""
    sign = signer(rasters, now)
    out = dict(document)
    if out.get("result_data") is not None:
        out["result_data"] = sign.results(out["result_data"])
    page = out.get("task_page")
    if page:
        out["task_page"] = {**page, "tasks": _tasks(sign, page.get("tasks", []))}
    return out
