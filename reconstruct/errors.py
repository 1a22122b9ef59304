"""Typed errors of `reconstruct`.

Every error says what went wrong, where (a path or an image name) and how to fix it. The CLI
prints the message without a traceback and exits with `exit_code`.
"""

from __future__ import annotations


class ReconstructError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 1


class ConfigError(ReconstructError):
    """A configuration value, YAML file or `--set` override is invalid."""

    exit_code = 2


class InputError(ReconstructError):
    """The input folder or a file in it cannot be used."""

    exit_code = 3


class ImageReadError(InputError):
    """One image cannot be decoded (corrupt, truncated, not an image)."""

    def __init__(self, path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot read image {path}: {reason}")


class StorageError(ReconstructError):
    """An output file is missing, corrupt or does not follow the on-disk contract."""

    exit_code = 4


class StaleOutputError(StorageError):
    """An output file was written with a different configuration (its config hash differs)."""


class ModelWeightsError(ReconstructError):
    """Model weights are missing, corrupt or cannot be downloaded."""

    exit_code = 5


class MappingError(ReconstructError):
    """Structure-from-motion could not build a model from the matches."""

    exit_code = 6


class ExecutorError(ReconstructError):
    """A distributed executor cannot start, or its workers failed beyond their retries."""

    exit_code = 7


class MissingExtraError(ExecutorError):
    """An optional dependency (a pip extra such as `distributed`) is not installed."""


class OutputLockedError(StorageError):
    """Another process holds the lock of the output folder (one writer per folder)."""

    exit_code = 8


class DiskFullError(StorageError):
    """The output folder's filesystem has no space left (ENOSPC, EDQUOT)."""

    exit_code = 9


class OutputPermissionError(StorageError):
    """The output folder cannot be written (EACCES, EPERM, EROFS)."""

    exit_code = 10


class OutputNotADirectoryError(StorageError):
    """The output path, or one of its parents, is a file and not a folder."""

    exit_code = 11


class RunCancelledError(ReconstructError):
    """The run was cancelled through a `progress.CancelToken` (the app's Cancel button)."""

    exit_code = 130  # as an interrupted command (Ctrl-C)

    def __init__(self, stage: str) -> None:
        self.stage = stage
        super().__init__(
            f"cancelled during {stage or 'a stage'}: the items finished so far are kept; "
            "run the same stage again to resume"
        )
