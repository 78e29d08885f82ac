"""The compilation job: its record, its status and the moves it may make.

This module is the one place that knows what a job is. The store persists it, the runner
drives it, the API renders it; none of them decides on its own which status may follow which.

    STARTING ──> INPROGRESS ──> COMPLETED
       │  │          │  └─────> FAILED
       │  │          └────────> STOPPING ──> STOPPED  (or COMPLETED/FAILED when the
       │  └───────────────────────────┘                 child finished first)
       ├──> FAILED   (MaxPendingTimeInSeconds passed while queued; agent could not start it)
       └──> STOPPED  (stopped before it ever ran)
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Any


class Status(str, enum.Enum):
    """SageMaker's CompilationJobStatus, with its own spelling."""

    STARTING = "STARTING"
    INPROGRESS = "INPROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.STOPPED})

ALLOWED = {
    Status.STARTING: {Status.INPROGRESS, Status.FAILED, Status.STOPPING, Status.STOPPED},
    Status.INPROGRESS: {Status.COMPLETED, Status.FAILED, Status.STOPPING},
    Status.STOPPING: {Status.STOPPED, Status.COMPLETED, Status.FAILED},
    Status.COMPLETED: set(),
    Status.FAILED: set(),
    Status.STOPPED: set(),
}

# Pipeline stages, in order, as they appear in progress events and in the record.
STAGES = ("queued", "fetch", "prepare", "compile", "tune", "verify", "benchmark", "package", "upload")


class IllegalTransition(Exception):
    """A move the state machine forbids; a bug in the caller, never a user error."""


def check_transition(current: Status, new: Status) -> None:
    if new not in ALLOWED[current]:
        raise IllegalTransition(f"{current.value} -> {new.value} is not an allowed transition")


@dataclasses.dataclass
class Job:
    """One compilation job, as recorded in the store.

    `request` is the CreateCompilationJob body exactly as accepted. Times are epoch seconds.
    `notes` is a short history of what the agent did to the job out of the ordinary (for
    example, what it found after a restart), so the record explains itself.
    """

    name: str
    arn: str
    request: dict[str, Any]
    status: Status = Status.STARTING
    creation_time: float = 0.0
    last_modified_time: float = 0.0
    start_time: float | None = None
    end_time: float | None = None
    failure_reason: str = ""
    artifact_uri: str = ""
    artifact_digest: str = ""
    derived_input_config: str = ""
    stage: str = "queued"
    percent: float = 0.0
    stage_message: str = ""  # the stage's latest word, e.g. that it waits for S3; events carry it
    pid: int | None = None
    metrics: dict[str, Any] | None = None
    channel: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)
    seq: int = 0

    # --- convenient views of the request -----------------------------------------------
    @property
    def stopping_condition(self) -> dict[str, Any]:
        return self.request.get("StoppingCondition", {})

    @property
    def max_runtime(self) -> int:
        return int(self.stopping_condition.get("MaxRuntimeInSeconds", DEFAULT_MAX_RUNTIME))

    @property
    def max_pending(self) -> int | None:
        value = self.stopping_condition.get("MaxPendingTimeInSeconds")
        return int(value) if value is not None else None

    @property
    def output_config(self) -> dict[str, Any]:
        return self.request.get("OutputConfig", {})

    @property
    def input_config(self) -> dict[str, Any]:
        return self.request.get("InputConfig", {})

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Job":
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["status"] = Status(values.get("status", Status.STARTING))
        return cls(**values)


# Neo: "The default value is 1 day. The maximum value is 28 days."
DEFAULT_MAX_RUNTIME = 86400
MAX_RUNTIME_LIMIT = 28 * 86400
