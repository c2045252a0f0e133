"""The in-process FedAvg engine: trains, records per-sample signals, resumes after any crash.

Determinism: every random draw of round r and client k comes from a generator seeded by
``(seed, r, k, purpose)``, so a resumed run needs nothing but the checkpointed global model (and,
with ``fresh_optimizer: false``, the optimizer states) to reproduce an uninterrupted run exactly.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedleak.config import ConfigError, ExperimentConfig, dump_config, parse_config
from fedleak.data.base import Dataset
from fedleak.fl.hooks import Defense, build_defense
from fedleak.fl.local import ParamDict, evaluate, get_params, local_update
from fedleak.fl.progress import RoundProgress
from fedleak.fl.schedule import lr_at
from fedleak.signals import store
from fedleak.signals.candidates import build_candidates, candidate_counts, gather, redraw_nonmembers

# purposes of derived random streams
_PARTITION, _CANDIDATES, _SAMPLE_CLIENTS, _LOCAL, _DEFENSE, _COMPAT, _DATA_SELECT, _INIT = range(8)


def _seed_seq(seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, *key])


def np_rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(_seed_seq(seed, *key))


def torch_gen(seed: int, *key: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(_seed_seq(seed, *key).generate_state(1, np.uint64)[0] & 0x7FFF_FFFF_FFFF_FFFF))
    return g


@dataclass
class Federation:
    """Everything fixed for the whole run, derived from the config (and saved in the run dir)."""

    cfg: ExperimentConfig
    data: Dataset
    clients: list[np.ndarray]
    cand_ids: np.ndarray
    cand_owner: np.ndarray
    model: torch.nn.Module
    defense: Defense
    weights: np.ndarray  # client data sizes

    @property
    def n_train(self) -> int:
        return len(self.data.train)


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("fedleak", "torch", "numpy", "scipy", "scikit-learn", "pydantic"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _check_same_config(run_dir: Path, cfg: ExperimentConfig) -> None:
    import yaml

    old = parse_config(yaml.safe_load((run_dir / "config.yaml").read_text()), str(run_dir / "config.yaml"))
    a, b = old.model_dump(mode="json"), cfg.model_dump(mode="json")
    for d in (a, b):  # where outputs go and thread counts do not change results
        d.pop("output", None)
        d["fl"].pop("threads", None)
    if a != b:
        diff = [f"{s}.{k}" for s in a if isinstance(a[s], dict) for k in a[s] if a[s].get(k) != b.get(s, {}).get(k)]
        diff += [s for s in a if not isinstance(a[s], dict) and a[s] != b.get(s)]
        raise ConfigError(
            f"{run_dir} already holds a run with a different config (differs at: {', '.join(diff)}); "
            "use another --out, or delete that directory to start over"
        )


def build_federation(cfg: ExperimentConfig, run_dir: Path | None = None) -> Federation:
    """Load data, partition, candidates, model and defense (reusing the run dir's saved split)."""
    from fedleak.data import load_dataset
    from fedleak.data.partition import dirichlet_partition, iid_partition
    from fedleak.models import build_model

    data = load_dataset(cfg.data, seed=cfg.seed)
    pc = cfg.partition
    if run_dir is not None and (run_dir / "split.npz").is_file():
        clients = store.read_split(run_dir)
    elif pc.scheme == "iid":
        clients = iid_partition(len(data.train), pc.num_clients, np_rng(cfg.seed, _PARTITION), pc.samples_per_client)
    else:
        clients = dirichlet_partition(
            data.train.y.numpy(), pc.num_clients, pc.beta, np_rng(cfg.seed, _PARTITION), min_size=pc.min_size
        )
    if run_dir is not None and (run_dir / "candidates.npz").is_file():
        with np.load(run_dir / "candidates.npz") as z:
            ids, owner = z["ids"], z["owner"]
    else:
        ids, owner = build_candidates(
            cfg.candidates, clients, len(data.train), len(data.test), np_rng(cfg.seed, _CANDIDATES)
        )
    torch.manual_seed(int(_seed_seq(cfg.seed, _INIT).generate_state(1)[0]))
    try:
        model = build_model(cfg.model.name, data.num_classes, data.input_shape, **cfg.model.options)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    defense = build_defense(cfg.defense, cfg)
    weights = np.array([len(c) for c in clients], dtype=np.float64)
    return Federation(cfg, data, clients, ids, owner, model, defense, weights)


def _init_run_dir(run_dir: Path, cfg: ExperimentConfig, fed: Federation, recorded: list[int]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    store.atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    store.write_split(run_dir, fed.clients)
    labels = torch.cat([fed.data.train.y, fed.data.test.y]).numpy()[fed.cand_ids]
    store.write_candidates(run_dir, fed.cand_ids, fed.cand_owner, cfg.candidates.target_client, labels)
    n_params = sum(p.numel() for p in fed.model.parameters() if p.requires_grad)
    meta = {
        "seed": cfg.seed,
        "versions": _versions(),
        "git_revision": _git_revision(),
        "dataset": {
            "name": fed.data.name,
            "n_train": len(fed.data.train),
            "n_test": len(fed.data.test),
            "num_classes": fed.data.num_classes,
            "input_shape": list(fed.data.input_shape),
            "mean": list(fed.data.mean),
            "std": list(fed.data.std),
        },
        "model": {"name": cfg.model.name, "trainable_parameters": n_params},
        "client_sizes": [len(c) for c in fed.clients],
        "n_candidates": int(len(fed.cand_ids)),
        "n_members": int((fed.cand_owner == cfg.candidates.target_client).sum()),
        "candidates_used": candidate_counts(cfg.candidates, fed.cand_owner),
        "recorded_rounds": recorded,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    store.atomic_write_text(run_dir / "meta.json", json.dumps(meta, indent=2))


def _save_checkpoint(run_dir: Path, rnd: int, global_params: ParamDict, opt_states: dict[int, Any]) -> None:
    path = run_dir / "checkpoint.pt"
    tmp = path.with_name("checkpoint.pt.tmp")
    torch.save({"round": rnd, "global": global_params, "opt_states": opt_states}, tmp)
    tmp.replace(path)


def _load_checkpoint(run_dir: Path) -> tuple[int, ParamDict, dict[int, Any]] | None:
    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        return None
    ck = torch.load(path, weights_only=True)
    return int(ck["round"]), ck["global"], ck.get("opt_states", {})


def _participants(cfg: ExperimentConfig, rnd: int) -> list[int]:
    K = cfg.partition.num_clients
    m = max(int(round(cfg.fl.participation * K)), 1)
    if m >= K:
        return list(range(K))
    return sorted(np_rng(cfg.seed, _SAMPLE_CLIENTS, rnd).choice(K, size=m, replace=False).tolist())


def aggregate(uploaded: dict[int, ParamDict], weights: np.ndarray) -> ParamDict:
    """FedAvg: Σ_k w_k θ_k / Σ_k w_k over the clients that uploaded, keyed by client id (spec W10 fixed)."""
    ks = sorted(uploaded)
    total = float(sum(weights[k] for k in ks))
    names = uploaded[ks[0]].keys()
    return {n: sum((weights[k] / total) * uploaded[k][n] for k in ks) for n in names}


def client_update(
    fed: Federation,
    k: int,
    rnd: int,
    lr: float,
    global_params: ParamDict,
    opt_state: dict[str, Any] | None = None,
    defended: bool | None = None,
) -> tuple[ParamDict, float, dict[str, Any] | None]:
    """Client ``k``'s work in round ``rnd``: what it uploads, its mean training loss, its optimizer state.

    Every random draw comes from the (seed, rnd, k, purpose) streams, so any process holding the same
    ``Federation`` (e.g. a Flower ClientApp, ``fedleak.flower``) computes the identical upload.
    """
    cfg, data = fed.cfg, fed.data
    if defended is None:
        defended = cfg.defense.clients is None or k in cfg.defense.clients
    defense = fed.defense if defended else Defense()
    idx = defense.select_data(fed.clients[k], rnd, np_rng(cfg.seed, _DATA_SELECT, rnd, k))
    it = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    local, loss, state = local_update(
        fed.model,
        global_params,
        data.train.x[it],
        data.train.y[it],
        fl=cfg.fl,
        lr=lr,
        num_classes=data.num_classes,
        normalize=data.normalize,
        defense=defense,
        gen=torch_gen(cfg.seed, _LOCAL, rnd, k),
        opt_state=opt_state,
        where=f"round {rnd} (0-based), client {k}",
    )
    delta = {n: global_params[n] - local[n] for n in local}
    delta = defense.transform_update(delta, torch_gen(cfg.seed, _DEFENSE, rnd, k))
    return {n: global_params[n] - delta[n] for n in delta}, loss, state


def train(
    cfg: ExperimentConfig, run_dir: str | Path, quiet: bool = False, stop_after: int | None = None
) -> Path:
    """Run (or resume) the experiment in ``run_dir``; returns the run directory.

    ``stop_after``: finish after this many rounds of this call (for tests and incremental work).
    """
    from fedleak.signals.record import record_round

    run_dir = Path(run_dir)
    if cfg.fl.threads:
        torch.set_num_threads(cfg.fl.threads)
    resuming = (run_dir / "config.yaml").is_file()
    if resuming:
        _check_same_config(run_dir, cfg)
    fed = build_federation(cfg, run_dir if resuming else None)
    recorded = cfg.signals.recorded_rounds(cfg.fl.rounds)
    if not resuming:
        _init_run_dir(run_dir, cfg, fed, recorded)

    ck = _load_checkpoint(run_dir)
    if ck is None:
        start, global_params, opt_states = 0, get_params(fed.model), {}
    else:
        start, global_params, opt_states = ck[0] + 1, ck[1], ck[2]
    _truncate_metrics(run_dir, start)

    data, fl = fed.data, cfg.fl
    norm = data.normalize
    test_x, test_y = norm(data.test.x), data.test.y
    train_eval_x, train_eval_y = _train_eval_subset(fed)
    defended = set(range(cfg.partition.num_clients)) if cfg.defense.clients is None else set(cfg.defense.clients)
    end = cfg.fl.rounds if stop_after is None else min(cfg.fl.rounds, start + stop_after)

    progress = RoundProgress(total=cfg.fl.rounds, start=start, quiet=quiet, name=cfg.name)
    with progress:
        for rnd in range(start, end):
            t0 = time.time()
            lr = lr_at(fl.schedule, fl.lr, rnd, fl.rounds)
            uploaded: dict[int, ParamDict] = {}
            client_loss: dict[int, float] = {}
            for k in _participants(cfg, rnd):
                uploaded[k], client_loss[k], opt_states_k = client_update(
                    fed, k, rnd, lr, global_params, opt_states.get(k), defended=k in defended
                )
                if opt_states_k is not None:
                    opt_states[k] = opt_states_k
            record: dict[str, Any] = {"round": rnd, "lr": lr}
            if rnd in recorded:
                record["client_test_acc"] = record_round(
                    fed, run_dir, rnd, lr, global_params, uploaded, test_x, test_y,
                    compat_rng=np_rng(cfg.seed, _COMPAT, rnd),
                )
            global_params = aggregate(uploaded, fed.weights)
            test_acc, test_loss = evaluate(fed.model, global_params, test_x, test_y, fl.eval_batch_size)
            record.update(test_acc=test_acc, test_loss=test_loss, client_train_loss=client_loss)
            if fl.eval_train_every and (rnd % fl.eval_train_every == 0 or rnd == fl.rounds - 1):
                tr_acc, tr_loss = evaluate(fed.model, global_params, train_eval_x, train_eval_y, fl.eval_batch_size)
                record.update(train_acc=tr_acc, train_loss=tr_loss)
            eps = fed.defense.privacy_spent(rnd)
            if eps:
                record["privacy"] = eps
            record["time"] = time.time() - t0
            store.append_metrics(run_dir, record)
            if (rnd + 1) % cfg.output.checkpoint_every == 0 or rnd == end - 1:
                _save_checkpoint(run_dir, rnd, global_params, opt_states)
            progress.update(rnd, record)
    if end == cfg.fl.rounds:
        _save_final_model(run_dir, global_params)
    return run_dir


def _save_final_model(run_dir: Path, params: ParamDict) -> None:
    tmp = run_dir / "final_model.pt.tmp"
    torch.save(params, tmp)
    tmp.replace(run_dir / "final_model.pt")


def _train_eval_subset(fed: Federation, cap: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Global-model train accuracy on at most ``cap`` training samples (spec W18: not all 50k every round)."""
    n = fed.n_train
    idx = torch.arange(n) if n <= cap else torch.as_tensor(np.sort(np_rng(fed.cfg.seed, 99).choice(n, cap, replace=False)))
    return fed.data.normalize(fed.data.train.x[idx]), fed.data.train.y[idx]


def _truncate_metrics(run_dir: Path, start: int) -> None:
    """Drop metric lines of rounds >= start (written before a crash, redone on resume)."""
    rows = [r for r in store.read_metrics(run_dir) if r.get("round", -1) < start]
    store.atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


__all__ = ["train", "build_federation", "aggregate", "client_update", "Federation", "redraw_nonmembers", "gather"]
