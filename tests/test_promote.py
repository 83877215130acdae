"""aescore promote: refused when worse, forced with a reason, rolled back, two at once; pointer files and MLflow."""

from __future__ import annotations

import glob
import json
import threading
import time

import pytest

from aemodel.commit import read_committed_json
from jobs import promote, score, train
from jobs.lifecycle.promotion import PointerLedger, RegistryLedger
from jobs.data.synthetic import LABEL, ROW_ID, make_mixed_table, write_shards

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def models(mixed_data, tmp_path_factory):
    """A good model, a poor one (one epoch, one latent unit), a third, and a labelled reference set."""
    root = tmp_path_factory.mktemp("promote")
    out = {}
    for name, epochs, latent in (("good", 6, 3), ("poor", 1, 1), ("other", 2, 2)):
        out[name] = str(root / name)
        train.run(train.TrainConfig(data=mixed_data["train"], out=out[name], exclude_columns=[ROW_ID, LABEL],
                                    epochs=epochs, hidden_dims=[16], latent_dim=latent))
    write_shards(make_mixed_table(1500, seed=3, anomaly_fraction=0.1, start_id=50_000), str(root / "ref"), 1)
    out["ref"] = str(root / "ref")
    return out


def _promote(capsys, *argv: str) -> tuple[int, str, str]:
    code = promote.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _pointer(path) -> str:
    return json.loads(path.read_text())["model_uri"]


def _slow_moves(monkeypatch, cls) -> None:
    """Each move waits first: two promotions at once then overlap unless the lock keeps them apart."""
    move = cls.move

    def slow(self, model):
        time.sleep(0.4)
        move(self, model)

    monkeypatch.setattr(cls, "move", slow)


def _at_once(configs: list[promote.PromoteConfig]) -> list:
    results, errors = [None] * len(configs), []

    def one(i):
        try:
            results[i] = promote.run(configs[i])
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_a_pointer_promotion_is_refused_when_worse_forced_with_a_reason_and_rolled_back(models, mixed_data,
                                                                                        tmp_path, capsys):
    pointer = tmp_path / "pub" / "CHAMPION.json"
    code, out, _ = _promote(capsys, "--to", str(pointer), "--from", models["good"])
    assert code == 0 and "first champion" in out and _pointer(pointer) == models["good"]
    # The evidence: one scoring run of both models with a labelled reference set.
    score.run(score.ScoreConfig(model=str(pointer), challenger=models["poor"], data=mixed_data["score"],
                                         out=str(tmp_path / "scores"), id_columns=[ROW_ID],
                                         reference_data=models["ref"], label_column=LABEL))
    reference = read_committed_json(str(tmp_path / "scores"), "comparison.json")["reference"]
    assert reference["challenger"]["auroc"] < reference["champion"]["auroc"] - 0.1  # the poor model is poor
    before = pointer.read_bytes()

    code, _, err = _promote(capsys, "--to", str(pointer), "--from", models["poor"], "--comparison",
                            str(tmp_path / "scores"))
    assert code == 2 and err.startswith("error: refused: the candidate ranks the reference set worse")
    assert pointer.read_bytes() == before and len(PointerLedger(str(pointer), None, None).records()) == 1
    code, _, err = _promote(capsys, "--to", str(pointer), "--from", models["poor"], "--force")
    assert code == 2 and "--force needs --reason" in err and pointer.read_bytes() == before
    code, _, err = _promote(capsys, "--to", str(pointer), "--from", models["poor"])
    assert code == 2 and "no evidence given" in err and pointer.read_bytes() == before

    code, out, _ = _promote(capsys, "--to", str(pointer), "--from", models["poor"], "--comparison",
                            str(tmp_path / "scores"), "--force", "--reason", "try the small model")
    assert code == 0 and "forced against reference AUROC" in out and _pointer(pointer) == models["poor"]
    code, out, _ = _promote(capsys, "--to", str(pointer), "--rollback", "--reason", "alerts")
    assert code == 0 and "undoes record 2" in out and _pointer(pointer) == models["good"]
    code, _, err = _promote(capsys, "--to", str(pointer), "--rollback", "--reason", "again")
    assert code == 2 and "no earlier model" in err and _pointer(pointer) == models["good"]
    code, out, _ = _promote(capsys, "--to", str(pointer), "--from", models["good"])
    assert code == 0 and "nothing changed" in out

    records = PointerLedger(str(pointer), None, None).records()
    assert [(r["seq"], r["action"], r["old"] and r["old"]["id"], r["new"]["id"]) for r in records] == [
        (1, "promote", None, models["good"]), (2, "promote", models["good"], models["poor"]),
        (3, "rollback", models["poor"], models["good"])]
    forced = records[1]
    assert forced["forced"] and forced["reason"] == "try the small model" and "@" in forced["by"]
    assert forced["evidence"]["reference"] == reference and forced["evidence"]["source"] == str(tmp_path / "scores")
    assert records[2]["undoes"] == 2 and records[2]["reason"] == "alerts"
    code, out, _ = _promote(capsys, "--to", str(pointer), "--history")
    assert code == 0 and "3 record(s)" in out and "(forced): try the small model" in out


