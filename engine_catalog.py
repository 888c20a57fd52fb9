"""The STAC catalogue as the API reads it: item footprints (the dashboard's map), through the engine's
pgstac repository so that no API module touches the database."""
from __future__ import annotations

from typing import Any

from errors import NotConfiguredError
from task_manager import Engine


def item_footprints(engine: Engine, collection: str | None, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` catalogued items (of ``collection``, or of every collection) as GeoJSON features:
    id, collection, bbox, geometry and datetime. NotConfiguredError (503) without a catalogue."""
    if not engine.settings.pgstac_host:
        raise NotConfiguredError("no STAC catalogue is configured: set PGSTAC_HOST (and the other PGSTAC_* "
                                 "settings) to see catalogued items")
    items = engine.io.pgstac().search(collections=[collection] if collection else None, limit=limit)
    return [{"type": "Feature", "id": item.get("id"), "collection": item.get("collection"),
             "bbox": item.get("bbox"), "geometry": item.get("geometry"),
             "properties": {"datetime": (item.get("properties") or {}).get("datetime")}}
            for item in items]
