"""Rows stored across a table and the payload container: JSON values too large for a property are spilled to
blobs and the row keeps ``<field>_ref``; a free text over ``TEXT_BUDGET`` is stored whole as a blob first and
the row keeps its head and tail (``models.bound_text``) with the blob's name in ``text_blobs``."""
from __future__ import annotations

from typing import Any, TypeVar

from models import PayloadRef, Row, TaskRecord, bound_text, is_cut
from repository_blobs import PayloadBlobs
from repository_entities import from_entity, row_keys, to_entity
from repository_rules import check_entity_limits, utf16_len

R = TypeVar("R", bound=Row)
INLINE_JSON_MAX_BYTES = 60 * 1024  # UTF-16 bytes; Azure's property limit is 64 KiB


class PayloadRows:
    """Entities of rows and rows of entities, spilling to and loading from ``blobs`` (a part of ``JobStore``)."""

    blobs: PayloadBlobs

    def pack(self, row: Row) -> dict[str, Any]:
        """Entity for ``row``: oversized JSON fields and the whole of cut texts go to blobs; Azure's limits
        are enforced."""
        entity = to_entity(self.keep_whole_texts(row))
        for name in row.JSON_FIELDS:
            text = entity.get(name)
            if text is not None and 2 * utf16_len(text) > INLINE_JSON_MAX_BYTES:
                ref = self.blobs.put_json(f"{entity['PartitionKey']}/{entity['RowKey']}/{name}",
                                          getattr(row, name))
                del entity[name]
                entity[f"{name}_ref"] = ref.model_dump_json()
        check_entity_limits(entity)
        return entity

    def keep_whole_texts(self, row: R) -> R:
        """``row`` with each free text over TEXT_BUDGET cut to its head and tail, after storing the whole text
        as a blob (named by its content: a repeated write overwrites it harmlessly) linked in ``text_blobs``.
        A link stays while its field still holds the cut text; a field written anew drops it."""
        if "text_blobs" not in type(row).model_fields:
            return row
        links, update = dict(row.text_blobs or {}), {}
        for name in row.TEXT_FIELDS:
            text = getattr(row, name)
            if bound_text(text) is not text:
                pk, rk = row_keys(row)
                links[name] = self.blobs.put_text(f"{pk}/{rk}/{name}", text)
                update[name] = bound_text(text)
            elif not is_cut(text):
                links.pop(name, None)
        if update or (links or None) != row.text_blobs:
            return row.model_copy(update={**update, "text_blobs": links or None})
        return row

    def whole_texts(self, task: TaskRecord) -> TaskRecord:
        """``task`` with its cut texts read back whole from their blobs."""
        links = {name: blob for name, blob in (task.text_blobs or {}).items() if is_cut(getattr(task, name, None))}
        return task.model_copy(update={name: self.blobs.get_text(blob) for name, blob in links.items()})

    def unpack(self, cls: type[R], entity: Any, resolve: bool = True) -> R:
        """Row from an SDK entity, loading spilled fields from blobs when ``resolve``."""
        data = dict(entity)
        refs = {name: data.pop(f"{name}_ref") for name in cls.JSON_FIELDS if f"{name}_ref" in data}
        meta = getattr(entity, "metadata", {})
        row = from_entity(cls, data, etag=meta.get("etag"), changed_at=meta.get("timestamp"))
        for name, ref in refs.items():
            setattr(row, name, self.blobs.get_json(PayloadRef.model_validate_json(ref)) if resolve else None)
        return row
