"""The exception types that mean "bad input": the CLI prints them as one line and exits 2."""

from __future__ import annotations

from fedleak.config import ConfigError
from fedleak.data.base import DataError
from fedleak.runlock import RunLockError
from fedleak.signals.store import StoreError


class FedleakError(RuntimeError):
    """Any other user-facing error with an actionable one-line message."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataError, StoreError, RunLockError, FedleakError, FileNotFoundError
)
