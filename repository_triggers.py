"""Schedule and watch rows: one small table (SCHEDULES_TABLE), PartitionKey 'schedule' or 'watch',
RowKey the id. Inserts are conditional (the same definition is the same row); updates are If-Match."""
from __future__ import annotations

from typing import TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from errors import TransientError
from models import ScheduleRecord, WatchRecord
from repository_clients import translate_errors
from repository_entities import SCHEDULE_PARTITION, WATCH_PARTITION, from_entity, to_entity
from repository_rules import check_entity_limits

T = TypeVar("T", ScheduleRecord, WatchRecord)
_PARTITIONS: dict[type, str] = {ScheduleRecord: SCHEDULE_PARTITION, WatchRecord: WATCH_PARTITION}


class TriggerStore:
    """Schedules and watches."""

    def __init__(self, tables: TableServiceClient, table_name: str) -> None:
        self.table: TableClient = tables.get_table_client(table_name)

    def ensure(self) -> None:
        """Create the table if missing."""
        with translate_errors(f"create table {self.table.table_name}"):
            try:
                self.table.create_table()
            except ResourceExistsError:
                pass

    def _unpack(self, cls: type[T], entity) -> T:
        return from_entity(cls, entity, etag=entity.metadata.get("etag"))

    def create(self, row: T) -> T | None:
        """Insert ``row``; None when a row with its id exists (a lost reply to our own insert included:
        the caller reads the row, which is the same definition)."""
        entity = to_entity(row)
        check_entity_limits(entity)
        try:
            with translate_errors(f"create {entity['PartitionKey']} {entity['RowKey']}"):
                try:
                    meta = self.table.create_entity(entity)
                except ResourceExistsError:
                    return None
        except TransientError:
            if self.get(type(row), entity["RowKey"]) is None:
                raise
            return None
        return row.model_copy(update={"etag": meta["etag"]})

    def get(self, cls: type[T], row_id: str) -> T | None:
        """One row, or None."""
        with translate_errors(f"read {_PARTITIONS[cls]} {row_id}"):
            try:
                entity = self.table.get_entity(_PARTITIONS[cls], row_id)
            except ResourceNotFoundError:
                return None
        return self._unpack(cls, entity)

    def list(self, cls: type[T]) -> list[T]:
        """Every row of the kind, by id."""
        with translate_errors(f"list {_PARTITIONS[cls]} rows"):
            entities = list(self.table.query_entities("PartitionKey eq @pk", parameters={"pk": _PARTITIONS[cls]},
                                                      results_per_page=1000))
        return [self._unpack(cls, e) for e in entities]

    def replace(self, row: T) -> T:
        """Conditional replace (If-Match ``row.etag``); ConflictError when someone wrote first."""
        entity = to_entity(row)
        check_entity_limits(entity)
        with translate_errors(f"update {entity['PartitionKey']} {entity['RowKey']}"):
            meta = self.table.update_entity(entity, mode=UpdateMode.REPLACE, etag=row.etag,
                                            match_condition=MatchConditions.IfNotModified)
        return row.model_copy(update={"etag": meta["etag"]})

    def delete(self, cls: type[T], row_id: str) -> bool:
        """Delete a row; False when there was none."""
        if self.get(cls, row_id) is None:
            return False
        with translate_errors(f"delete {_PARTITIONS[cls]} {row_id}"):
            self.table.delete_entity(_PARTITIONS[cls], row_id)
        return True
