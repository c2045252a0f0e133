"""fedleak.lazy: a package's exports are imported on first use, cached, listed by dir(), and unknown names raise."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from conftest import SRC
from fedleak.lazy import lazy_exports


def test_first_use_imports_caches_and_lists(monkeypatch):
    pkg = types.ModuleType("fake_pkg")
    monkeypatch.setitem(sys.modules, "fake_pkg", pkg)
    pkg.__getattr__, pkg.__dir__ = lazy_exports("fake_pkg", {"sqrt": "math", "dumps": "json"})
    import math

    assert pkg.sqrt is math.sqrt and vars(pkg)["sqrt"] is math.sqrt  # cached in the package after first use
    assert {"sqrt", "dumps"} <= set(pkg.__dir__())
    with pytest.raises(AttributeError, match="fake_pkg.*nope"):
        pkg.__getattr__("nope")


def test_the_lazy_packages_import_without_torch():
    code = ("import sys, fedleak.data, fedleak.flower, fedleak.attacks.inversion as inv; "
            "assert 'torch' not in sys.modules; inv.LocalHyper; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
