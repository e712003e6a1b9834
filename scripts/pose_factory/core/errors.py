"""Typed errors and exit codes: every failure a user can cause is one of these, reported once by the CLI.

Each error carries what went wrong, where (a file, key, field or object) and, when the fix is known,
a hint. The CLI prints ``error: <message> (<where>)`` and ``hint: <hint>`` and exits with the error's
exit code, with no traceback. Messages must never contain secrets: build them from names, never from
credential values. This module is the only place that defines errors or exit codes (tests/test_errors.py
checks it), and README's exit-code table is this module's ExitCode, line for line.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What pose-sync's exit status means; each member has the one line README's table shows."""

    meaning: str

    def __new__(cls, code: int, meaning: str) -> ExitCode:
        member = int.__new__(cls, code)
        member._value_ = code
        member.meaning = meaning
        return member

    OK = 0, "success"
    GENERAL = 1, "general failure, including a local file-system failure other than those of 18 (I/O error, ...)"
    USAGE = 2, "configuration or usage: a settings file, params.yaml or the command line is wrong"
    CREDENTIALS = 3, "R2 credentials missing or refused"
    STORAGE = 4, "the bucket (R2 / S3) is unreachable or failing"
    UNSAFE_PATH = 5, "an object key or manifest path is unsafe (it could land outside its batch folder)"
    SCHEMA = 6, "a JSON document violates its schema"
    INTEGRITY = 7, "files do not match the manifest or the `.dvc` file (or the batch is still uploading)"
    NOT_FOUND = 8, "batch not found (or pruned from the bucket: its version is in the DVC remote)"
    TOOL = 9, "a git / dvc / rclone command failed"
    REPOSITORY = 10, ("the project is not a git + DVC repository (or a batch is not in it, or there is no data, or "
                   "prune-bucket kept a named batch)")
    VALIDATION = 11, "validation found errors"
    COMFYUI = 12, "ComfyUI refused a prompt or lacks a node (or a sample failed)"
    RUNPOD = 13, "RunPod refused a request or a job failed"
    UNREACHABLE = 14, "a service cannot be reached (ComfyUI; the RunPod API, or it kept failing after retries)"
    SCENE = 15, "a render job's Blender scene, character, rig mapping or motion cannot be used"
    PODS_MAY_BE_RUNNING = 16, "a RunPod pod may still be running (its shutdown was never confirmed)"
    BUSY = 17, "another pull / archive / restore / fetch is running in the repository"
    DISK = 18, "not enough disk space, or a local file or folder is read-only or not writable"
    INTERRUPTED = 130, "interrupted (Ctrl-C)"


class PoseFactoryError(Exception):
    """Base class of every expected, user-facing failure."""

    exit_code = ExitCode.GENERAL

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.where})" if self.where else self.message


class ConfigError(PoseFactoryError):
    """The configuration file is missing, malformed or has a wrong key or value."""

    exit_code = ExitCode.USAGE


class CredentialsError(PoseFactoryError):
    """R2 was requested but credentials are missing, or the store rejected them."""

    exit_code = ExitCode.CREDENTIALS


class StorageError(PoseFactoryError):
    """The object store failed: unreachable endpoint, missing bucket, or an error after retries."""

    exit_code = ExitCode.STORAGE


class ObjectMissingError(StorageError):
    """The object asked for does not exist."""


class UnsafeKeyError(PoseFactoryError):
    """An object key or manifest path would land outside its batch folder."""

    exit_code = ExitCode.UNSAFE_PATH


class SchemaError(PoseFactoryError):
    """A JSON document violates its schema."""

    exit_code = ExitCode.SCHEMA


class DocumentTooLargeError(SchemaError):
    """A document (manifest, marker) is larger than its read cap; it was not read."""


class IntegrityError(PoseFactoryError):
    """Files on disk or in the bucket do not match the batch manifest."""

    exit_code = ExitCode.INTEGRITY


class RemoteObjectError(IntegrityError):
    """An object a version lists that the DVC remote lacks, or holds damaged (its md5 is not its name)."""

    def __init__(self, oid: str, *, damaged: bool, where: str | None = None, hint: str | None = None):
        problem = "holds a damaged object" if damaged else "has no object"
        super().__init__(f"the DVC remote {problem} {oid}, which this version lists", where=where, hint=hint)
        self.oid, self.damaged = oid, damaged


