"""The typed attack results (issue #11 item 5): metrics.json round trip, old files, the headline FPR, and the
one FedMIA options check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedleak.attacks.mia import evaluate, fedmia, fedmia_rounds, run_attacks
from fedleak.attacks.mia.evaluation import Evaluation
from fedleak.errors import FedleakError
from fedleak.fl.toy import generate_toy_run
from fedleak.metrics.roc import check_headline_fpr, roc_curve, tpr_at_fpr
from fedleak.report.outputs import _finite, _json_default
from fedleak.signals.loading import load_signals

REGRESSION = Path(__file__).resolve().parents[2] / "regression" / "data"
TOY = dict(per_client=60, n_other=40, n_test=200, n_test_cand=80, rounds=4, shift=0.4, num_clients=3)


def _text(d: dict) -> str:
    """metrics.json as attack_run writes it."""
    return json.dumps(_finite(d), indent=2, default=_json_default)


@pytest.fixture(scope="module")
def signals(tmp_path_factory):
    base = tmp_path_factory.mktemp("res")
    return (load_signals(generate_toy_run(base / "a", **TOY)),
            load_signals(generate_toy_run(base / "b", **{**TOY, "rotating": True})))


@pytest.mark.parametrize("case", ["plain", "rotating-strict", "subset-no-rounds", "headline-5%"])
def test_to_json_from_json_round_trip_is_exact(signals, case):
    a, b = signals
    ev = {"plain": lambda: evaluate(a, rotate=False),
          "rotating-strict": lambda: evaluate(b, strict=True, aggregation="stouffer"),
          "subset-no-rounds": lambda: evaluate(b, ["fedmia-ii", "grad-norm"], per_round=False, fprs=(0.01,)),
          "headline-5%": lambda: evaluate(a, ["grad-cosine", "fedmia-i"], headline_fpr=0.05)}[case]()
    text = _text(ev.to_json())
    back = Evaluation.from_json(json.loads(text))
    assert _text(back.to_json()) == text
    assert ("headline_fpr" in json.loads(text)) == (case == "headline-5%")  # only a non-default one is written
    assert [x.name for x in back.ranked()] == [x.name for x in ev.ranked()]


def test_the_regression_fixtures_metrics_read_back_unchanged():
    for case in ("plain", "dpsgd", "sparse"):
        m = json.loads((REGRESSION / case / "json.json").read_text())["attack_metrics"]
        assert _text(Evaluation.from_json(m).to_json()) == _text(m)


def test_metrics_written_before_the_intervals_and_settings_existed(signals):
    old = json.loads(_text(evaluate(signals[0], rotate=False).to_json()))
    for k in ("n_candidates", "fpr_resolution", "protocol", "fedmia_options"):
        del old[k]
    for a in old["attacks"].values():
        del a["counts"], a["ci95"]
    ev = Evaluation.from_json(old)
    assert _text(ev.to_json()) == _text(old)
    best = ev.ranked()[0]
    assert best.rate(0.001).k is None and best.auc_ci is None and ev.headline_fpr == 0.001


def test_with_headline_rereads_the_oracle_as_an_evaluation_at_that_fpr(signals):
    a = signals[0]
    ev = evaluate(a, rotate=False)
    at1 = evaluate(a, rotate=False, headline_fpr=0.01)
    assert _text(ev.with_headline(0.01).to_json()) == _text(at1.to_json())
    # the oracle at 1%: the round whose TPR@1% (computed here from the scores) is largest
    t = ev.target
    part = [int(r) for i, r in enumerate(a.rounds) if a.participated[i, t]]
    tprs = [tpr_at_fpr(*roc_curve(a.members(t), run_attacks(a, "blackbox-loss", round=r, target=t)["blackbox-loss"])[:2],
                       0.01) for r in part]
    o = at1.attacks["blackbox-loss"].oracle
    assert (o.round, o.tpr, o.fpr) == (part[int(np.argmax(tprs))], max(tprs), 0.01)
    with pytest.raises(FedleakError, match="--headline-fpr 0.05"):
        ev.with_headline(0.05)


@pytest.mark.parametrize("bad", [0, 1, -0.1, 2.0, float("nan"), float("inf"), "x", None, True])
def test_check_headline_fpr(bad):
    with pytest.raises(FedleakError, match="strictly between 0 and 1"):
        check_headline_fpr(bad)
    assert check_headline_fpr("0.01") == 0.01


@pytest.mark.parametrize("options,needle", [
    ({"ddof": -1}, "ddof must be an integer >= 0"),
    ({"eps": float("nan")}, "eps must be a finite number"),
    ({"aggregation": "median"}, "unknown FedMIA aggregation"),
    ({"outlier_filter": True, "robust": True}, "not both"),
    ({"robust": "yes"}, "robust must be true or false"),
])
def test_one_fedmia_options_check_everywhere(signals, options, needle):
    """fedmia_rounds, fedmia, run_attacks and evaluate refuse the same bad option with the same message."""
    a = signals[0]
    per_round = {k: v for k, v in options.items() if k != "aggregation"}
    calls = [lambda: fedmia(a, **options), lambda: run_attacks(a, "fedmia-ii", **options),
             lambda: evaluate(a, "fedmia-ii", **options)]
    if per_round:
        calls.append(lambda: fedmia_rounds(a, **per_round))
    for call in calls:
        with pytest.raises(FedleakError, match=needle):
            call()
