"""fedleak.flower wrappers driven through Flower's own strategy loop, in-process (no Ray).

``_FakeGrid`` plays Flower's runtime: it hands each message to the ClientApp of its node (node ids are
scrambled against partition ids) and returns the replies in a shuffled order, as a real SuperLink may.
"""

import random

import numpy as np
import pytest
import torch

flwr = pytest.importorskip("flwr")

from flwr.app import Context, Message, RecordDict  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402

from conftest import REPO, assert_within, longest_sum, rounding_tol, tiny_config  # noqa: E402
from fedleak.fl.simulation import train  # noqa: E402
from fedleak.signals.loading import load_signals
from fedleak.signals.store import read_metrics  # noqa: E402

SIGNALS = ("loss", "dot", "cos", "diff", "gnorm2", "dnorm2", "participated", "ids")


def assert_runs_match(a, b, rtol=1e-5, atol=1e-6):
    """Two run directories hold the same signals, utility and final model (to float tolerance)."""
    sa, sb = load_signals(a), load_signals(b)
    np.testing.assert_array_equal(sa.rounds, sb.rounds)
    np.testing.assert_array_equal(sa.owner, sb.owner)
    for key in SIGNALS:
        x, y = getattr(sa, key), getattr(sb, key)
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=key)
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, equal_nan=True, err_msg=key)
        else:
            np.testing.assert_array_equal(x, y, err_msg=key)
    ma, mb = read_metrics(a), read_metrics(b)
    assert [r["round"] for r in ma] == [r["round"] for r in mb]
    for ra, rb in zip(ma, mb):
        assert ra["lr"] == pytest.approx(rb["lr"], rel=1e-12)
        assert ra["test_loss"] == pytest.approx(rb["test_loss"], rel=rtol, abs=atol)
        assert abs(ra["test_acc"] - rb["test_acc"]) <= 1.0 / 40 + 1e-12  # at most one of 40 test samples flips
        assert ra["client_train_loss"].keys() == rb["client_train_loss"].keys()
        for k in ra["client_train_loss"]:
            assert ra["client_train_loss"][k] == pytest.approx(rb["client_train_loss"][k], rel=rtol, abs=atol)
    fa = torch.load(a / "final_model.pt", weights_only=True)
    fb = torch.load(b / "final_model.pt", weights_only=True)
    for n in fa:
        torch.testing.assert_close(fa[n], fb[n], rtol=rtol, atol=atol)


class _FakeGrid(Grid):
    def __init__(self, client_app, num_nodes: int, seed: int = 0) -> None:
        rng = random.Random(seed)
        node_ids = rng.sample(range(100, 10_000), num_nodes)
        self.app, self.rng = client_app, rng
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config={"partition-id": k, "num-partitions": num_nodes},
                       state=RecordDict(), run_config={})
            for k, n in enumerate(node_ids)
        }
        self.log: list[tuple[str, int]] = []  # (message type, partition id) of every message sent
        self.exchanges: list[tuple[Message, Message]] = []  # (sent, reply) pairs, in sending order

    def set_run(self, run):  # pragma: no cover - not used in-process
        pass

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # pragma: no cover
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id)

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for m in messages:
            ctx = self.contexts[m.metadata.dst_node_id]
            self.log.append((m.metadata.message_type, int(ctx.node_config["partition-id"])))
            replies.append(self.app(m, ctx))
            self.exchanges.append((m, replies[-1]))
        self.rng.shuffle(replies)
        return replies


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    """Flower stamps run/task ids on every Message it creates; its runtime sets them, here we do."""
    try:
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError:  # older flwr: messages carry no task identity
        return
    for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value, raising=False)


def _server_context():
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})


