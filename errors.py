"""One error hierarchy for the orchestrator: each class declares its ``code`` (the wire value) and its
``http_status`` once; the task failure codes (``ErrorCode``) and the HTTP status of an error are derived from them.

Queue handlers split errors in two: *permanent* ones are recorded on the task and never retried;
*transient* ones are re-raised so the queue delivers the message again.
"""
from __future__ import annotations

from enum import EnumMeta, StrEnum
from typing import TYPE_CHECKING, Any


MAX_ECHO = 100  # characters of a caller's input an error message quotes


def echo(value: Any, limit: int = MAX_ECHO) -> str:
    """How an error message quotes what a caller sent: its repr, cut to ``limit`` characters of the value
    (saying how long the whole was), so no input comes back whole in an error."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else text
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def clip(text: str, limit: int = 300) -> str:
    """A message part built from a caller's input (a field path, a validation message), cut to ``limit``."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


MAX_FIELD_ERRORS = 10  # entries an invalid request's answer lists (a last one counts the others)


def field_errors(found: list[dict[str, Any]], skip: int = 0) -> list[dict[str, Any]]:
    """One readable entry per invalid field of pydantic's ``errors()`` (``skip``: leading ``loc`` parts to
    leave out), the first ``MAX_FIELD_ERRORS`` of them; field paths and messages quote what the caller sent
    (an unknown key, a bad value), so each is cut to a bound."""
    errors = [{"field": clip(".".join(str(p) for p in err["loc"][skip:]) or "(body)", 100),
               "message": clip(err["msg"]), "type": err["type"]} for err in found[:MAX_FIELD_ERRORS]]
    if len(found) > MAX_FIELD_ERRORS:
        errors.append({"field": "...", "message": f"{len(found) - MAX_FIELD_ERRORS:,} more errors not listed",
                       "type": "more_errors"})
    return errors


def validation_errors(exc: Any) -> list[dict[str, Any]]:
    """``field_errors`` of a pydantic ``ValidationError``."""
    return field_errors(exc.errors(include_url=False))


class OrchestratorError(Exception):
    """Root of every error this project raises on purpose."""

    code = "internal_error"
    http_status = 500
    permanent = True

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_body(self) -> dict[str, Any]:
        """JSON body for an HTTP error response."""
        return {"error": self.code, "message": self.message, **self.details}


class BadRequestError(OrchestratorError):
    """The request is malformed (not JSON, not an object, ...)."""

    code = "bad_request"
    http_status = 400


class ParameterValidationError(BadRequestError):
    """Parameters failed validation; ``details['errors']`` has one entry per field."""

    code = "invalid_parameters"


class PayloadTooLargeError(OrchestratorError):
    """The request body is over the accepted size."""

    code = "payload_too_large"
    http_status = 413


class NotFoundError(OrchestratorError):
    """A job, task or route does not exist."""

    code = "not_found"
    http_status = 404


class UnknownNameError(NotFoundError):
    """A registry lookup failed; the message lists what exists."""

    code = "unknown_name"

    def __init__(self, kind: str, name: str, available: list[str]) -> None:
        super().__init__(
            f"unknown {kind} {echo(name)}; available: {', '.join(sorted(available)) or '(none)'}",
            available=sorted(available),
        )


class ConflictError(OrchestratorError):
    """A conditional write lost (stale ETag) or the entity already exists."""

    code = "conflict"
    http_status = 409


class JobCancelledError(ConflictError):
    """A task's claim met its job's cancel (the counter shard says so): the task never starts."""

    code = "cancelled"


class InvalidTransitionError(OrchestratorError):
    """A status change not allowed by the transition table."""

    code = "invalid_transition"
    http_status = 409


class EntityTooLargeError(OrchestratorError):
    """An entity would break Azure Table Storage's limits even after spilling."""

    code = "entity_too_large"
    http_status = 413


class InvalidKeyError(OrchestratorError):
    """A PartitionKey/RowKey/name that Azure Storage would reject."""

    code = "invalid_key"
    http_status = 400


class TaskError(OrchestratorError):
    """A task handler's own failure: permanent, recorded on the task, not retried."""

    code = "task_failed"
    http_status = 422


