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
