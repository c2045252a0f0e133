"""``fedleak.device`` and the engine's device plumbing, on the CPU (no GPU is needed; an absent one is an error)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from conftest import tiny_config
from fedleak import device as dv
from fedleak.errors import ConfigError


@pytest.fixture()
def restore_tf32():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
    torch.set_float32_matmul_precision(saved[2])


def test_check_device_accepts_cpu_and_names_what_is_wrong() -> None:
    assert dv.check_device("cpu") == "cpu"
    for bad in ("gpu", "CUDA", "cuda:", "cuda:-1", "cpu:0", "", "cuda:0 "):
        with pytest.raises(ConfigError, match="is not a device; use 'cpu', 'cuda' or 'cuda:N'"):
            dv.check_device(bad)
    absent = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: absent on every machine
    with pytest.raises(ConfigError) as e:
        dv.check_device(absent, "device")
    msg = str(e.value)
    assert msg.startswith("device: ") and f"'{absent}' is not available" in msg and "\n" not in msg
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="has 0 CUDA device"):
            dv.check_device("cuda")


def test_setup_device_switches_tf32_off(restore_tf32) -> None:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("medium")
    assert dv.setup_device("cpu") == torch.device("cpu")
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.get_float32_matmul_precision() == "highest"


def test_setup_device_checks_before_touching_anything(restore_tf32) -> None:
    torch.backends.cudnn.allow_tf32 = True
    with pytest.raises(ConfigError):
        dv.setup_device("tpu")
    assert torch.backends.cudnn.allow_tf32 is True


def test_to_device_moves_nested_tensors_and_is_the_identity_on_the_same_device() -> None:
    a, b = torch.arange(3.0), torch.ones(2, dtype=torch.int64)
    tree = {"p": {"w": a, "step": b}, "list": [a, 3, "x"], "tuple": (b, None)}
    out = dv.to_device(tree, "cpu")
    assert out["p"]["w"] is a and out["p"]["step"] is b and out["list"][0] is a and out["tuple"][0] is b
    assert out["list"][1:] == [3, "x"] and out["tuple"][1] is None and isinstance(out["tuple"], tuple)
    meta = dv.to_device(tree, "meta")  # a real move, without a GPU: shapes and dtypes kept, device changed
    assert meta["p"]["w"].device.type == "meta" and meta["p"]["w"].shape == a.shape
    assert meta["tuple"][0].dtype == torch.int64 and tree["p"]["w"].device.type == "cpu"
    assert dv.to_device(None, "meta") is None


def test_module_device() -> None:
    assert dv.module_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert dv.module_device(torch.nn.Linear(2, 2, device="meta")).type == "meta"
    assert dv.module_device(torch.nn.ReLU()) == torch.device("cpu")


def test_stopwatch_synchronises_the_gpu_at_both_ends(monkeypatch) -> None:
    calls: list[tuple[str, float]] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: calls.append((str(d), time.perf_counter())))
    with dv.Stopwatch(torch.device("cuda", 0)) as sw:
        time.sleep(0.05)
        inside = time.perf_counter()
    assert [c[0] for c in calls] == ["cuda:0", "cuda:0"]
    assert calls[0][1] < inside < calls[1][1]  # one before the block, one after it
    assert 0.05 <= sw.seconds < 5
    calls.clear()
    with dv.Stopwatch("cpu") as cpu:
        time.sleep(0.01)
    assert calls == [] and cpu.seconds >= 0.01


def test_config_device_uses_the_same_check() -> None:
    from fedleak.config import ExperimentConfig

    assert ExperimentConfig(device="cpu").device == "cpu"
    with pytest.raises(Exception, match="is not a device"):
        ExperimentConfig(device="gpu")


def test_place_model_refuses_dpsgd_off_the_cpu_before_moving_anything(monkeypatch) -> None:
    """DP-SGD draws its noise inside the local step from the client's CPU stream: refused on a GPU, clearly."""
    from fedleak.fl import simulation
    from fedleak.fl.federation import build_federation

    cfg = tiny_config(defense__name="dpsgd")
    fed = build_federation(cfg)
    monkeypatch.setattr(simulation, "setup_device", lambda name, what: torch.device("cuda", 0))
    with pytest.raises(ConfigError, match="defense 'dpsgd' replaces the local training step.*use --device cpu"):
        simulation.place_model(fed)
    assert dv.module_device(fed.model).type == "cpu"
    plain = build_federation(tiny_config())
    monkeypatch.setattr(simulation, "setup_device", lambda name, what: torch.device("meta"))
    simulation.place_model(plain)  # no defense in the step: the model goes to the device
    assert dv.module_device(plain.model).type == "meta"


