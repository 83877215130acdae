"""Job configs: defaults < YAML < flags, validation before Ray starts, the CLI error contract."""

import subprocess
import sys

import pytest

from jobs.runtime.config import ConfigError, build_parser, normalize_argv, flag_kinds, parse_config
from jobs.nightly import NightlyConfig
from jobs.score import ScoreConfig
from jobs.sweep import SweepConfig
from jobs.train import TrainConfig

JOBS = (TrainConfig, ScoreConfig, NightlyConfig, SweepConfig)


@pytest.mark.parametrize("cls", JOBS, ids=lambda c: c.__name__)
def test_every_option_has_help_text(cls):
    parser = build_parser(cls, "t")
    options = [a for a in parser._actions if a.option_strings and a.dest not in ("help", "config", "print_config")]
    assert options
    # jsonargparse builds the help from each field's attribute docstring; a field without
    # one shows only its type and default.
    assert [a.dest for a in options if not (a.help or "").strip() or (a.help or "").startswith("(type")] == []


def test_yaml_then_flags(tmp_path):
    y = tmp_path / "train.yaml"
    y.write_text("data: /d\nout: /o\nepochs: 7\nhidden_dims: [32, 16]\nexclude_columns: [id, label]\n"
                 "column_types: {zip: categorical}\nuse_gpu: true\n")
    cfg = parse_config(TrainConfig, ["--config", str(y), "--epochs", "9", "--latent-dim", "3",
                                     "--no-use-gpu", "--feature-columns", "a,b"], prog="t")
    assert (cfg.epochs, cfg.latent_dim, cfg.use_gpu) == (9, 3, False)
    assert cfg.hidden_dims == [32, 16] and cfg.exclude_columns == ["id", "label"]
    assert cfg.feature_columns == ["a", "b"] and cfg.column_types == {"zip": "categorical"}


def test_jsonargparse_spellings_and_the_older_ones_agree():
    ours = parse_config(TrainConfig, ["--data", "/d", "--out", "/o", "--use-gpu", "--exclude-columns", "a,b",
                                      "--column-types", "z=categorical", "--in-process", "--no-materialize"], "t")
    theirs = parse_config(TrainConfig, ["--data=/d", "--out=/o", "--use_gpu", "true", "--exclude_columns", "[a, b]",
                                        "--column_types", "{z: categorical}", "--in_process=true",
                                        "--materialize=false"], "t")
    assert ours == theirs and ours.use_gpu and ours.in_process and not ours.materialize
    assert normalize_argv(["--score.top-k", "2", "--score.use-gpu", "--x-y", "a,b"], flag_kinds(NightlyConfig)) == \
        ["--score.top_k", "2", "--score.use_gpu=true", "--x_y", "a,b"]


def test_nightly_holds_a_score_config_and_sweep_a_train_template(tmp_path):
    y = tmp_path / "nightly.yaml"
    y.write_text("model: m\ndata: 'in/{date}'\nout: 'out/{date}'\nscore: {top_k: 0, precision: bf16}\n")
    n = parse_config(NightlyConfig, ["--config", str(y), "--score.id-columns", "event_id", "--score.top_k", "1"], "t")
    assert (n.score.top_k, n.score.precision, n.score.id_columns) == (1, "bf16", ["event_id"])
    s = parse_config(SweepConfig, ["--data", "d", "--out", "o", "--latent", "2,4", "--train.epochs", "3",
                                   "--train.latent-weight", "0"], "t")
    assert s.latent == [2, 4] and s.train.cpus_per_worker == 0.5  # the sweep's own default for its template
    trial = s.train_config(4)
    assert (trial.data, trial.latent_dim, trial.epochs, trial.latent_weight, trial.in_process) == ("d", 4, 3, 0.0, False)
    assert trial.out.endswith("latent-4")
    with pytest.raises(ConfigError, match="--train.latent-dim cannot be set in a sweep"):
        parse_config(SweepConfig, ["--data", "d", "--out", "o", "--train.latent_dim", "3"], "t")


def test_sweep_help_leaves_out_the_options_it_refuses():
    """A flag the sweep decides itself is refused with its reason, and --help does not offer it."""
    text = build_parser(SweepConfig, "t").format_help()
    # Common training options are listed (dashed), the advanced ones left to aescore train --help; both parse.
    assert "--train.epochs" in text and "--train.latent-weight" not in text and "aescore train --help" in text
    assert parse_config(SweepConfig, ["--data", "d", "--out", "o", "--train.latent-weight", "0.2"],
                        "t").train.latent_weight == 0.2
    for name, why in SweepConfig.REFUSED_OPTIONS.items():
        assert f"--{name.replace('_', '-')}" not in text
        value = "x" if name == "train.run_name" else "3" if name == "train.latent_dim" else "true"
        with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} cannot be set in a sweep: {why}"):
            parse_config(SweepConfig, ["--data", "d", "--out", "o", f"--{name}", value], "t")


