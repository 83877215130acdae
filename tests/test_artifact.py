"""The model artefact round-trips and refuses incomplete or tampered copies."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from aemodel import (ArtifactError, AutoencoderConfig, ModelArtifact, Preprocessor, RowScorer, load_artifact,
                     partial_stats, resolve_columns, save_artifact)


def _artifact():
    rng = np.random.default_rng(0)
    t = pa.table({"a": rng.normal(size=100), "b": rng.random(100) < 0.5, "c": rng.choice(["x", "y"], 100)})
    specs = resolve_columns(t.schema)
    pp = Preprocessor.fit(specs, partial_stats(t, specs))
    cfg = AutoencoderConfig(n_numeric=1, n_binary=1, category_sizes=pp.category_sizes, hidden_dims=[8], latent_dim=2)
    torch.manual_seed(0)
    from aemodel import TabularAutoencoder
    art = ModelArtifact(model_config=cfg, preprocessor=pp, state_dict=TabularAutoencoder(cfg).state_dict(),
                        threshold={"value": 1.5, "method": "validation_quantile", "quantile": 0.99},
                        history=[{"epoch": 0, "train_loss": 1.0, "val_loss": 1.1}])
    return art, t


@pytest.mark.parametrize("scheme", ["local", "memory"])
def test_round_trip_scores_identically(tmp_path, scheme):
    art, t = _artifact()
    uri = str(tmp_path / "m") if scheme == "local" else f"memory://models/{tmp_path.name}"
    version = save_artifact(art, uri)
    loaded = load_artifact(uri)
    assert loaded.version == version and loaded.threshold_value == 1.5
    assert loaded.preprocessor.to_dict() == art.preprocessor.to_dict()
    assert np.array_equal(RowScorer(art).score_table(t)["recon_error"], RowScorer(loaded).score_table(t)["recon_error"])


@pytest.mark.parametrize("which", ["pointer", "run folder"])
def test_missing_success_marker_is_refused(tmp_path, which):
    art, _ = _artifact()
    save_artifact(art, str(tmp_path / "m"))
    (tmp_path / "m" / "_SUCCESS" if which == "pointer" else Path(art.location) / "_SUCCESS").unlink()
    with pytest.raises(ArtifactError, match="missing _SUCCESS"):
        load_artifact(str(tmp_path / "m"))


def test_the_committed_folder_and_the_flat_layout_of_older_versions_load(tmp_path):
    art, t = _artifact()
    version = save_artifact(art, str(tmp_path / "m"))
    assert load_artifact(art.location).version == version  # a run folder loads on its own
    flat = tmp_path / "flat"  # the layout before run folders: the files at the top, _SUCCESS holds the version
    shutil.copytree(art.location, flat)
    (flat / "_attempt.json").unlink()
    assert load_artifact(str(flat)).version == version
    (flat / "notes.txt").write_text("a user's file beside an old artefact")
    art.created_at = ""
    save_artifact(art, str(flat))  # committed over it: the old files go, the user's stays
    assert sorted(p.name for p in flat.iterdir()) == ["_SUCCESS", "_aescore.json", "_commit.lock", "notes.txt", "runs"]
    assert np.array_equal(RowScorer(load_artifact(str(flat))).score_table(t)["recon_error"],
                          RowScorer(art).score_table(t)["recon_error"])


def test_tampered_weights_are_refused(tmp_path):
    art, _ = _artifact()
    save_artifact(art, str(tmp_path / "m"))
    w = Path(art.location) / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its checksum"):
        load_artifact(str(tmp_path / "m"))


def test_edited_metadata_is_refused(tmp_path):
    art, _ = _artifact()
    save_artifact(art, str(tmp_path / "m"))
    meta_path = Path(art.location) / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["threshold"]["value"] = 99.0
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="version hash"):
        load_artifact(str(tmp_path / "m"))


def test_pickled_weights_are_never_loaded(tmp_path):
    """A pickle planted as the weights file fails the checksum and is never unpickled."""
    art, _ = _artifact()
    save_artifact(art, str(tmp_path / "m"))
    torch.save({"x": torch.zeros(1)}, Path(art.location) / "model.safetensors")
    with pytest.raises(ArtifactError):
        load_artifact(str(tmp_path / "m"))
