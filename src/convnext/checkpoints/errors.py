"""The errors the checkpoint code raises: each says what is wrong with which file and what to do."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file or state dict that cannot be read or does not fit the model."""


class UnsafeCheckpointError(CheckpointError):
    """A file whose pickle would construct objects other than tensors and plain containers; never executed."""


class DownloadError(RuntimeError):
    """A pretrained file that could not be fetched or failed its integrity check."""
