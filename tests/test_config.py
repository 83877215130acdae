"""Job configs: defaults < YAML < flags, validation before Ray starts, the CLI error contract."""

import subprocess
import sys

import pytest

from jobs.config import ConfigError, config_from_mapping, field_docs, parse_config
from jobs.score import ScoreConfig
from jobs.train import TrainConfig


def test_every_field_has_a_docstring():
    for cls in (TrainConfig, ScoreConfig):
        docs = field_docs(cls)
        missing = [f for f in cls.__dataclass_fields__ if f not in docs]
        assert missing == [], f"{cls.__name__}: {missing}"


def test_yaml_then_flags(tmp_path):
    y = tmp_path / "train.yaml"
    y.write_text("data: /d\nout: /o\nepochs: 7\nhidden_dims: [32, 16]\nexclude_columns: id,label\n"
                 "column_types: {zip: categorical}\nuse-gpu: true\n")
    cfg = parse_config(TrainConfig, ["--config", str(y), "--epochs", "9", "--latent-dim", "3",
                                     "--no-use-gpu", "--feature-columns", "a,b"], prog="t")
    assert (cfg.epochs, cfg.latent_dim, cfg.use_gpu) == (9, 3, False)
    assert cfg.hidden_dims == [32, 16] and cfg.exclude_columns == ["id", "label"]
    assert cfg.feature_columns == ["a", "b"] and cfg.column_types == {"zip": "categorical"}


@pytest.mark.parametrize("overrides, message", [
    ({"latent_dim": "-1"}, "latent_dim must be >= 1"),
    ({"epochs": "two"}, "epochs: cannot read 'two' as int"),
    ({"column_types": "a=ordinal"}, "unknown column type"),
    ({"activation": "swish"}, "not one of"),
    ({"val_fraction": "1.5"}, "val_fraction"),
    ({"colour": "red"}, "unknown option 'colour'"),
])
def test_invalid_values_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config_from_mapping(TrainConfig, None, {"data": "/d", "out": "/o", **overrides})


def test_missing_required_option():
    with pytest.raises(ConfigError, match="--out"):
        config_from_mapping(TrainConfig, None, {"data": "/d"})


def test_cli_reports_one_error_line_and_exit_code_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "jobs.train", "--data", str(tmp_path), "--out", str(tmp_path / "m"),
                          "--latent-dim", "0"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: latent_dim must be >= 1, got 0"]


def test_cli_bad_paths_fail_before_ray_starts(tmp_path):
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "score", "--model", str(tmp_path / "none"),
                          "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: no complete model artefact at")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["train", "score", "nightly", "sweep", "demo", "submit"])
def test_every_subcommand_has_a_working_help(command, capsys):
    from jobs.cli import main

    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: aescore {command}")


@pytest.mark.parametrize("status, driver_code, expected", [
    ("SUCCEEDED", 0, 0), ("FAILED", 3, 3), ("FAILED", 2, 2), ("FAILED", 1, 1), ("FAILED", None, 1),
    ("FAILED", 137, 1), ("STOPPED", None, 1)])
def test_submit_exits_with_the_jobs_own_code_so_a_drift_alert_differs_from_a_crash(status, driver_code, expected):
    from jobs.submit import exit_code

    assert exit_code(status, driver_code) == expected


def test_submit_without_an_address_is_a_usage_error(monkeypatch, capsys):
    from jobs.submit import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(SystemExit) as done:
        main(["--", "python", "-m", "jobs.nightly"])
    assert done.value.code == 2 and "no cluster address" in capsys.readouterr().err