def test_evidence_about_other_models_is_refused(models, mixed_data, tmp_path, capsys):
    pointer = tmp_path / "CHAMPION.json"
    promote.run(promote.PromoteConfig(to=str(pointer), candidate=models["good"]))
    # The comparison has the roles the other way round: it is not evidence for this promotion.
    score.run(score.ScoreConfig(model=models["poor"], challenger=models["good"], data=mixed_data["score"],
                                out=str(tmp_path / "scores"), reference_data=models["ref"], label_column=LABEL))
    code, _, err = _promote(capsys, "--to", str(pointer), "--from", models["poor"], "--comparison",
                            str(tmp_path / "scores"), "--force", "--reason", "x")
    assert code == 2 and "not the champion" in err and _pointer(pointer) == models["good"]


def test_two_pointer_promotions_at_once_leave_one_champion_and_two_records_in_order(models, tmp_path, monkeypatch):
    pointer = str(tmp_path / "CHAMPION.json")
    promote.run(promote.PromoteConfig(to=pointer, candidate=models["good"]))
    _slow_moves(monkeypatch, PointerLedger)
    _at_once([promote.PromoteConfig(to=pointer, candidate=m, force=True, reason=f"to {m}")
              for m in (models["poor"], models["other"])])
    records = PointerLedger(pointer, None, None).records()
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[2]["old"]["id"] == records[1]["new"]["id"]  # the second saw the first's result
    assert json.loads(open(pointer).read())["model_uri"] == records[2]["new"]["id"]


