"""Errors a user can act on, and the exit codes that go with them.

Every failure that reaches a user (CLI, engine worker, Slicer) is a
:class:`MedDiffError`: one sentence naming the problem, one naming the fix, and a
stable code that the Slicer module maps to a message and the CLI maps to an exit
status. Anything else that escapes is a bug and exits with ``INTERNAL``.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    """Stable error codes, shared by the CLI exit status and the JSON protocol."""

    INTERNAL = "INTERNAL"
    USAGE = "USAGE"
    BAD_INPUT = "BAD_INPUT"
    BAD_CONFIG = "BAD_CONFIG"
    MODEL = "MODEL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    DEVICE = "DEVICE"
    DEPENDENCY_MISSING = "DEPENDENCY_MISSING"
    CANCELLED = "CANCELLED"

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self]


#: Process exit status for each code; documented in the README ("Exit codes").
EXIT_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INTERNAL: 1,
    ErrorCode.USAGE: 2,
    ErrorCode.BAD_INPUT: 3,
    ErrorCode.BAD_CONFIG: 4,
    ErrorCode.MODEL: 5,
    ErrorCode.OUT_OF_MEMORY: 6,
    ErrorCode.DEVICE: 7,
    ErrorCode.DEPENDENCY_MISSING: 8,
    ErrorCode.CANCELLED: 130,
}


class MedDiffError(Exception):
    """A failure with a message that names the problem and a hint that names the fix."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, hint: str = "", code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code

    @property
    def exit_status(self) -> int:
        return self.code.exit_status

    def to_event(self) -> dict:
        """The ``error`` event of the engine protocol."""
        return {"event": "error", "code": self.code.value, "message": self.message, "hint": self.hint}

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class BadInputError(MedDiffError):
    """Input data is missing, unreadable or not what the task needs."""

    code = ErrorCode.BAD_INPUT


class ConfigError(MedDiffError):
    """A configuration file or parameter set is malformed or names an unknown key."""

    code = ErrorCode.BAD_CONFIG


class ModelError(MedDiffError):
    """A model is missing, corrupt, fails its checksum, or does not fit the task."""

    code = ErrorCode.MODEL


class DeviceError(MedDiffError):
    """The requested compute device cannot be used."""

    code = ErrorCode.DEVICE


class OutOfMemoryError(MedDiffError):
    """The job did not fit in device memory."""

    code = ErrorCode.OUT_OF_MEMORY


class DependencyError(MedDiffError):
    """A third-party package the engine needs is not installed in this Python (a setup problem, not a bug)."""

    code = ErrorCode.DEPENDENCY_MISSING


class CancelledError(MedDiffError):
    """The user cancelled the job (SIGINT, SIGTERM or a progress callback)."""

    code = ErrorCode.CANCELLED
