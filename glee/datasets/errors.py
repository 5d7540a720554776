"""Exceptions of the dataset readers, and the record of an input a reader skipped."""

from __future__ import annotations

from typing import NamedTuple


class DatasetError(ValueError):
    """A dataset folder or file is missing or malformed; the message says what to do."""


class CorruptImageError(OSError):
    """An image reference exists but cannot be decoded (truncated, not an image, ...)."""

    def __init__(self, ref: str, reason: str) -> None:
        super().__init__(f"cannot read image {ref}: {reason}")
        self.ref = ref
        self.reason = reason


class Skip(NamedTuple):
    """An input a reader left out, and why (never dropped silently)."""

    reference: str  # a file, an image reference or "file:line"
    reason: str
