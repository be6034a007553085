"""Checkpoint files: written atomically, read with ``weights_only=True`` and one-line errors."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import DaqSearchError
from .files import atomic_write


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write a checkpoint atomically (temp file, then rename), so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_state(path: str | Path, field: str) -> dict:
    """``torch.load(weights_only=True)`` of a checkpoint; a missing or corrupt file is a one-line error on ``field``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DaqSearchError(f"{field}: no such file {path}") from None
    except Exception as err:  # torch raises many types for a damaged file; all mean the same to a user
        raise DaqSearchError(f"{field}: {path} is not a readable PyTorch checkpoint ({_load_reason(err)})") from None


def _load_reason(err: Exception) -> str:
    """A short reason why ``torch.load`` failed, without torch's advice to load with ``weights_only=False``
    (which would run whatever code the file carries)."""
    text = str(err)
    if "weights_only" in text or "Weights only load failed" in text:
        return "it holds objects other than tensors and plain data, which are never loaded"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first[:200]
