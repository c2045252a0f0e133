"""Audit a Flower federation with fedleak (optional extra: ``pip install 'fedleak[flower]'``).

- :class:`FlowerAudit` (``fedleak.flower.audit``, no ``flwr`` import): writes the run directory.
- :class:`AuditStrategy` (``fedleak.flower.strategy``): wraps a Message-API strategy (``flwr.serverapp``).
- :class:`LegacyAuditStrategy` (``fedleak.flower.legacy``): wraps a legacy ``aggregate_fit`` strategy.
- ``fedleak.flower.sim``: ``client_app``/``server_app``/``run_flower_simulation`` behind ``fedleak flower-sim``.

See docs/flower.md. Names are imported lazily so that ``import fedleak.flower`` works without ``flwr``.
"""

from __future__ import annotations

from fedleak.lazy import lazy_exports

_LAZY = {
    "FlowerAudit": "fedleak.flower.audit",
    "PARTITION_KEY": "fedleak.flower.audit",
    "custom_federation": "fedleak.flower.audit",
    "params_from_arrays": "fedleak.flower.audit",
    "AuditStrategy": "fedleak.flower.strategy",
    "LegacyAuditStrategy": "fedleak.flower.legacy",
    "client_app": "fedleak.flower.sim",
    "server_app": "fedleak.flower.sim",
    "load_partition": "fedleak.flower.sim",
    "run_flower_simulation": "fedleak.flower.sim",
    "EngineFedAvg": "fedleak.flower.sim",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
