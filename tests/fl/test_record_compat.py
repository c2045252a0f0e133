"""official-compat rounds: every client's rows, scored from one gradient computation over the union of the round's
rows, equal a per-(client, row) autograd computation in float64 from the models the run kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call

from conftest import tiny_config
from fedleak.fl.federation import build_federation
from fedleak.signals import store
from fedleak.signals.candidates import gather
from fedleak.signals.tensorfile import read_tensors


def _reference(model, glob, upload, x, y) -> dict[str, np.ndarray]:
    """Per sample, one autograd pass at the global model (float64): <g, Δ>, ||g||², cos, diff; loss at the upload."""
    model = model.double().eval()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    g64 = {n: t.double() for n, t in glob.items()}
    delta = torch.cat([(g64[n] - upload[n].double()).reshape(-1) for n in names])
    out = {k: [] for k in ("dot", "gnorm2", "cos", "diff", "loss")}
    for xi, yi in zip(x.double(), y):
        params = {n: g64[n].clone().requires_grad_(True) for n in names}
        loss = torch.nn.functional.cross_entropy(functional_call(model, {**g64, **params}, (xi[None],)), yi[None])
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, [params[n] for n in names])])
        dot, gn2 = float(g @ delta), float(g @ g)
        out["dot"].append(dot)
        out["gnorm2"].append(gn2)
        out["cos"].append(dot / (gn2**0.5 * float(delta @ delta) ** 0.5))
        out["diff"].append(2 * dot - gn2)
        with torch.no_grad():
            up = {n: t.double() for n, t in upload.items()}
            logits = functional_call(model, {**g64, **up}, (xi[None],))
            out["loss"].append(float(torch.nn.functional.cross_entropy(logits, yi[None])))
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("model", ["mlp", "convnet64"])
def test_compat_rows_match_per_client_autograd(tmp_path, model):
    over = {"model__options": {"hidden": [16]}} if model == "mlp" else \
        {"model__name": "convnet64", "model__options": {"norm": "group", "width": 4}, "data__synthetic__size": 12}
    cfg = tiny_config(candidates__protocol="official-compat", fl__rounds=2, signals__keep_models=True, **over)
    from fedleak.fl.simulation import train

    run = train(cfg, tmp_path / "r", quiet=True)
    fed = build_federation(cfg, run)
    d = fed.data
    for rnd in store.recorded_rounds(run):
        z = store.read_npz(store.round_path(run, rnd), "")
        folder = run / store.MODELS_DIR / store.round_folder(rnd)
        glob, _ = read_tensors(folder / "global.safetensors")
        distinct = set()
        for k in range(cfg.partition.num_clients):
            ids = z["ids"][k]
            distinct.add(tuple(ids))
            x, y = gather(ids, fed.n_train, d.train.x, d.train.y, d.test.x, d.test.y)
            upload, _ = read_tensors(folder / store.client_file(k))
            ref = _reference(fed.model, glob, upload, d.normalize(x), y)
            for key, want in ref.items():
                have = z[key][k].astype(np.float64)
                scale = np.abs(want).max()
                # float32 signals against a float64 computation: relative to the largest value of the client's row
                np.testing.assert_allclose(have, want, rtol=0, atol=1e-4 * scale, err_msg=f"round {rnd} client {k} {key}")
        assert len(distinct) == cfg.partition.num_clients  # every client scored its own redrawn rows
