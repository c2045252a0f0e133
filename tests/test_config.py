import pytest

from fedleak.config import ConfigError, ScheduleConfig, SignalsConfig, load_config, parse_config
from fedleak.fl.schedule import lr_at


def test_unknown_key_is_named():
    with pytest.raises(ConfigError) as e:
        parse_config({"fl": {"locl_epochs": 2}})
    msg = str(e.value)
    assert "fl.locl_epochs" in msg and "\n" not in msg


def test_bad_literal_lists_allowed_values():
    with pytest.raises(ConfigError) as e:
        parse_config({"partition": {"scheme": "pathological"}})
    assert "'iid'" in str(e.value) and "'dirichlet'" in str(e.value)


def test_target_client_out_of_range():
    with pytest.raises(ConfigError, match="target_client"):
        parse_config({"partition": {"num_clients": 3}, "candidates": {"target_client": 3}})


def test_presets_load_and_overrides(tmp_path):
    cfg = load_config("digits-quick", ["fl.rounds=7", "model.options={hidden: [8]}"])
    assert cfg.fl.rounds == 7 and cfg.model.options == {"hidden": [8]}
    with pytest.raises(ConfigError, match="not found"):
        load_config("no-such-preset")
    p = tmp_path / "bad.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


def test_every_preset_validates():
    from fedleak.config import presets_dir

    names = [p.stem for p in presets_dir().glob("*.yaml")]
    assert "digits-quick" in names
    for n in names:
        load_config(n)


def test_recorded_rounds_default_every_tenth_and_last():
    s = SignalsConfig()
    assert s.recorded_rounds(300) == [r - 1 for r in range(10, 301, 10)]
    assert s.recorded_rounds(25) == [9, 19, 24]
    assert SignalsConfig(include_first=True).recorded_rounds(20) == [0, 9, 19]
    with pytest.raises(ConfigError):
        SignalsConfig(rounds=[0, 30]).recorded_rounds(30)


@pytest.mark.parametrize("r", [0, 1, 5, 17, 29])
def test_schedules_closed_form(r):
    import math

    E, lr0 = 30, 0.1
    assert lr_at(ScheduleConfig(kind="constant"), lr0, r, E) == lr0
    assert lr_at(ScheduleConfig(kind="exponential", gamma=0.99), lr0, r, E) == pytest.approx(lr0 * 0.99**r)
    assert lr_at(ScheduleConfig(kind="cosine"), lr0, r, E) == pytest.approx(lr0 * (1 + math.cos(math.pi * r / E)) / 2)
    # the original updates after the round: iterate its update rule and compare
    lr = lr0
    for rr in range(r):
        lr = lr0 * (1 + math.cos(math.pi * rr / E)) / 2
    assert lr_at(ScheduleConfig(kind="cosine-official"), lr0, r, E) == pytest.approx(lr)
    lr = lr0
    for rr in range(r):
        if rr in (3, 17):
            lr *= 0.1
    assert lr_at(ScheduleConfig(kind="milestones", gamma=0.1, milestones=[3, 17]), lr0, r, E) == pytest.approx(lr)
