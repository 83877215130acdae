"""Nothing loaded from storage is unpickled; planted pickles are refused without running."""

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from aemodel import ArtifactError, load_artifact
from aemodel.artifact import artifact_folder


class _Exploit:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _retag(model_dir):
    """An attacker who can rewrite model.json too: make checksum and version match."""
    meta = json.loads((model_dir / "model.json").read_text())
    data = (model_dir / "model.safetensors").read_bytes()
    meta["files"]["model.safetensors"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    body = json.dumps({k: v for k, v in meta.items() if k != "version"}, sort_keys=True).encode()
    meta["version"] = hashlib.sha256(body).hexdigest()[:16]
    (model_dir / "model.json").write_text(json.dumps(meta))


def test_pickle_planted_as_weights_is_refused_and_never_runs(trained, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(trained.model_uri, copy)
    model = Path(artifact_folder(str(copy)))
    marker = tmp_path / "pwned"
    (model / "model.safetensors").write_bytes(pickle.dumps(_Exploit(str(marker))))
    _retag(model)
    with pytest.raises(ArtifactError, match="cannot read model.safetensors"):
        load_artifact(str(copy))
    assert not marker.exists()


def test_pickle_planted_as_training_checkpoint_is_refused(tmp_path):
    """Checkpoints are read with torch.load(weights_only=True): code in them never runs."""
    from jobs.training.result import final_checkpoint
    from ray.train import Checkpoint

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"model": _Exploit(str(marker))}, ckpt / "state.pt")
    (ckpt / "reference.json").write_text("{}")
    (ckpt / "threshold.json").write_text("{}")
    with pytest.raises(pickle.UnpicklingError):
        final_checkpoint(SimpleNamespace(checkpoint=Checkpoint.from_directory(str(ckpt))))
    assert not marker.exists()
