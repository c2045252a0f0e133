"""Where dataset files live.

Resolution order: an explicit ``data_dir`` (``data.data_dir`` / ``--data-dir``), else the
``FEDLEAK_DATA_DIR`` environment variable, else ``<user cache dir>/data`` (``platformdirs``,
e.g. ``~/.cache/fedleak/data`` on Linux).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "FEDLEAK_DATA_DIR"


def default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("fedleak")) / "data"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder that holds (or will hold) dataset files; it need not exist yet."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return default_data_dir()