def test_a_run_may_resume_on_another_device(tmp_path) -> None:
    from fedleak.fl.rundir import check_same_config
    from fedleak.fl.simulation import train

    cfg = tiny_config(fl__rounds=1)
    train(cfg, tmp_path / "r", quiet=True)
    check_same_config(tmp_path / "r", cfg.model_copy(update={"device": "cuda:0"}))  # not a different run
    with pytest.raises(ConfigError, match="differs at: seed"):
        check_same_config(tmp_path / "r", cfg.model_copy(update={"seed": 1}))


def test_engine_outputs_stay_on_the_cpu_and_draws_use_cpu_generators(tmp_path, monkeypatch) -> None:
    """Whatever the device, every generator the round kernel draws from is a CPU one, and the uploads,
    aggregate and optimizer states it hands back are CPU tensors (checkpoints and the run store)."""
    from fedleak.fl import local, round as kernel
    from fedleak.fl.federation import build_federation

    gens: list[torch.Generator] = []
    real = torch.randperm

    def spy(n, *a, generator=None, **k):
        gens.append(generator)
        return real(n, *a, generator=generator, **k)

    monkeypatch.setattr(torch, "randperm", spy)
    cfg = tiny_config(fl__fresh_optimizer=False, fl__momentum=0.9)
    fed = build_federation(cfg)
    gp = local.get_params(fed.model)
    up, loss, state = kernel.client_update(fed, 0, 0, 0.1, gp)
    assert gens and all(g is not None and g.device.type == "cpu" for g in gens)
    assert all(v.device.type == "cpu" for v in up.values()) and np.isfinite(loss)
    moms = [s["momentum_buffer"] for s in state["state"].values()]
    assert moms and all(m.device.type == "cpu" for m in moms)
    agg = kernel.aggregate({0: up, 1: gp}, np.array([1.0, 1.0]))
    assert all(v.device.type == "cpu" for v in agg.values())


def test_invert_device_cpu_is_the_default_path_and_an_absent_gpu_is_refused_up_front(tmp_path, capsys,
                                                                                    monkeypatch) -> None:
    from fedleak.attacks.inversion.optimize import dlg_config
    from fedleak.attacks.inversion.presets import InvertSpec
    from fedleak.attacks.inversion.runner import run_inversion
    from fedleak.cli import main
    from fedleak.data.base import Dataset, Split

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 1, 16, 16, generator=g), torch.arange(4) % 4
    ds = Dataset("toy", Split(x, y), Split(x.clone(), y.clone()), 4, (0.5,), (0.25,))
    spec = InvertSpec(model="lenet_dlg", model_options={"init": "uniform"}, normalization="none", images=2,
                      attack=dlg_config().model_copy(update={"iterations": 2, "lbfgs_inner": 3}))
    a = run_inversion(spec, dataset=ds)
    b = run_inversion(spec, dataset=ds, device="cpu")
    assert torch.equal(a["pixels"]["reconstruction"], b["pixels"]["reconstruction"])
    with pytest.raises(ConfigError, match="is not a device"):
        run_inversion(spec, dataset=ds, device="gpu")

    absent = f"cuda:{torch.cuda.device_count()}"
    monkeypatch.setattr("sys.argv", ["fedleak", "invert", "--preset", "dlg", "--out", str(tmp_path / "o"),
                                     "--device", absent, "-q"])
    with pytest.raises(SystemExit) as e:
        main()
    from conftest import assert_one_error_line

    assert_one_error_line(e.value.code, capsys.readouterr().err, "--device", f"'{absent}' is not available")
    assert not (tmp_path / "o").exists()
