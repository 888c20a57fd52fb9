"""Settings, read once from the environment (``local.settings.json`` Values arrive as env vars).

The storage connection follows the Functions host's rules for a connection named
``AzureWebJobsStorage``: either a connection string in that setting, or identity-based settings
``AzureWebJobsStorage__accountName`` / ``__queueServiceUri`` / ``__tableServiceUri`` /
``__blobServiceUri`` (+ optional ``__clientId`` for a user-assigned managed identity).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models import TASK_INDEX_LIMIT

ROOT = Path(__file__).resolve().parent
HOST_JSON = ROOT / "host.json"
STORAGE_CONNECTION = "AzureWebJobsStorage"
JOBS_QUEUE_SETTING = "JOBS_QUEUE"
TASKS_QUEUE_SETTING = "TASKS_QUEUE"
# The app's version: the OpenAPI document's and the one STAC items name in processing:software.
APP_VERSION = "1.0.0"


def _conn(suffix: str) -> Any:
    return Field(default=None, validation_alias=AliasChoices(f"{STORAGE_CONNECTION}__{suffix}"))


class Settings(BaseSettings):
    """Every setting of the app, grouped by concern (docs/configuration.md lists them in the same order); tests
    build ``Settings(...)`` explicitly. Code that plans or runs a task reads them from what it is handed (a job
    type's ``validate(raw, settings)``, a handler's ``ctx.io.settings``), never from ``get_settings()``."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    # --- Storage: the connection, and the names of the app's own tables, queues and payload container
    storage_connection_string: str | None = Field(
        default=None, validation_alias=AliasChoices(STORAGE_CONNECTION, "storage_connection_string"))
    storage_account_name: str | None = _conn("accountName")
    queue_service_uri: str | None = _conn("queueServiceUri")
    table_service_uri: str | None = _conn("tableServiceUri")
    blob_service_uri: str | None = _conn("blobServiceUri")
    managed_identity_client_id: str | None = _conn("clientId")
    jobs_queue: str = Field(default="geoetl-jobs", validation_alias=AliasChoices(JOBS_QUEUE_SETTING, "jobs_queue"))
    tasks_queue: str = Field(default="geoetl-tasks", validation_alias=AliasChoices(TASKS_QUEUE_SETTING, "tasks_queue"))
    jobs_table: str = Field(default="geoetljobs", validation_alias=AliasChoices("JOBS_TABLE", "jobs_table"))
    tasks_table: str = Field(default="geoetltasks", validation_alias=AliasChoices("TASKS_TABLE", "tasks_table"))
    payload_container: str = Field(
        default="geoetl-payloads", validation_alias=AliasChoices("PAYLOAD_CONTAINER", "payload_container"))

    # --- The engine: how a stage fans out its tasks and counts their ends
    max_tasks_per_stage: int = Field(
        default=100_000, ge=1, le=TASK_INDEX_LIMIT, validation_alias=AliasChoices("MAX_TASKS_PER_STAGE",
                                                                                  "max_tasks_per_stage"),
        description="Most tasks the engine will plan for one stage (about 15 min of queue traffic here).")
    counter_shards: int = Field(
        default=32, ge=1, le=64, validation_alias=AliasChoices("COUNTER_SHARDS", "counter_shards"),
        description="Most counter rows per stage (a stage of n tasks uses about sqrt(n)); more shards, "
                    "less ETag contention between tasks that finish together.")
    fanout_threads: int = Field(
        default=16, ge=1, le=64, validation_alias=AliasChoices("FANOUT_THREADS", "fanout_threads"),
        description="Parallel sends when a stage queues its task messages.")
    fanout_chunk: int = Field(
        default=2000, ge=100, le=20000, validation_alias=AliasChoices("FANOUT_CHUNK", "fanout_chunk"),
        description="Tasks one stage-message invocation fans out before handing the rest to a continuation "
                    "message: bounded work per invocation, resumable by any instance.")
    fanout_max_backlog: int = Field(
        default=20_000, ge=0, validation_alias=AliasChoices("FANOUT_MAX_BACKLOG", "fanout_max_backlog"),
        description="A fan-out chain pauses (re-checks every FANOUT_PAUSE_S) while the tasks queue holds more "
                    "messages than this: a 100,000-task stage never floods the queue (0: no limit).")
    fanout_pause_s: int = Field(default=5, ge=1, le=300,
                                validation_alias=AliasChoices("FANOUT_PAUSE_S", "fanout_pause_s"))

    # --- Tasks: time limits and leases, progress, retries, and the sweeper that re-drives what stalled
    task_time_limit_s: int = Field(
        default=300, ge=1, validation_alias=AliasChoices("TASK_TIME_LIMIT_S", "task_time_limit_s"),
        description="Default time limit of a task; a task type may set its own. Past it, the task's lease "
                    "expires and a redelivered message (or the sweeper) runs it again.")
    max_clock_skew_s: float = Field(
        default=60.0, ge=0, validation_alias=AliasChoices("MAX_CLOCK_SKEW_S", "max_clock_skew_s"),
        description="Most two hosts' clocks may differ. A lease is written with its claimer's clock and judged "
                    "with the reader's, so another host takes a task over only this long after its lease ended "
                    "(by the reader's clock): clocks up to this far apart never take over a live lease, and a "
                    "stopped worker's task waits this much longer. 0 only where every host shares one clock.")
    progress_interval_s: float = Field(
        default=5.0, ge=0, validation_alias=AliasChoices("PROGRESS_INTERVAL_S", "progress_interval_s"),
        description="Least time between two progress writes of one running task (ctx.progress is throttled).")
    retry_base_delay_s: float = Field(
        default=2.0, ge=0, validation_alias=AliasChoices("RETRY_BASE_DELAY_S", "retry_base_delay_s"),
        description="Delay before the 2nd attempt after a transient error; doubles per attempt.")
    retry_max_delay_s: float = Field(
        default=120.0, ge=0, validation_alias=AliasChoices("RETRY_MAX_DELAY_S", "retry_max_delay_s"))
    sweeper_schedule: str = Field(
        default="0 */1 * * * *", validation_alias=AliasChoices("SWEEPER_SCHEDULE", "sweeper_schedule"),
        description="NCRONTAB schedule of the sweeper timer (sec min hour day month dow).")
    sweeper_grace_s: float = Field(
        default=60.0, ge=0, validation_alias=AliasChoices("SWEEPER_GRACE_S", "sweeper_grace_s"),
        description="How long a step may look unfinished before the sweeper re-drives it.")

    # --- The HTTP API
    max_request_bytes: int = Field(
        default=1024 * 1024, validation_alias=AliasChoices("MAX_REQUEST_BYTES", "max_request_bytes"))

    # --- Rasters: the containers jobs may use, how inputs are read and outputs linked, the size limits
    input_container: str = Field(default="rasters", validation_alias=AliasChoices("INPUT_CONTAINER", "input_container"),
                                 description="Where users drop rasters (default of a job's container).")
    output_container: str = Field(default="cogs", validation_alias=AliasChoices("OUTPUT_CONTAINER", "output_container"),
                                  description="Where COGs are written (default of output_container).")
    # Jobs read and write only the allowed containers (empty = INPUT_CONTAINER and OUTPUT_CONTAINER).
    # PAYLOAD_CONTAINER is never one of them: it holds every job's parameters, results, plans and tiles, so a job
    # that could list or read it would see other jobs' data (the engine reaches it through its own repositories,
    # not through job parameters). The Functions host's containers (azure-webjobs-*: host locks, keys in
    # azure-webjobs-secrets; $logs, $web, ...) are refused here and again at every blob access.
    RESERVED_CONTAINER_PREFIXES: ClassVar[tuple[str, ...]] = ("azure-webjobs-", "$")
    allowed_containers: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), validation_alias=AliasChoices("ALLOWED_CONTAINERS", "allowed_containers"),
        description="Comma-separated containers jobs may read and write (default: INPUT_CONTAINER and "
                    "OUTPUT_CONTAINER). Never the payload container or the Functions host's own.")
    work_dir: str | None = Field(default=None, validation_alias=AliasChoices("WORK_DIR", "work_dir"),
                                 description="Local scratch folder for downloads and outputs (default: system temp).")
    whole_read_bytes: int = Field(
        default=4 * 1024 * 1024, ge=0, validation_alias=AliasChoices("WHOLE_READ_BYTES", "whole_read_bytes"),
        description="An input blob up to this size is read whole in one request into the task's scratch "
                    "folder; a larger one is read by ranges over the network (/vsicurl/). 0: always ranges.")
    sas_enabled: bool = Field(default=True, validation_alias=AliasChoices("SAS_ENABLED", "sas_enabled"),
                              description="Add a read-only, time-limited SAS URL to output links.")
    sas_ttl_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60,
                                 validation_alias=AliasChoices("SAS_TTL_MINUTES", "sas_ttl_minutes"))
    # size limits on user rasters and on plans, checked from headers and plans before any work
    max_raster_pixels: int = Field(
        default=20_000_000_000, ge=1, validation_alias=AliasChoices("MAX_RASTER_PIXELS", "max_raster_pixels"),
        description="Most pixels (width x height) a raster may declare: 141,000 px square, e.g. a 10 m "
                    "mosaic of a large country; with 4096 px tiles that is about 1,200 tile tasks.")
    max_block_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1, validation_alias=AliasChoices("MAX_BLOCK_BYTES", "max_block_bytes"),
        description="Most bytes GDAL may decode to read one block (tile or strip, all bands when pixel-"
                    "interleaved); 512 px tiles of 4 float64 bands are 8 MiB.")
    max_bands: int = Field(default=1000, ge=1, validation_alias=AliasChoices("MAX_BANDS", "max_bands"),
                           description="Most bands a raster may have (hyperspectral sensors have ~400).")
    max_tiles_per_job: int = Field(
        default=10_000, ge=1, validation_alias=AliasChoices("MAX_TILES_PER_JOB", "max_tiles_per_job"),
        description="Most tile tasks process_large_raster may plan (use a larger tile_size beyond it).")

    # --- The STAC catalogue (pgstac)
    default_collection: str = Field(default="rasters", validation_alias=AliasChoices("DEFAULT_COLLECTION",
                                                                                    "default_collection"))
    pgstac_host: str | None = Field(default=None, validation_alias=AliasChoices("PGSTAC_HOST", "pgstac_host"),
                                    description="PostgreSQL host (or socket folder); unset = no catalogue.")
    pgstac_port: int = Field(default=5432, validation_alias=AliasChoices("PGSTAC_PORT", "pgstac_port"))
    pgstac_dbname: str = Field(default="postgis", validation_alias=AliasChoices("PGSTAC_DBNAME", "pgstac_dbname"))
    pgstac_user: str = Field(default="postgres", validation_alias=AliasChoices("PGSTAC_USER", "pgstac_user"))
    pgstac_password: SecretStr = Field(default=SecretStr(""),
                                       validation_alias=AliasChoices("PGSTAC_PASSWORD", "pgstac_password"))
    pgstac_sslmode: str | None = Field(default=None, validation_alias=AliasChoices("PGSTAC_SSLMODE", "pgstac_sslmode"))

    # --- Jobs that start by themselves: schedules, watches, and the timer that runs schedules
    schedules_table: str = Field(
        default="geoetlschedules", validation_alias=AliasChoices("SCHEDULES_TABLE", "schedules_table"),
        description="Table of schedules and watches.")
    schedules_timer: str = Field(
        default="0 */1 * * * *", validation_alias=AliasChoices("SCHEDULES_TIMER", "schedules_timer"),
        description="NCRONTAB schedule of the timer that submits due schedule slots (at most one slot per "
                    "schedule and tick: schedules may fire at most once a minute).")
    watches: list[dict[str, Any]] = Field(
        default_factory=list, validation_alias=AliasChoices("WATCHES", "watches"),
        description='Watches defined in settings, a JSON list of {"container", "prefix", "job_type", "options"}; '
                    "listed by the API beside the ones created over it, but not deletable there.")

    # --- Webhooks: signed callbacks when a job ends
    webhook_secret: SecretStr = Field(default=SecretStr(""), validation_alias=AliasChoices("WEBHOOK_SECRET",
                                                                                         "webhook_secret"),
                                      description="HMAC-SHA256 key signing webhook deliveries; required for callbacks.")
    webhook_allow_loopback: bool = Field(default=False, validation_alias=AliasChoices("WEBHOOK_ALLOW_LOOPBACK",
                                                                                      "webhook_allow_loopback"),
                                         description="Development only: allow http:// callbacks to loopback.")
    webhook_max_attempts: int = Field(default=6, ge=1, le=20,
                                      validation_alias=AliasChoices("WEBHOOK_MAX_ATTEMPTS", "webhook_max_attempts"))
    webhook_timeout_s: float = Field(default=10.0, gt=0, validation_alias=AliasChoices("WEBHOOK_TIMEOUT_S",
                                                                                      "webhook_timeout_s"))

    # --- Tracing and metrics (engine_tracing.py): OpenTelemetry, off (no SDK loaded) unless the connection
    # string is set (Azure) or OTEL_TRACES_EXPORTER asks for the console or OTLP (locally).
    applicationinsights_connection_string: str | None = Field(
        default=None, validation_alias=AliasChoices("APPLICATIONINSIGHTS_CONNECTION_STRING",
                                                    "applicationinsights_connection_string"),
        description="Export traces and metrics to this Application Insights resource (Azure Monitor distro; "
                    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD sends with the managed identity).")
    otel_traces_exporter: str = Field(
        default="none", pattern="^(none|console|otlp)$",
        validation_alias=AliasChoices("OTEL_TRACES_EXPORTER", "otel_traces_exporter"),
        description="Without a connection string: 'console' prints spans and metrics as JSON lines on stdout, "
                    "'otlp' sends them over OTLP/HTTP; 'none' (default) traces nothing.")
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT", "otel_exporter_otlp_endpoint"),
        description="Base URL of the OTLP/HTTP receiver (default http://localhost:4318; /v1/traces and "
                    "/v1/metrics are appended).")

    # (The local host's own settings, LOCAL_HOST_*, are read by local_host*.py; GEOETL_FAULTS by engine_faults.py.)

    @field_validator("webhook_secret", "pgstac_password", mode="before")
    @classmethod
    def _unresolved_key_vault_reference(cls, value: Any) -> Any:
        """A Key Vault reference the platform has not resolved yet (first start, before the role assignment
        lands) arrives as its literal text: treat it as unset rather than as the secret."""
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str) and text.strip().startswith("@Microsoft.KeyVault("):
            return ""
        return value

    @field_validator("allowed_containers", mode="before")
    @classmethod
    def _split_containers(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @model_validator(mode="after")
    def _containers_reachable(self) -> "Settings":
        for name in self.job_containers:
            if name.startswith(self.RESERVED_CONTAINER_PREFIXES):
                raise ValueError(f"container {name!r} belongs to the Functions host; jobs may never use it")
            if name == self.payload_container:
                raise ValueError(f"container {name!r} is PAYLOAD_CONTAINER (every job's payloads); "
                                 "jobs may not use it: remove it from ALLOWED_CONTAINERS / INPUT_CONTAINER / "
                                 "OUTPUT_CONTAINER")
        return self

    @property
    def job_containers(self) -> tuple[str, ...]:
        """The containers jobs may read and write (ALLOWED_CONTAINERS, else the input and output ones)."""
        return self.allowed_containers or tuple(dict.fromkeys((self.input_container, self.output_container)))

    @property
    def uses_identity(self) -> bool:
        """True when storage is reached with DefaultAzureCredential rather than a connection string."""
        return not self.storage_connection_string

    def service_uri(self, service: str) -> str:
        """Endpoint of ``service`` ('queue', 'table' or 'blob') for identity-based connections."""
        explicit = {"queue": self.queue_service_uri, "table": self.table_service_uri,
                    "blob": self.blob_service_uri}[service]
        if explicit:
            return explicit.rstrip("/")
        if not self.storage_account_name:
            raise ValueError(
                f"storage is not configured: set {STORAGE_CONNECTION} (a connection string) or "
                f"{STORAGE_CONNECTION}__accountName / __{service}ServiceUri (managed identity)")
        return f"https://{self.storage_account_name}.{service}.core.windows.net"


def load_host_json(path: Path = HOST_JSON) -> dict[str, Any]:
    """The parsed host.json."""
    return json.loads(path.read_text())


def queue_message_encoding(host: dict[str, Any] | None = None) -> str:
    """'base64' or 'none', as host.json's ``extensions.queues.messageEncoding`` says (host default base64)."""
    host = load_host_json() if host is None else host
    return str(host.get("extensions", {}).get("queues", {}).get("messageEncoding", "base64")).lower()


def max_dequeue_count(host: dict[str, Any] | None = None) -> int:
    """host.json's ``extensions.queues.maxDequeueCount`` (host default 5): attempts before poison."""
    host = load_host_json() if host is None else host
    return int(host.get("extensions", {}).get("queues", {}).get("maxDequeueCount", 5))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
