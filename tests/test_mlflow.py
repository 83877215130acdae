"""MLflow tracking and registry against a real tracking server (SQLite backend, local artefacts, 127.0.0.1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest

from aemodel import read_scores
from jobs import nightly, score, train
from jobs.scoring.config import ScoreOptions
from jobs.data.synthetic import LABEL, ROW_ID

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Registry copies go to a test folder, not the user's ~/.cache/aescore."""
    monkeypatch.setenv("AESCORE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def registered(mlflow_uri, mixed_data, tmp_path_factory):
    """One model trained with tracking, registered as ``ae``, aliased ``champion``."""
    from mlflow.tracking import MlflowClient

    out = tmp_path_factory.mktemp("tracked") / "model"
    cfg = train.TrainConfig(data=mixed_data["train"], out=str(out), exclude_columns=[ROW_ID, LABEL], epochs=6,
                            hidden_dims=[16], latent_dim=3, tracking_uri=mlflow_uri, register="ae")
    result = train.run(cfg)
    client = MlflowClient(mlflow_uri)
    client.set_registered_model_alias("ae", "champion", result.tracking["model_version"])
    return {"cfg": cfg, "result": result, "client": client}


def test_a_training_run_logs_options_epochs_diagnostics_and_the_artefact(registered):
    result, client = registered["result"], registered["client"]
    assert result.tracking["model_version"] == "1" and "registered: models:/ae/1" in train.format_result(result)
    run = client.get_run(result.tracking["run_id"])
    params, tags = run.data.params, run.data.tags
    assert params["latent_dim"] == "3" and params["hidden_dims"] == "[16]" and params["epochs"] == "6"
    assert tags["aescore.version"] == result.version and tags["diagnostic.overfitting"] in ("ok", "warning")
    assert run.data.metrics["threshold"] == pytest.approx(result.threshold)
    val = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in val] == [h["epoch"] for h in result.history]
    assert [m.value for m in val] == pytest.approx([h["val_loss"] for h in result.history])
    files = {a.path for a in client.list_artifacts(run.info.run_id, "aescore-model")}
    assert {"aescore-model/model.json", "aescore-model/model.safetensors", "aescore-model/_SUCCESS"} <= files
    assert "report.html" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # The same command again reuses the model and finds its MLflow run: no second run, no second version.
    again = train.run(registered["cfg"])
    assert again.reused and again.tracking["run_id"] == run.info.run_id and again.tracking["model_version"] == "1"
    runs = client.search_runs([run.info.experiment_id], "tags.`aescore.kind` = 'train'")
    assert len(runs) == 1 and len(client.search_model_versions("name = 'ae'")) == 1


def test_a_registry_alias_scores_exactly_as_the_artefact_and_survives_its_run_folder(registered, mixed_data,
                                                                                      tmp_path):
    cfg, uri = registered["cfg"], registered["cfg"].tracking_uri
    by_path = score.run(score.ScoreConfig(model=cfg.out, data=mixed_data["score"], out=str(tmp_path / "a"),
                                          id_columns=[ROW_ID]))
    by_alias = score.run(score.ScoreConfig(model="models:/ae@champion", data=mixed_data["score"],
                                           out=str(tmp_path / "b"), id_columns=[ROW_ID], tracking_uri=uri))
    a, b = (read_scores(str(tmp_path / k)).sort_values(ROW_ID).reset_index(drop=True) for k in "ab")
    assert a["anomaly_score"].tolist() == b["anomaly_score"].tolist() and len(a) == 2000
    registry = by_alias.summary["model"]["registry"]
    assert registry == {"registry_uri": "models:/ae@champion", "name": "ae", "version": "1",
                        "aescore_version": registered["result"].version}
    assert by_alias.summary["model"]["version"] == by_path.summary["model"]["version"]
    logged = registered["client"].get_run(by_alias.tracking)
    assert logged.data.metrics["row_count"] == 2000 and logged.data.tags["aescore.registry_version"] == "ae/1"
    # The run folder is replaced by a later training into the same --out: MLflow's copy serves the version.
    train.run(train.TrainConfig(**{**cfg.__dict__, "latent_dim": 2, "overwrite": True, "register": None,
                                   "tracking_uri": None}))
    by_copy = score.run(score.ScoreConfig(model="models:/ae/1", data=mixed_data["score"], out=str(tmp_path / "c"),
                                          id_columns=[ROW_ID], tracking_uri=uri))
    c = read_scores(str(tmp_path / "c")).sort_values(ROW_ID).reset_index(drop=True)
    assert c["anomaly_score"].tolist() == a["anomaly_score"].tolist()
    assert by_copy.manifest["model"]["uri"].startswith(str(tmp_path / "cache"))


