"""Typed errors: every failure a user can cause is one of these, reported once by the CLI.

Each error carries what went wrong, where (a file, key, field or object) and, when the fix is known,
a hint. The CLI prints ``error: <message> (<where>)`` and ``hint: <hint>`` and exits non-zero with no
traceback. Messages must never contain secrets: build them from names, never from credential values.
"""

from __future__ import annotations


class PoseFactoryError(Exception):
    """Base class of every expected, user-facing failure."""

    exit_code = 1

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.where})" if self.where else self.message


class ConfigError(PoseFactoryError):
    """The configuration file is missing, malformed or has a wrong key or value."""

    exit_code = 2


class CredentialsError(PoseFactoryError):
    """R2 was requested but credentials are missing, or the store rejected them."""

    exit_code = 3


class StorageError(PoseFactoryError):
    """The object store failed: unreachable endpoint, missing bucket, or an error after retries."""

    exit_code = 4


class UnsafeKeyError(PoseFactoryError):
    """An object key or manifest path would land outside its batch folder."""

    exit_code = 5


class SchemaError(PoseFactoryError):
    """A JSON document violates its schema."""

    exit_code = 6


class IntegrityError(PoseFactoryError):
    """Files on disk or in the bucket do not match the batch manifest."""

    exit_code = 7


class BatchNotFoundError(PoseFactoryError):
    """A batch id names no batch in the place it was looked for."""

    exit_code = 8


class UsageError(PoseFactoryError):
    """Command-line arguments that parse but make no sense together."""

    exit_code = 2


class ToolError(PoseFactoryError):
    """A git, dvc or rclone command the tool ran failed."""

    exit_code = 9


class RepositoryError(PoseFactoryError):
    """The project is not in the state the command needs (not a git repository, batch not tracked, ...)."""

    exit_code = 10


class ServiceUnreachableError(PoseFactoryError):
    """A service the command talks to (a ComfyUI server, the RunPod API) does not answer: not running, wrong
    address, network."""

    exit_code = 14


class SceneError(PoseFactoryError):
    """A render job's Blender scene, character, rig mapping or motion cannot be used (caught before rendering)."""

    exit_code = 15


class RunPodError(PoseFactoryError):
    """RunPod refused a request (no capacity, bad request), or a render job failed."""

    exit_code = 13


class RunPodApiError(RunPodError, ServiceUnreachableError):
    """The RunPod API could not be reached, or kept answering 429 / 5xx after retries."""

    exit_code = 14


class PodsMayBeRunningError(RunPodError):
    """A pod's shutdown was never confirmed: it may still be running, and billing."""

    exit_code = 16


class BusyError(PoseFactoryError):
    """Another pose-sync command is changing the same repository (its lock is held)."""

    exit_code = 17


class DiskError(PoseFactoryError):
    """The local disk is too full for the work, or a data folder cannot be written."""

    exit_code = 18


class DiskFullError(DiskError):
    """The local disk (or the user's quota) is full, or a file grew beyond the size limit of its system."""


class LocalPermissionError(DiskError):
    """A local file or folder cannot be written: read-only file system or missing permission."""


class LocalFileError(PoseFactoryError):
    """Another failure of the local file system (I/O error, name too long, ...): a general error."""

    exit_code = 1


def from_os_error(exc: OSError) -> PoseFactoryError:
    """The typed error for an OSError the local machine raised, naming the file and the way out."""
    import errno

    path = None if exc.filename is None else str(exc.filename)
    reason = exc.strerror or type(exc).__name__
    target = f"the disk holding {path}" if path else "the disk"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return DiskFullError(f"cannot write: {reason}", where=path,
                             hint=f"free space on {target} (or raise your quota), then run the same command "
                                  "again: it resumes")
    if exc.errno == errno.EROFS:
        return LocalPermissionError(f"cannot write: {reason}", where=path,
                                    hint=f"{target} is mounted read-only; remount it writable or move the project, "
                                         "then run the same command again")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return LocalPermissionError(f"cannot write or read: {reason}", where=path,
                                    hint="check the owner and permissions of that file and its folder (`ls -l`); "
                                         "the project must be writable by the user running pose-sync")
    return LocalFileError(f"file system error: {reason}", where=path,
                          hint="check the disk and the path, then run the same command again")