@pytest.mark.parametrize(
    "over",
    [
        {"partition__num_clients": 4, "fl__participation": 0.5},
        {"fl__fresh_optimizer": False, "candidates__protocol": "official-compat", "signals__rounds": [1, 2]},
        {"defense__name": "dpsgd", "defense__params": {"noise_multiplier": 1.0, "max_grad_norm": 1.0},
         "defense__clients": [0, 2]},
        {"defense__name": "perturb", "defense__params": {"sigma": 0.01, "clip": 1.0}},
    ],
    ids=["partial-participation", "carried-optimizer-compat", "dpsgd-some-clients", "perturb"],
)
def test_flower_apps_reproduce_the_engine(tmp_path, over):
    """fedleak's ServerApp/ClientApp through Flower's strategy loop == `fedleak train`, replies shuffled."""
    from fedleak.flower.sim import client_app, server_app

    cfg = tiny_config(fl__rounds=3, fl__threads=1, **over)
    ref = train(cfg, tmp_path / "engine", quiet=True)
    grid = _FakeGrid(client_app(cfg), cfg.partition.num_clients, seed=5)
    server_app(cfg, tmp_path / "flower")(grid, _server_context())
    assert_runs_match(ref, tmp_path / "flower")
    privacy = [(r.get("privacy"), q.get("privacy")) for r, q in zip(read_metrics(ref), read_metrics(tmp_path / "flower"))]
    assert all(a == b for a, b in privacy)  # DP accounting mirrored on the server
    if cfg.defense.name != "none":
        assert all(a for a, _ in privacy)
    # the clients Flower trained each round are the engine's sampled participants
    from fedleak.seeding import participants

    trained = [k for t, k in grid.log if t == "train"]
    assert sorted(trained) == sorted(sum((participants(cfg, r) for r in range(3)), []))
    if cfg.fl.participation < 1:
        assert load_signals(tmp_path / "flower").participated.sum(1).tolist() == [2, 2, 2]


def test_failed_client_stops_flower_sim_with_its_reason(tmp_path):
    from flwr.app import Error

    from fedleak.flower.sim import client_app, server_app

    cfg = tiny_config(fl__rounds=2)
    inner = client_app(cfg)

    def flaky(msg, ctx):
        if msg.metadata.message_type == "train" and ctx.node_config["partition-id"] == 1:
            return Message(Error(code=0, reason="out of disk"), reply_to=msg)
        return inner(msg, ctx)

    with pytest.raises(RuntimeError, match="partition 1 failed: out of disk"):
        server_app(cfg, tmp_path / "r")(_FakeGrid(flaky, cfg.partition.num_clients), _server_context())


def test_dp_wrapper_placement_decides_what_the_audit_sees(tmp_path):
    """Inside server-side clipping the audit records clipped updates (|Δ| = C, cosine unchanged); outside, raw ones."""
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping as DPClip
    from flwr.serverapp.strategy import FedAvg

    from fedleak.flower import AuditStrategy, FlowerAudit
    from fedleak.flower.sim import client_app

    cfg = tiny_config(fl__rounds=1, fl__threads=1, signals__rounds=[0])
    K = cfg.partition.num_clients

    def run(name, wrap):
        audit = FlowerAudit(cfg, tmp_path / name)
        strategy = wrap(audit)
        grid = _FakeGrid(client_app(cfg), K, seed=1)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(audit.initial_params()), num_rounds=1)
        return load_signals(tmp_path / name)

    def fedavg():
        return FedAvg(fraction_evaluate=0.0, min_available_nodes=K)

    raw = run("outside", lambda a: AuditStrategy(DPClip(fedavg(), 1.0, 1e-3, K), a))
    C = 0.5 * float(np.sqrt(raw.dnorm2[0].min()))
    inside = run("inside", lambda a: DPClip(AuditStrategy(fedavg(), a), 1.0, C, K))
    assert (raw.dnorm2[0] > 1.5 * C**2).all()  # the wrapper outside DP sees the unclipped updates
    np.testing.assert_allclose(inside.dnorm2[0], C**2, rtol=1e-4)  # inside: each update clipped to norm C
    np.testing.assert_allclose(inside.cos[0], raw.cos[0], rtol=1e-3, atol=1e-5)  # clipping keeps directions
    scale = np.sqrt(inside.dnorm2[0] / raw.dnorm2[0])[:, None]
    np.testing.assert_allclose(inside.dot[0], raw.dot[0] * scale, rtol=1e-3, atol=1e-6)