class TooLargeError(TaskError):
    """An input or a plan over a configured limit (raster pixels, bands, bytes per block, tiles per job,
    tasks per stage); the message starts with ``too_large:``."""

    code = "too_large"


# --- why a task failed, for machines (issue #12): every permanent raster failure raises one of these, and the
# engine records ``code`` beside the message (TaskRecord.error_code, recent_errors, /api/metrics).
class InputNotFoundError(TaskError):
    """A blob (or container) a task reads does not exist."""

    code = "not_found"


class NotARasterError(TaskError):
    """The input is not a GeoTIFF/COG (wrong signature, another format, empty)."""

    code = "not_a_raster"


class CorruptRasterError(TaskError):
    """A GeoTIFF GDAL cannot open or decode (truncated, damaged blocks)."""

    code = "corrupt_raster"


class NoCrsError(TaskError):
    """The raster has a geotransform but no coordinate reference system."""

    code = "no_crs"


class NoGeotransformError(TaskError):
    """The raster has neither a geotransform nor ground control points."""

    code = "no_geotransform"


class OffGlobeError(TaskError):
    """No pixel of the raster lies on the Earth (none transforms to longitude/latitude)."""

    code = "off_globe"


class UnsupportedDtypeError(TaskError):
    """The data type (or band layout) cannot be written with the requested profile."""

    code = "unsupported_dtype"


class CatalogueError(TaskError):
    """The STAC catalogue refused or cannot take the item (e.g. none configured)."""

    code = "catalogue"


class TransientError(OrchestratorError):
    """Worth retrying: storage timeouts and 5xx, throttling, lost connections."""

    code = "transient"
    http_status = 503
    permanent = False


# --- a part the app can run without (the STAC catalogue) is not configured: 503 naming the setting (issue #13)
class NotConfiguredError(TransientError):
    """A feature whose backing service has no settings here (e.g. no PGSTAC_HOST): 503, the message names the
    settings to set."""

    code = "not_configured"


# --- what the engine records when no error class was raised: the task's attempts ran out (see ErrorCode)
ENGINE_CODES = ("timeout", "storage")


def _family(root: type[OrchestratorError]) -> list[type[OrchestratorError]]:
    """``root`` and every subclass of it, in definition order."""
    return [root, *(cls for sub in root.__subclasses__() for cls in _family(sub))]


def _failure_codes() -> dict[str, str]:
    """Every code a task failure can be recorded under, by enum member name: a handler bug
    (``internal_error``), invalid task parameters, every ``TaskError`` class's own code, then what the engine
    saw (ENGINE_CODES). A new ``TaskError`` subclass with its own ``code``, written in this module (ErrorCode is
    made when it is imported), joins by being written."""
    codes = [OrchestratorError.code, ParameterValidationError.code, *(c.code for c in _family(TaskError)),
             *ENGINE_CODES]
    return {code.upper(): code for code in dict.fromkeys(codes)}


if TYPE_CHECKING:  # the members are made at import, so the type checker takes any member name as an ErrorCode
    class _DerivedMembers(EnumMeta):  # (tests/test_error_codes.py checks every name the code uses exists)
        def __getattr__(cls, name: str) -> ErrorCode: ...

    class ErrorCode(StrEnum, metaclass=_DerivedMembers):
        """Machine-readable reasons a task failed (see below)."""
else:
    # derived from the error classes above: each code is written once, on its class
    ErrorCode = StrEnum("ErrorCode", _failure_codes(), module=__name__)
    ErrorCode.__doc__ = """Machine-readable reasons a task failed (``TaskRecord.error_code``): the ``code`` of
    the error it raised, or what the engine saw (``timeout``: its lease kept expiring; ``storage``: transient
    storage or network faults until its attempts ran out)."""


def error_code(error: BaseException) -> ErrorCode:
    """The code a task failure with ``error`` is recorded under (``task_failed`` for codes not listed)."""
    if isinstance(error, TransientError):
        return ErrorCode.STORAGE
    if not isinstance(error, OrchestratorError):
        return ErrorCode.INTERNAL_ERROR
    try:
        return ErrorCode(error.code)
    except ValueError:
        return ErrorCode.TASK_FAILED


def http_status_for(error: OrchestratorError) -> int:
    """HTTP status for an error: the ``http_status`` its class declares (or inherits)."""
    return error.http_status