class BatchNotFoundError(PoseFactoryError):
    """A batch id names no batch in the place it was looked for."""

    exit_code = ExitCode.NOT_FOUND


class BatchPrunedError(BatchNotFoundError):
    """The bucket holds only the tombstone of the batch: its version lives in the DVC remote (prune-bucket)."""

    def __init__(self, message: str, *, tombstone: dict, where: str | None = None, hint: str | None = None):
        super().__init__(message, where=where, hint=hint)
        self.tombstone = tombstone


class UsageError(PoseFactoryError):
    """Command-line arguments that parse but make no sense together."""

    exit_code = ExitCode.USAGE


class ToolError(PoseFactoryError):
    """A git, dvc or rclone command the tool ran failed."""

    exit_code = ExitCode.TOOL


class RepositoryError(PoseFactoryError):
    """The project is not in the state the command needs (not a git repository, batch not tracked, ...)."""

    exit_code = ExitCode.REPOSITORY


class ValidationFailed(PoseFactoryError):
    """A batch has validation errors."""

    exit_code = ExitCode.VALIDATION


class ComfyUIError(PoseFactoryError):
    """ComfyUI refused or failed a request."""

    exit_code = ExitCode.COMFYUI


class ServiceUnreachableError(PoseFactoryError):
    """A service the command talks to (a ComfyUI server, the RunPod API) does not answer: not running, wrong
    address, network."""

    exit_code = ExitCode.UNREACHABLE


class SceneError(PoseFactoryError):
    """A render job's Blender scene, character, rig mapping or motion cannot be used (caught before rendering)."""

    exit_code = ExitCode.SCENE


class RunPodError(PoseFactoryError):
    """RunPod refused a request (no capacity, bad request), or a render job failed."""

    exit_code = ExitCode.RUNPOD


class RunPodApiError(RunPodError, ServiceUnreachableError):
    """The RunPod API could not be reached, or kept answering 429 / 5xx after retries."""

    exit_code = ExitCode.UNREACHABLE


class PodGoneError(RunPodError):
    """404 from RunPod: the pod does not exist (any more)."""


class PodConflictError(RunPodError):
    """409 from RunPod: the action is not valid for the pod's current status."""


class PodsMayBeRunningError(RunPodError):
    """A pod's shutdown was never confirmed: it may still be running, and billing."""

    exit_code = ExitCode.PODS_MAY_BE_RUNNING


class BatchesFailedError(PoseFactoryError):
    """Some batches of a command that works batch by batch failed, each for its own reason; all are kept.

    `failures` maps each batch id to its error. The message lists every one (with its where and hint); the
    exit code is the first failure's, as if that batch had been the only one.
    """

    def __init__(self, failures: dict[str, PoseFactoryError], total: int):
        self.failures = dict(failures)
        lines = []
        for batch_id, exc in self.failures.items():
            lines.append(f"  - {batch_id}: " + str(exc).replace("\n", "\n    "))
            if exc.hint:
                lines.append(f"    hint: {exc.hint}")
        super().__init__(f"{len(self.failures)} of {total} batch(es) failed; the others are done:\n" + "\n".join(lines),
                         hint="fix what each line says, then run the same command again: what is done stays done")
        self.exit_code = next(iter(self.failures.values())).exit_code


class BusyError(PoseFactoryError):
    """Another pose-sync command is changing the same repository (its lock is held)."""

    exit_code = ExitCode.BUSY


class DiskError(PoseFactoryError):
    """The local disk is too full for the work, or a data folder cannot be written."""

    exit_code = ExitCode.DISK


class DiskFullError(DiskError):
    """The local disk (or the user's quota) is full, or a file grew beyond the size limit of its system."""


class LocalPermissionError(DiskError):
    """A local file or folder cannot be written: read-only file system or missing permission."""


class LocalFileError(PoseFactoryError):
    """Another failure of the local file system (I/O error, name too long, ...): a general error."""

    exit_code = ExitCode.GENERAL


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