def test_local_dp_mod_uploads_are_what_the_audit_scores(tmp_path):
    """With LocalDpMod the server only ever sees clipped + noised models: ||Δ_k||² ≈ C² + P σ²."""
    from flwr.app import ArrayRecord
    from flwr.clientapp.mod import LocalDpMod
    from flwr.serverapp.strategy import FedAvg

    from fedleak.flower import AuditStrategy, FlowerAudit
    from fedleak.flower.sim import client_app

    cfg = tiny_config(fl__rounds=1, fl__threads=1, signals__rounds=[0])
    K = cfg.partition.num_clients
    C, eps, delta, sens = 0.05, 50.0, 1e-5, 1.0
    sigma = sens * np.sqrt(2 * np.log(1.25 / delta)) / eps
    mod, inner = LocalDpMod(C, sens, eps, delta), client_app(cfg)
    np.random.seed(0)  # LocalDpMod draws from numpy's global generator
    audit = FlowerAudit(cfg, tmp_path / "ldp")
    grid = _FakeGrid(lambda m, ctx: mod(m, ctx, inner), K, seed=2)
    AuditStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=K), audit).start(
        grid=grid, initial_arrays=ArrayRecord(audit.initial_params()), num_rounds=1
    )
    sig = load_signals(tmp_path / "ldp")
    P = sum(p.numel() for p in audit.fed.model.parameters())
    raw = load_signals(train(cfg, tmp_path / "engine", quiet=True))
    assert (raw.dnorm2[0] > C**2).all()  # every raw update is clipped to C before the noise
    np.testing.assert_allclose(sig.dnorm2[0], C**2 + P * sigma**2, rtol=0.15)
    assert not np.allclose(sig.cos[0], raw.cos[0], atol=1e-2)  # the noise, not the data, dominates Δ_k


def test_missing_partition_id_is_a_clear_error(tmp_path):
    from flwr.app import ArrayRecord, MetricRecord

    from fedleak.config import ConfigError
    from fedleak.flower.strategy import client_id_of

    req = Message(content=RecordDict(), message_type="train", dst_node_id=42)
    reply = Message(content=RecordDict({"m": MetricRecord({"num-examples": 3})}), reply_to=req)
    with pytest.raises(ConfigError, match="partition-id"):
        client_id_of(reply)
    assert client_id_of(reply, {42: 2}) == 2
    assert client_id_of(reply, lambda msg: 1) == 1
    tagged = Message(content=RecordDict({"m": MetricRecord({"partition-id": 3}), "a": ArrayRecord()}), reply_to=req)
    assert client_id_of(tagged, {42: 2}) == 3  # the client's own statement wins


# ------------------------------------------------------------------------------------ legacy API


class _Proxy(flwr.server.client_proxy.ClientProxy):
    def __init__(self, cid: str, node_id: int):
        super().__init__(cid)
        self.node_id = node_id

    def get_properties(self, *a, **k):  # pragma: no cover
        raise NotImplementedError

    get_parameters = fit = evaluate = reconnect = get_properties


