"""Torch device selection, shared by every stage that runs a model."""

from __future__ import annotations

import logging
from typing import Literal

from .errors import ConfigError

logger = logging.getLogger(__name__)

DeviceName = Literal["auto", "cpu", "cuda"]


def resolve_device(name: str = "auto"):
    """`auto` picks CUDA when present, else the CPU; `cuda` without a GPU is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was requested but torch sees no CUDA device; use --device cpu or auto"
        )
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)
