"""The exception types that mean "bad input": the CLI prints them as one line and exits 2.

This is the bottom layer of fedleak (it imports nothing from the package): every layer raises these types, and
their historical homes re-export them (``fedleak.config.ConfigError``, ``fedleak.data.base.DataError``,
``fedleak.signals.store.StoreError``, ``fedleak.runlock.RunLockError``).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem, with a one-line message that says what to change."""


class DataError(RuntimeError):
    """A missing, corrupt or unknown dataset; the message says what to put where."""


class StoreError(RuntimeError):
    """A run directory cannot be read or written; the message names the file and says what to do."""


class RunLockError(RuntimeError):
    """The run directory is being written by another process, or the lock file cannot be created."""


class FedleakError(RuntimeError):
    """Any other user-facing error with an actionable one-line message."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataError, StoreError, RunLockError, FedleakError, FileNotFoundError
)