def _legacy_rounds(cfg, strategy, rounds, secagg_round=None, seed=0):
    """Drive a legacy strategy like flwr's Server.fit would, clients = fedleak's client_update."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.client_manager import SimpleClientManager

    from fedleak.fl.federation import build_federation
    from fedleak.fl.round import client_update
    from fedleak.fl.schedule import lr_at

    fed = build_federation(cfg)
    names = list(fed.model.state_dict())
    cm = SimpleClientManager()
    proxies = [_Proxy(f"c{k}", 500 + k) for k in range(cfg.partition.num_clients)]
    for p in proxies:
        cm.register(p)
    k_of = {p.cid: k for k, p in enumerate(proxies)}
    params = ndarrays_to_parameters([v.numpy() for v in fed.model.state_dict().values()])
    rng = random.Random(seed)
    for rnd in range(rounds):
        results = []
        for proxy, ins in strategy.configure_fit(rnd + 1, params, cm):
            k = k_of[proxy.cid]
            gp = dict(zip(names, (torch.from_numpy(a) for a in parameters_to_ndarrays(ins.parameters))))
            lr = lr_at(cfg.fl.schedule, cfg.fl.lr, rnd, cfg.fl.rounds)
            up, loss, _ = client_update(fed, k, rnd, lr, gp)
            res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([up[n].numpy() for n in names]),
                         len(fed.clients[k]), {"partition-id": k, "train_loss": loss})
            results.append((proxy, res))
        rng.shuffle(results)
        if rnd == secagg_round:  # what SecAggPlusWorkflow hands aggregate_fit: the aggregate in every FitRes
            agg, _ = flwr.server.strategy.FedAvg().aggregate_fit(rnd + 1, results, [])
            for _, res in results:
                res.parameters = agg
        params, _ = strategy.aggregate_fit(rnd + 1, results, [])
    return params


def test_legacy_wrapper_matches_engine_and_detects_secure_aggregation(tmp_path):
    from flwr.server.strategy import FedAvg

    from fedleak.flower import FlowerAudit, LegacyAuditStrategy

    cfg = tiny_config(fl__rounds=3, fl__threads=1)
    ref = train(cfg, tmp_path / "engine", quiet=True)
    _legacy_rounds(cfg, LegacyAuditStrategy(FedAvg(), FlowerAudit(cfg, tmp_path / "legacy")), 3)
    # flwr's legacy FedAvg sums Σ n_k θ_k / Σ n_k in another float order than the engine: equal to tolerance
    assert_runs_match(ref, tmp_path / "legacy", rtol=1e-4, atol=1e-6)

    _legacy_rounds(cfg, LegacyAuditStrategy(FedAvg(), FlowerAudit(cfg, tmp_path / "secagg")), 3, secagg_round=1)
    sig = load_signals(tmp_path / "secagg")
    assert sig.rounds.tolist() == [0, 2]  # round 1 showed only the aggregate: no per-client signals
    rows = read_metrics(tmp_path / "secagg")
    assert rows[1].get("aggregate_only") is True and "aggregate_only" not in rows[0]
    assert [r["round"] for r in rows] == [0, 1, 2]


def test_example_apps_audit_a_plain_fedavg_federation(tmp_path, monkeypatch):
    """examples/flower_digits (user-written ClientApp + FedAvg + one wrapper line): the run store holds
    exactly what the clients sent, checked against an independent recomputation from the captured messages."""
    import sys
    from pathlib import Path

    import torch.nn.functional as F

    from fedleak.signals.candidates import gather

    example = REPO / "examples" / "flower_digits"
    monkeypatch.syspath_prepend(str(example))
    from flower_digits.client_app import app as client_app
    from flower_digits.server_app import app as server_app
    from flower_digits.task import load_cfg, make_model

    cfg = load_cfg()
    K = cfg.partition.num_clients
    grid = _FakeGrid(client_app, K, seed=3)
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                  run_config={"num-server-rounds": 2, "fedleak-out": str(tmp_path / "run")})
    server_app(grid, ctx)
    for name in [m for m in sys.modules if m.split(".")[0] == "flower_digits"]:
        monkeypatch.delitem(sys.modules, name)

    sig = load_signals(tmp_path / "run")
    assert sig.rounds.tolist() == [1] and sig.participated.all()  # 2 rounds, signals.every 4: the last one
    last = [(m, r) for m, r in grid.exchanges if m.metadata.message_type == "train"][-K:]
    model = make_model(cfg)
    from fedleak.fl.federation import build_federation

    fed = build_federation(cfg)
    d = fed.data
    x, y = gather(sig.cand_ids[:50], len(d.train), d.train.x, d.train.y, d.test.x, d.test.y)
    for sent, reply in last:
        k = int(reply.content["metrics"]["partition-id"])
        g = sent.content["arrays"].to_torch_state_dict()
        up = reply.content["arrays"].to_torch_state_dict()
        dn2 = sum(float(((g[n].double() - up[n].double()) ** 2).sum()) for n in g)
        assert sig.dnorm2[0, k] == pytest.approx(dn2, rel=1e-6)
        model.load_state_dict(up)
        model.eval().double()  # float64 reference losses
        xn = d.normalize(x).double()
        with torch.no_grad():
            z = model(xn)
            loss = F.cross_entropy(z, y, reduction="none")
        # the engine's float32 logits: longest_sum-term sums, at the logits' scale, through log-softmax
        tol = rounding_tol(longest_sum(model, xn), 1 + loss + 2 * z.abs().amax(1))
        assert_within(sig.loss[0, k, :50], loss, tol, f"client {k} loss")
        model.float()
    rows = read_metrics(tmp_path / "run")
    assert [r["round"] for r in rows] == [0, 1] and rows[-1]["test_acc"] > 0.5
    assert (tmp_path / "run" / "final_model.pt").is_file()