@pytest.mark.parametrize("flags, message", [
    (["--latent-dim", "-1"], "--latent-dim must be >= 1"),
    (["--epochs", "two"], "--epochs: expected int"),
    (["--column-types", "a=ordinal"], "unknown column type"),
    (["--activation", "swish"], "one of"),
    (["--val-fraction", "1.5"], "--val-fraction must be in"),
    (["--marginal-weight", "-0.5"], "--marginal-weight must be >= 0"),
    (["--latent-weight", "-1"], "--latent-weight must be >= 0"),
    (["--colour", "red"], "unrecognized arguments: --colour"),
    (["--bogus-flag", "1"], "unrecognized arguments: --bogus-flag 1"),
    (["--storage-options", "s3cr3t"], "key=value"),
])
def test_invalid_values_are_rejected(flags, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_config(TrainConfig, ["--data", "/d", "--out", "/o", *flags], "t")
    assert "s3cr3t" not in str(e.value)


def test_missing_required_option():
    with pytest.raises(ConfigError, match="required: --out"):
        parse_config(TrainConfig, ["--data", "/d"], "t")


def test_print_config_round_trips_through_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        parse_config(NightlyConfig, ["--model", "m", "--data", "{date}", "--out", "o/{date}", "--score.top-k", "5",
                                     "--print-config"], "t")
    assert done.value.code == 0
    (tmp_path / "c.yaml").write_text(capsys.readouterr().out)
    assert parse_config(NightlyConfig, ["--config", str(tmp_path / "c.yaml")], "t").score.top_k == 5


def test_version():
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "aescore 0.1.0"


def test_cli_reports_one_error_line_and_exit_code_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "jobs.train", "--data", str(tmp_path), "--out", str(tmp_path / "m"),
                          "--latent-dim", "0"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: --latent-dim must be >= 1, got 0"]


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
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith("error: no cluster address") and len(err.splitlines()) == 1


def test_submit_to_an_unreachable_cluster_is_an_outage_not_bad_input(capsys):
    """Exit 1 (a scheduler retries), not 2 (bad input), in one line."""
    from jobs.submit import main

    assert main(["--address", "http://127.0.0.1:9", "--", "python", "-m", "jobs.nightly"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not reach the cluster at http://127.0.0.1:9") and len(err.splitlines()) == 1


def test_print_config_never_shows_storage_option_values(tmp_path, capsys):
    """The options' help promises storage options are never written out; --print_config keeps only their keys."""
    from jobs.scoring.config import ScoreConfig

    (tmp_path / "c.yaml").write_text("storage_options:\n  secret: from-file\n")
    with pytest.raises(SystemExit) as done:
        parse_config(ScoreConfig, ["--config", str(tmp_path / "c.yaml"), "--model", "m", "--data", "d", "--out", "o",
                                   "--storage-options", "key=AKIA123", "--print-config"], "t")
    out = capsys.readouterr().out
    assert done.value.code == 0 and "AKIA123" not in out and "from-file" not in out
    assert "key: <redacted>" in out and "model: m" in out
    with pytest.raises(SystemExit):  # nested: a nightly's score options
        parse_config(NightlyConfig, ["--model", "m", "--data", "d", "--out", "o", "--score.storage-options",
                                     "secret=s3", "--print-config"], "t")
    assert "s3" not in capsys.readouterr().out.replace("s3://", "")
    with pytest.raises(SystemExit) as done:  # a template needs none of the required options
        parse_config(ScoreConfig, ["--print-config"], "t")
    assert done.value.code == 0 and "model: null" in capsys.readouterr().out


@pytest.mark.parametrize("ids, extra, clash", [(["event_id", "anomaly_score"], [], "anomaly_score"),
                                                (["err_amount"], ["--column-errors"], "err_amount")])
def test_an_id_column_named_like_an_output_column_is_refused(ids, extra, clash):
    """Otherwise the computed column silently replaces the user's ids in the rows file."""
    with pytest.raises(ConfigError, match=f"id column '{clash}' has the name of a column aescore writes"):
        parse_config(ScoreConfig, ["--model", "m", "--data", "d", "--out", "o", "--id-columns", ",".join(ids), *extra],
                     "t")
    assert parse_config(ScoreConfig, ["--model", "m", "--data", "d", "--out", "o", "--id-columns", "err_amount"],
                        "t").id_columns == ["err_amount"]  # no err_ columns are written without --column-errors