def test_a_promotion_killed_between_its_record_and_its_move_is_finished_by_the_next(models, tmp_path, monkeypatch,
                                                                                     capsys):
    pointer = tmp_path / "CHAMPION.json"
    promote.run(promote.PromoteConfig(to=str(pointer), candidate=models["good"]))
    move = PointerLedger.move
    monkeypatch.setattr(PointerLedger, "move", lambda self, m: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        promote.run(promote.PromoteConfig(to=str(pointer), candidate=models["poor"], force=True, reason="killed"))
    assert _pointer(pointer) == models["good"] and len(PointerLedger(str(pointer), None, None).records()) == 2
    monkeypatch.setattr(PointerLedger, "move", move)
    code, out, _ = _promote(capsys, "--to", str(pointer), "--rollback", "--reason", "undo it")
    assert code == 0 and out.startswith("finished promotion 2 first") and _pointer(pointer) == models["good"]


def test_a_file_of_the_users_at_to_is_never_overwritten(models, tmp_path, capsys):
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": true}')
    code, _, err = _promote(capsys, "--to", str(mine), "--from", models["good"])
    assert code == 2 and "not an aescore model pointer" in err and "--to" in err
    assert mine.read_text() == '{"mine": true}' and not (tmp_path / "notes.json.audit").exists()


def test_pointer_promotions_on_s3_at_once(models, bucket, monkeypatch):
    import s3fs

    pointer = f"{bucket}/models/CHAMPION.json"
    promote.run(promote.PromoteConfig(to=pointer, candidate=models["good"]))
    _slow_moves(monkeypatch, PointerLedger)
    _at_once([promote.PromoteConfig(to=pointer, candidate=m, force=True, reason="s3")
              for m in (models["poor"], models["other"])])
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    records = PointerLedger(pointer, None, None).records()
    assert [r["seq"] for r in records] == [1, 2, 3] and records[2]["old"]["id"] == records[1]["new"]["id"]
    assert json.loads(fs.cat(pointer))["model_uri"] == records[2]["new"]["id"]
    assert not fs.exists(f"{pointer}.audit/_lock")  # the lock object is gone once both finished


@pytest.fixture(scope="module")
def registry(mlflow_uri, mixed_data, tmp_path_factory):
    """``pm`` versions 1 (good), 2 (poor) and 3 in a real MLflow registry."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("registry")
    for name, epochs, latent in (("good", 6, 3), ("poor", 1, 1), ("other", 2, 2)):
        train.run(train.TrainConfig(data=mixed_data["train"], out=str(root / name), exclude_columns=[ROW_ID, LABEL],
                                    epochs=epochs, hidden_dims=[16], latent_dim=latent, tracking_uri=mlflow_uri,
                                    register="pm"))
    return MlflowClient(mlflow_uri)


def test_a_registry_alias_is_promoted_refused_forced_rolled_back_and_locked(registry, mlflow_uri, models, capsys,
                                                                              monkeypatch, tmp_path):
    monkeypatch.setenv("AESCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AESCORE_USER", "ci-bot")
    champion = lambda: registry.get_model_version_by_alias("pm", "champion").version  # noqa: E731
    code, out, _ = _promote(capsys, "--registry", mlflow_uri, "pm", "--to", "champion", "--from", "1")
    assert code == 0 and champion() == "1" and "audit record 1 by ci-bot@" in out
    registry.set_registered_model_alias("pm", "challenger", "2")
    code, _, err = _promote(capsys, "pm", "--tracking-uri", mlflow_uri, "--reference-data", models["ref"],
                            "--label-column", LABEL)
    assert code == 2 and "refused" in err and champion() == "1"
    code, out, _ = _promote(capsys, "pm", "--tracking-uri", mlflow_uri, "--reference-data", models["ref"],
                            "--label-column", LABEL, "--force", "--reason", "canary")
    assert code == 0 and champion() == "2" and "version 1 -> version 2" in out
    code, out, _ = _promote(capsys, "pm", "--tracking-uri", mlflow_uri, "--rollback", "--reason", "alerts")
    assert code == 0 and champion() == "1"

    # Two promotions at once: one after the other, the second recording the first's result.
    _slow_moves(monkeypatch, RegistryLedger)
    _at_once([promote.PromoteConfig(name="pm", tracking_uri=mlflow_uri, candidate=v, force=True, reason=v)
                for v in ("3", "challenger")])
    records = promote.run(promote.PromoteConfig(name="pm", tracking_uri=mlflow_uri, history=True)).records
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["action"] for r in records] == ["promote", "promote", "rollback", "promote", "promote"]
    assert records[4]["old"]["id"] == records[3]["new"]["id"] and champion() == records[4]["new"]["id"]
    assert records[1]["evidence"]["reference"]["rows"] == 1500 and records[1]["forced"]
    tags = registry.get_registered_model("pm").tags
    assert json.loads(tags["aescore.audit.champion.000002"])["reason"] == "canary"
    assert not registry.search_registered_models("name = 'pm.promotion-lock'")

    # A lock left by a killed promotion: waited for, then named; --break-lock removes it.
    registry.create_registered_model("pm.promotion-lock", tags={"aescore.promotion_lock": '{"by": "x"}'})
    code, _, err = _promote(capsys, "pm", "--tracking-uri", mlflow_uri, "--rollback", "--reason", "r",
                            "--wait", "0.5")
    before = champion()
    assert code == 2 and "--break-lock" in err
    code, _, _ = _promote(capsys, "pm", "--tracking-uri", mlflow_uri, "--rollback", "--reason", "r", "--break-lock")
    assert code == 0 and champion() == records[4]["old"]["id"] != before
    assert not registry.search_registered_models("name = 'pm.promotion-lock'")


def test_a_pointer_moved_outside_promote_is_recorded_and_reads_stay_read_only(models, tmp_path, capsys):
    from jobs.data.storage import publish_pointer

    pointer = tmp_path / "pub" / "CHAMPION.json"
    code, _, err = _promote(capsys, "--to", str(pointer), "--rollback", "--reason", "nothing yet")
    assert code == 2 and "none to roll back" in err and not (tmp_path / "pub").exists()  # nothing written
    code, out, _ = _promote(capsys, "--to", str(pointer), "--history")
    assert code == 0 and "no promotions recorded" in out and not (tmp_path / "pub").exists()
    promote.run(promote.PromoteConfig(to=str(pointer), candidate=models["good"]))
    # The same artefact under its run folder's path is the model in service, not a new one.
    run_folder = glob.glob(f"{models['good']}/runs/*")[0]
    code, out, _ = _promote(capsys, "--to", str(pointer), "--from", run_folder)
    assert code == 0 and "nothing changed" in out
    publish_pointer(str(pointer), models["other"], "x")  # as aescore train --publish-latest would
    code, out, _ = _promote(capsys, "--to", str(pointer), "--history")
    assert "changed outside aescore promote" in out
    code, out, _ = _promote(capsys, "--to", str(pointer), "--from", models["poor"], "--force", "--reason", "r")
    assert code == 0 and "warning: the log's last record left it at" in out
    record = PointerLedger(str(pointer), None, None).records()[-1]
    assert record["old"]["id"] == models["other"] and record["outside_change"]["log"]["id"] == models["good"]
    code, _, err = _promote(capsys, "--to", str(pointer), "--history", "--from", models["good"])
    assert code == 2 and "--history only prints" in err
