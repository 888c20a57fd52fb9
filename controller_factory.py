"""The explicit registries: if it is in the dict, it exists.

JOB_TYPES maps job type -> controller; TASK_HANDLERS maps task type -> handler.
"""
from __future__ import annotations

from typing import Any

import controller_container
import controller_noop
import controller_raster
import controller_tiles
from base_controller import JobController, TaskHandler
from controller_hello_world import HANDLERS as HELLO_HANDLERS
from controller_hello_world import HELLO_WORLD
from errors import UnknownNameError
from models import MAX_TASKS_PER_MESSAGE

# Each job type and task type has its own parameters model: the registries hold them all (hence Any).
JOB_TYPES: dict[str, JobController[Any]] = {
    c.job_type: c for c in (HELLO_WORLD, *controller_raster.JOB_TYPES, *controller_tiles.JOB_TYPES,
                            *controller_container.JOB_TYPES, controller_noop.NOOP)
}

TASK_HANDLERS: dict[str, TaskHandler[Any]] = {
    h.task_type: h for h in (*HELLO_HANDLERS, *controller_raster.HANDLERS, *controller_tiles.HANDLERS,
                             *controller_container.HANDLERS, *controller_noop.HANDLERS)
}


def get_controller(job_type: str) -> JobController[Any]:
    """The controller of ``job_type``; UnknownNameError listing the known ones otherwise."""
    try:
        return JOB_TYPES[job_type]
    except KeyError:
        raise UnknownNameError("job type", job_type, list(JOB_TYPES)) from None


def get_handler(task_type: str) -> TaskHandler[Any]:
    """The handler of ``task_type``; UnknownNameError listing the known ones otherwise."""
    try:
        return TASK_HANDLERS[task_type]
    except KeyError:
        raise UnknownNameError("task type", task_type, list(TASK_HANDLERS)) from None


def check_registries() -> None:
    """Every stage of every job type names a registered task type, and every handler's run length fits a
    message (run at import and in tests)."""
    for controller in JOB_TYPES.values():
        for stage in controller.stages:
            get_handler(stage.task_type)
    for handler in TASK_HANDLERS.values():
        if not 1 <= handler.tasks_per_message <= MAX_TASKS_PER_MESSAGE:
            raise ValueError(f"task type {handler.task_type}: tasks_per_message must be 1..{MAX_TASKS_PER_MESSAGE}, "
                             f"got {handler.tasks_per_message}")


check_registries()