def test_a_nightly_logs_its_drift_figures_and_alert(registered, mixed_data, tmp_path):
    night = tmp_path / "events" / "dt=2026-11-02"
    shutil.copytree(mixed_data["score"], night)
    cfg = nightly.NightlyConfig(model="models:/ae@champion", data=str(tmp_path / "events" / "dt={date}"),
                                out=str(tmp_path / "scores" / "dt={date}"), date="2026-11-02",
                                tracking_uri=registered["cfg"].tracking_uri, score=ScoreOptions(id_columns=[ROW_ID]))
    [result] = nightly.run(cfg)
    run = registered["client"].get_run(result.tracking)
    vs = result.drift["vs_validation"]
    assert run.data.tags["aescore.kind"] == "nightly" and run.data.tags["night"] == "2026-11-02"
    assert run.data.metrics["drift.psi"] == pytest.approx(vs["psi"]) and run.data.metrics["drift.ks"] == pytest.approx(vs["ks"])
    assert run.data.tags["alert"] == str(bool(result.drift["alerts"])).lower()
    assert any(k.startswith("column_psi.") for k in run.data.metrics)
    kept = {a.path for a in registered["client"].list_artifacts(result.tracking)}
    assert {"report.html", "summary.json", "drift.html", "drift.json"} <= kept
    assert f"mlflow: run {result.tracking}" in nightly.format_night(result)
    # The CLI, again: the night is reused and its MLflow run found, not logged twice.
    cli = subprocess.run([sys.executable, "-m", "jobs.cli", "nightly", "--model", "models:/ae@champion", "--data",
                          cfg.data, "--out", cfg.out, "--date", "2026-11-02", "--score.id-columns", ROW_ID,
                          "--tracking-uri", cfg.tracking_uri], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert "reused" in cli.stdout and f"mlflow: run {result.tracking}" in cli.stdout and "View run" not in cli.stdout
    nights = registered["client"].search_runs([run.info.experiment_id], "tags.`aescore.kind` = 'nightly'")
    assert [r.info.run_id for r in nights] == [result.tracking]


def test_a_nightly_challenger_alias_between_trials_scores_without_a_challenger(registered, mixed_data, tmp_path,
                                                                                capsys):
    """A schedule keeps --challenger models:/NAME@challenger; unset, or the champion itself, it is left out."""
    shutil.copytree(mixed_data["score"], tmp_path / "dt=2026-11-03")
    client, uri = registered["client"], registered["cfg"].tracking_uri
    cfg = nightly.NightlyConfig(model="models:/ae@champion", data=str(tmp_path / "dt={date}"),
                                out=str(tmp_path / "out" / "dt={date}"), date="2026-11-03", tracking_uri=uri,
                                score=ScoreOptions(challenger="models:/ae@challenger", reference_data="ref",
                                                   label_column=LABEL))
    pinned, _ = nightly.prepare(cfg)
    assert pinned.model == "models:/ae/1" and pinned.score.challenger is None and pinned.score.reference_data is None
    assert "warning: --challenger models:/ae@challenger: the alias names no version" in capsys.readouterr().err
    client.set_registered_model_alias("ae", "challenger", "1")
    try:
        pinned, _ = nightly.prepare(cfg)
        assert pinned.score.challenger is None and "is the model in service itself" in capsys.readouterr().err
    finally:
        client.delete_registered_model_alias("ae", "challenger")
    with pytest.raises(Exception, match="not found in the MLflow registry"):
        nightly.prepare(replace(cfg, score=ScoreOptions(challenger="models:/nope@challenger")))


def test_without_the_extra_a_tracking_uri_is_one_error_line(mixed_data, tmp_path):
    """mlflow made unimportable in a fresh process: exit 2, one line naming the extra, nothing written."""
    code = ("import sys; sys.modules['mlflow'] = None; from jobs.cli import entry; sys.argv[0] = 'aescore'; entry()")
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    res = subprocess.run([sys.executable, "-c", code, "train", "--data", mixed_data["train"], "--out",
                          str(tmp_path / "m"), "--exclude-columns", f"{ROW_ID},{LABEL}", "--tracking-uri",
                          "http://127.0.0.1:9"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: MLflow tracking (http://127.0.0.1:9, from --tracking-uri) needs the mlflow extra: "
        "pip install 'aescore[mlflow]'"]
    assert not (tmp_path / "m").exists()
    # Without a tracking URI nothing imports MLflow: the same process trains as before.
    plain = subprocess.run([sys.executable, "-c", code, "train", "--data", mixed_data["train"], "--out",
                            str(tmp_path / "m"), "--exclude-columns", f"{ROW_ID},{LABEL}", "--epochs", "2"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert plain.returncode == 0 and "trained" in plain.stdout and "mlflow" not in plain.stdout, plain.stderr


def test_a_version_fetched_by_two_processes_at_once_keeps_the_first_whole_copy(registered, monkeypatch):
    """The second download finds the first one's copy in place: it keeps it (it may be in use), never swaps it."""
    import mlflow.artifacts

    from aemodel import load_artifact
    from jobs.lifecycle import registry

    mv = registered["client"].get_model_version("ae", "1")
    final = os.path.join(registry.cache_root(), "registry", "ae", "1")
    real = mlflow.artifacts.download_artifacts

    def racing(**kwargs):  # another process renames its copy into place while this one downloads
        path = real(**kwargs)
        shutil.copytree(path, final)
        open(os.path.join(final, "in-use-by-the-other-process"), "w").close()
        return path

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", racing)
    got = registry._cached_copy(mv, registered["cfg"].tracking_uri, None, load_artifact)
    assert got == final and os.path.exists(os.path.join(final, "in-use-by-the-other-process"))
    assert load_artifact(final).version == registered["result"].version
    assert os.listdir(os.path.dirname(final)) == ["1"]  # no temporary folder left beside it
    foreign = registered["client"].create_model_version("ae", mv.source, run_id=mv.run_id)  # without aescore's tag
    with pytest.raises(Exception, match="not registered by aescore train --register"):
        registry.resolve_model(f"models:/ae/{foreign.version}", registered["cfg"].tracking_uri, None, load_artifact)
