"""Offline validation of STAC items and collections: core schemas shipped in pystac, extension schemas
from local files (``<dir>/<extension>/<version>/schema.json``), never the network. Pure."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import pystac
import referencing
import referencing.exceptions
from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError
from pystac.validation.local_validator import get_local_schema_cache
from referencing.jsonschema import DRAFT7

from errors import TaskError

EXTENSION_SCHEMA_URL = "https://stac-extensions.github.io/{name}/{version}/schema.json"


def validate_item_offline(item: dict[str, Any] | pystac.Item, schemas_dir: str | Path | None,
                          skip_unavailable: bool = False) -> list[str]:
    """Validate a STAC Item (or Collection) against the core schemas shipped in pystac and the
    extension schemas under ``schemas_dir/<extension>/<version>/schema.json``; never the network.

    Returns the schema URIs checked. TaskError listing every violation, or naming an extension (or a
    ``$ref``) that has no local schema; with ``skip_unavailable`` an extension without a local schema
    is left out of the check (and of the returned URIs) instead.
    """
    data = item.to_dict(include_self_link=False, transform_hrefs=False) if isinstance(item, pystac.Item) else item
    kind = {"Feature": "item", "Collection": "collection"}.get(str(data.get("type")))
    if kind is None:
        raise TaskError(f"not a STAC Item or Collection: type {data.get('type')!r}")
    version = data.get("stac_version", "")
    core = f"https://schemas.stacspec.org/v{version}/{kind}-spec/json-schema/{kind}.json"
    registry = _registry(str(Path(schemas_dir).resolve()) if schemas_dir else None)
    uris = [core, *data.get("stac_extensions", [])]
    checked = list(uris)
    errors = []
    for uri in uris:
        try:
            schema = registry.contents(uri.rstrip("#"))
        except referencing.exceptions.NoSuchResource:
            if skip_unavailable and uri != core:
                checked.remove(uri)
                continue
            raise TaskError(f"no local schema for {uri}: add it under {schemas_dir} "
                            f"(<extension>/<version>/schema.json)") from None
        try:
            for top in Draft7Validator(schema, registry=registry).iter_errors(data):
                error = _deepest(top)
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                errors.append(f"{uri.rsplit('/', 3)[-3] if 'extensions' in uri else kind}: {where}: "
                              f"{error.message[:300]}")
        except referencing.exceptions.Unresolvable as exc:
            raise TaskError(f"schema {uri} refers to {exc} which is not available offline") from exc
    if errors:
        raise TaskError(f"STAC {kind} {data.get('id')!r} is invalid: " + "; ".join(errors[:10])
                        + (f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""))
    return checked


def _deepest(error: ValidationError) -> ValidationError:
    """The innermost failure under a oneOf/anyOf (the field that is wrong, not "no branch matched")."""
    leaves, stack = [], [error]
    while stack:
        current = stack.pop()
        if current.context:
            stack.extend(current.context)
        else:
            leaves.append(current)
    return max(leaves, key=lambda e: len(e.absolute_path))


@lru_cache(maxsize=8)
def _registry(schemas_dir: str | None) -> referencing.Registry:
    """Every local schema, keyed by the URL that refers to it (with and without a trailing '#')."""
    def offline(uri: str) -> referencing.Resource:
        # referencing builds __init__ with attrs through its own wrapper, which mypy's attrs plugin cannot see
        raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]

    resources = dict(get_local_schema_cache())
    if schemas_dir:
        for path in sorted(Path(schemas_dir).glob("*/v*/schema.json")):
            url = EXTENSION_SCHEMA_URL.format(name=path.parent.parent.name, version=path.parent.name)
            resources[url] = json.loads(path.read_text())
    pairs = []
    for url, schema in resources.items():
        resource = referencing.Resource.from_contents(schema, default_specification=DRAFT7)
        pairs += [(url, resource), (url + "#", resource)]
    return referencing.Registry(retrieve=offline).with_resources(pairs)  # type: ignore[call-arg]  # as above
