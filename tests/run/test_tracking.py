"""report_to sinks: lazily imported, a clear message when a package is missing, metrics reach each tracker."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from thinktuning import ThinkTuningTrainer, load_config
from thinktuning.config.checks import validate
from thinktuning.config.schema import ThinkTuningConfig
from thinktuning.errors import ConfigError
from thinktuning.run.tracking import Trackers, check_available


@pytest.mark.parametrize(
    ("tracker", "module", "package"),
    [("wandb", "wandb", "wandb"), ("trackio", "trackio", "trackio"),
     ("tensorboard", "torch.utils.tensorboard", "tensorboard")],
)
def test_missing_package_names_what_to_install(monkeypatch, tracker, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail as if it were not installed
    with pytest.raises(ConfigError, match=f"report_to={tracker} needs the {package} package: pip install {package}"):
        check_available([tracker])


def test_no_tracker_imports_nothing(monkeypatch):
    for module in ("wandb", "trackio", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, module, None)
    check_available([])
    Trackers([], "unused", {}).close()


def test_unknown_tracker_is_a_config_error():
    with pytest.raises(ConfigError, match="'tensorboard', 'wandb', 'trackio'"):
        load_config("cpu-demo", ["report_to=mlflow"])
    cfg = ThinkTuningConfig()
    cfg.report_to = ["mlflow"]
    with pytest.raises(ConfigError, match="allowed: tensorboard, wandb, trackio"):
        validate(cfg)
    assert load_config("cpu-demo", ["report_to=wandb,trackio"]).report_to == ["wandb", "trackio"]


def test_trainer_stops_before_loading_anything(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)
    cfg = load_config("cpu-demo", ["report_to=wandb", "model.student=/no/such/model"],
                      output_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="pip install wandb"):
        ThinkTuningTrainer(cfg)  # not ModelNotFoundError: the tracker is checked first
    assert not (tmp_path / "run").exists()


def fake_tracker(name: str) -> types.ModuleType:
    """A stand-in for wandb / trackio that records its calls."""
    mod = types.ModuleType(name)
    mod.calls = []
    mod.init = lambda **kw: mod.calls.append(("init", kw))
    mod.log = lambda data, step=None: mod.calls.append(("log", step, data))
    mod.finish = lambda: mod.calls.append(("finish",))
    return mod


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_sink_logs_numeric_metrics_by_step(monkeypatch, tmp_path, name):
    mod = fake_tracker(name)
    monkeypatch.setitem(sys.modules, name, mod)
    trackers = Trackers([name, name], tmp_path / "my-run", {"seed": 0})
    trackers.log({"step": 3, "loss": 0.5, "guidance/guided": 2, "nan": float("nan"), "text": "x", "flag": True})
    trackers.close()
    (init,), logs, finish = ([c for c in mod.calls if c[0] == k] for k in ("init", "log", "finish"))
    assert init[1]["name"] == "my-run" and init[1]["config"] == {"seed": 0}
    assert logs == [("log", 3, {"loss": 0.5, "guidance/guided": 2.0})]
    assert finish == [("finish",)]


def test_tensorboard_sink_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is not installed")
    trackers = Trackers(["tensorboard"], tmp_path, {})
    trackers.log({"step": 1, "loss": 0.5})
    trackers.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_trainer_logs_each_step_and_stays_quiet(monkeypatch, tmp_path, capsys):
    from tests.train.test_trainer import _tiny_cfg, _tiny_student
    from thinktuning.models.load import load_tokenizer
    from thinktuning.models.resolve import resolve

    student = _tiny_student(tmp_path / "student", load_tokenizer(resolve("smollm2-135m-instruct")))
    mod = fake_tracker("wandb")
    monkeypatch.setitem(sys.modules, "wandb", mod)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = _tiny_cfg(student, tmp_path / "run", ["report_to=wandb", "quiet=true"])
        cfg.max_steps = 2
        ThinkTuningTrainer(cfg).train()
    finally:
        torch.set_num_threads(threads)
    assert [c[1] for c in mod.calls if c[0] == "log"] == [1, 2]
    assert mod.calls[-1] == ("finish",)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2, out
    assert out[0].startswith("training steps 1..2 of 2") and out[1].startswith("finished step 2/2")
