"""Error codes have one home, their class: the task failure codes (ErrorCode) and each error's HTTP status are
derived from it, with the wire values pinned here (issue 21)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import errors
from errors import ErrorCode, OrchestratorError, error_code, http_status_for

# The wire values: what the API, the task rows and the OpenAPI document have always said.
HTTP = {
    "OrchestratorError": ("internal_error", 500), "BadRequestError": ("bad_request", 400),
    "ParameterValidationError": ("invalid_parameters", 400), "PayloadTooLargeError": ("payload_too_large", 413),
    "NotFoundError": ("not_found", 404), "UnknownNameError": ("unknown_name", 404),
    "ConflictError": ("conflict", 409), "JobCancelledError": ("cancelled", 409),
    "InvalidTransitionError": ("invalid_transition", 409), "EntityTooLargeError": ("entity_too_large", 413),
    "InvalidKeyError": ("invalid_key", 400), "TaskError": ("task_failed", 422), "TooLargeError": ("too_large", 422),
    "InputNotFoundError": ("not_found", 422), "NotARasterError": ("not_a_raster", 422),
    "CorruptRasterError": ("corrupt_raster", 422), "NoCrsError": ("no_crs", 422),
    "NoGeotransformError": ("no_geotransform", 422), "OffGlobeError": ("off_globe", 422),
    "UnsupportedDtypeError": ("unsupported_dtype", 422), "CatalogueError": ("catalogue", 422),
    "TransientError": ("transient", 503), "NotConfiguredError": ("not_configured", 503),
}
FAILURE_CODES = {"not_found", "not_a_raster", "corrupt_raster", "no_crs", "no_geotransform", "off_globe",
                 "too_large", "unsupported_dtype", "timeout", "storage", "catalogue", "invalid_parameters",
                 "task_failed", "internal_error"}
ROOT = Path(__file__).resolve().parents[1]


def _error_classes() -> dict[str, type[OrchestratorError]]:
    return {name: cls for name, cls in vars(errors).items()
            if isinstance(cls, type) and issubclass(cls, OrchestratorError)}


def test_every_error_class_keeps_its_code_and_http_status():
    classes = _error_classes()
    assert set(classes) == set(HTTP), "a new error class: pin its code and status here"
    for name, (code, status) in HTTP.items():
        cls = classes[name]
        error = cls.__new__(cls)
        OrchestratorError.__init__(error, "m")
        assert (error.to_body()["error"], http_status_for(error)) == (code, status), name


def test_failure_codes_are_derived_from_the_classes():
    assert {c.value for c in ErrorCode} == FAILURE_CODES
    assert all(member.name == member.value.upper() for member in ErrorCode)
    assert error_code(errors.NoCrsError("x")) == ErrorCode.NO_CRS
    assert error_code(errors.NotConfiguredError("x")) == ErrorCode.STORAGE  # transient: storage
    assert error_code(errors.ConflictError("x")) == ErrorCode.TASK_FAILED  # not a failure code of its own
    assert error_code(KeyError("x")) == ErrorCode.INTERNAL_ERROR


def test_a_new_task_error_class_is_its_codes_only_home():
    class NotAVectorError(errors.TaskError):
        code = "not_a_vector"

    try:
        derived = errors._failure_codes()
        assert derived["NOT_A_VECTOR"] == "not_a_vector" and NotAVectorError.http_status == 422
    finally:
        del NotAVectorError  # subclasses are held weakly: the registry forgets it


def test_every_member_name_the_code_uses_exists():
    """The type checker takes any member name (the members are made at import): check the names used here."""
    used = set()
    for path in [*ROOT.glob("*.py"), *ROOT.glob("tests/*.py")]:
        used |= set(re.findall(r"\bErrorCode\.([A-Z][A-Z_]*)\b", path.read_text(encoding="utf-8")))
    assert used and used <= {member.name for member in ErrorCode}, used - {m.name for m in ErrorCode}


def test_task_failure_classes_live_in_errors_py():
    """ErrorCode is made when errors.py is imported: a TaskError subclass written elsewhere would not join it."""
    family = {name for name, cls in _error_classes().items() if issubclass(cls, errors.TaskError)}
    elsewhere = []
    for path in ROOT.glob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", getattr(b, "attr", None)) in family
                                                      for b in node.bases):
                elsewhere.append(f"{path.name}:{node.name}")
    assert not elsewhere, f"define task failure classes in errors.py: {elsewhere}"
