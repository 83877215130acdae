"""The model artefact: everything scoring needs, under one directory or object prefix.

Layout at ``MODEL_URI``::

    model.safetensors   weights (safetensors: loading never unpickles anything)
    model.json          model config, column schema, preprocessing statistics, threshold,
                        validation error distribution, training history, diagnostics, checksums
    train_rows.bloom    Bloom filter of training/validation row hashes (leakage check)
    metrics.json        training diagnostics, losses and threshold, for people (copy of model.json's)
    report.html         training report: loss curves and validation error distribution
    _SUCCESS            written last; an artefact without it is incomplete and refused

Any fsspec URI works (local path, ``file://``, ``s3://``, ``gs://``, ``memory://``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import fsspec
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from aemodel.leakage import BloomFilter
from aemodel.model import AutoencoderConfig, TabularAutoencoder
from aemodel.preprocess import Preprocessor

FORMAT = "aescore-model"
FORMAT_VERSION = 4
"""2: ``reference.latent`` (the latent term of anomaly_score; threshold on anomaly_score). Readers
of version 1 would ignore the latent term and mis-score, so an older aescore refuses these.
3: the latent term is a Gaussian mixture of several components (``aemodel.latent``); version 2
readers know only one Gaussian, so they refuse these. An artefact whose term has one
component also stores it as version 2 did and, without a marginal term (``--marginal-weight 0``),
is written as version 2, so an aescore one release older still scores it. 4: ``reference.marginal`` (the marginal term,
``aemodel.marginal``), which readers of versions 1-3 would ignore and mis-score, so they refuse
these. Versions 1, 2 and 3 load and score as they did."""
READABLE_VERSIONS = (1, 2, 3, 4)
WEIGHTS_FILE = "model.safetensors"
BLOOM_FILE = "train_rows.bloom"
META_FILE = "model.json"
METRICS_FILE = "metrics.json"
SUCCESS_FILE = "_SUCCESS"


class ArtifactError(ValueError):
    """A model artefact is missing, incomplete, tampered with or of another format."""


@dataclass
class ModelArtifact:
    """A trained model with its preprocessing and reference statistics.

    Attributes:
        model_config: Network shape.
        preprocessor: Fitted preprocessing, including the column schema.
        state_dict: Weights.
        threshold: Anomaly threshold on ``anomaly_score`` and how it was chosen.
        reference: Validation ``anomaly_score`` distribution (``ErrorStats.summary()``), per-column
            references, ``latent`` (the training codes' mixture, one Gaussian in v2 artefacts;
            absent in v1 artefacts) and ``marginal`` (the training values' counts,
            ``aemodel.marginal``; from v4).
        history: Per-epoch training and validation loss.
        train_config: The training job's config, for provenance.
        created_at: UTC ISO timestamp.
        run_id: Identity of the training run (config + input files) that produced it.
        metrics: Training diagnostics and final losses (also written as metrics.json).
        training_rows: Bloom filter of the training and validation rows' hashes.
        training_rows_info: Rows in the filter, its false-positive rate, overlap found.
        extra_files: Files for people written beside the artefact (e.g. report.html);
            not read back by ``load_artifact``.
        version: Content hash of weights and metadata, set on save/load.
    """

    model_config: AutoencoderConfig
    preprocessor: Preprocessor
    state_dict: dict[str, torch.Tensor]
    threshold: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    train_config: dict = field(default_factory=dict)
    created_at: str = ""
    run_id: str = ""
    metrics: dict = field(default_factory=dict)
    training_rows: BloomFilter | None = None
    training_rows_info: dict = field(default_factory=dict)
    extra_files: dict[str, bytes] = field(default_factory=dict)
    version: str = ""

    def build_model(self) -> TabularAutoencoder:
        """The network with its weights loaded, in eval mode."""
        model = TabularAutoencoder(self.model_config)
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()

    @property
    def threshold_value(self) -> float | None:
        return self.threshold.get("value")


def _join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name


def format_version(reference: dict) -> int:
    """The oldest format whose readers score ``reference`` right: 4 with a marginal term; else 2
    when the latent term is (also) stored as one Gaussian (``mean`` / ``whitening``) or absent, else 3."""
    if reference.get("marginal"):
        return 4
    latent = reference.get("latent")
    return 2 if not latent or "whitening" in latent else 3


def save_artifact(art: ModelArtifact, uri: str, storage_options: dict | None = None) -> str:
    """Write the artefact to ``uri`` (replacing any artefact there) and return its version."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    checked = {WEIGHTS_FILE: save_safetensors({k: v.detach().cpu().contiguous() for k, v in art.state_dict.items()})}
    if art.training_rows is not None:
        checked[BLOOM_FILE] = art.training_rows.to_bytes()
    art.created_at = art.created_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta = {
        "format": FORMAT,
        "format_version": format_version(art.reference),
        "model_config": art.model_config.to_dict(),
        "preprocessor": art.preprocessor.to_dict(),
        "threshold": art.threshold,
        "reference": art.reference,
        "history": art.history,
        "train_config": art.train_config,
        "created_at": art.created_at,
        "run_id": art.run_id,
        "metrics": art.metrics,
        "training_rows": ({**art.training_rows_info, "n_bits": art.training_rows.n_bits,
                           "n_hashes": art.training_rows.n_hashes} if art.training_rows is not None else None),
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                  for name, data in checked.items()},
    }
    body = json.dumps(meta, sort_keys=True).encode()
    art.version = hashlib.sha256(body).hexdigest()[:16]
    meta["version"] = art.version
    files = {**checked, META_FILE: json.dumps(meta, indent=2, sort_keys=True).encode(),
             METRICS_FILE: json.dumps({"version": art.version, **art.metrics, "threshold": art.threshold},
                                      indent=2).encode(),
             **art.extra_files}
    # Stage every file, then swap them in behind the _SUCCESS marker: a crash at any
    # point leaves either the old complete artefact, or none (no _SUCCESS), never a mix.
    staging = _join(path, f"_staging/{uuid.uuid4().hex[:12]}")
    fs.makedirs(staging, exist_ok=True)
    for name, data in files.items():
        with fs.open(_join(staging, name), "wb") as f:
            f.write(data)
    if fs.exists(_join(path, SUCCESS_FILE)):
        fs.rm(_join(path, SUCCESS_FILE))
    for name in dict.fromkeys([*files, BLOOM_FILE]):  # a stale filter from an older artefact must not survive
        if fs.exists(_join(path, name)):
            fs.rm(_join(path, name))
        if name in files:
            fs.mv(_join(staging, name), _join(path, name))
    with fs.open(_join(path, SUCCESS_FILE), "wb") as f:
        f.write(art.version.encode())
    if fs.exists(_join(path, "_staging")):  # object stores have no empty folders left over
        fs.rm(_join(path, "_staging"), recursive=True)
    return art.version


def load_artifact(uri: str, storage_options: dict | None = None) -> ModelArtifact:
    """Read and verify an artefact.

    Raises:
        ArtifactError: No complete artefact at ``uri``, a checksum mismatch, or an
            unknown format.
    """
    try:
        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        if not fs.exists(_join(path, SUCCESS_FILE)):
            raise ArtifactError(f"no complete model artefact at {uri} (missing {SUCCESS_FILE}; "
                                "was training interrupted, or is the path wrong?)")
        with fs.open(_join(path, META_FILE), "rb") as f:
            meta = json.loads(f.read())
        if not isinstance(meta, dict):
            raise ArtifactError(f"model artefact at {uri}: {META_FILE} holds a {type(meta).__name__}, not an "
                                "aescore model description")
        with fs.open(_join(path, WEIGHTS_FILE), "rb") as f:
            weights = f.read()
        bloom = None
        if meta.get("training_rows"):
            with fs.open(_join(path, BLOOM_FILE), "rb") as f:
                bloom = f.read()
    except FileNotFoundError as e:
        raise ArtifactError(f"model artefact at {uri} is incomplete: {e}") from e
    except json.JSONDecodeError as e:
        raise ArtifactError(f"model artefact at {uri}: {META_FILE} is not valid JSON ({e})") from e
    except IsADirectoryError as e:
        raise ArtifactError(f"model artefact at {uri} is incomplete: {e}") from e
    if meta.get("format") != FORMAT or meta.get("format_version") not in READABLE_VERSIONS:
        raise ArtifactError(f"{uri} is not an {FORMAT} artefact of a version this aescore reads "
                            f"({', '.join(f'v{v}' for v in READABLE_VERSIONS)})")
    body = json.dumps({k: v for k, v in meta.items() if k != "version"}, sort_keys=True).encode()
    if hashlib.sha256(body).hexdigest()[:16] != meta.get("version"):
        raise ArtifactError(f"model artefact at {uri}: {META_FILE} does not match its version hash "
                            "(edited or tampered)")
    for name, data in ((WEIGHTS_FILE, weights), (BLOOM_FILE, bloom)):
        if data is not None and hashlib.sha256(data).hexdigest() != meta["files"][name]["sha256"]:
            raise ArtifactError(f"model artefact at {uri}: {name} does not match its checksum "
                                "in model.json (corrupt or tampered)")
    info = dict(meta.get("training_rows") or {})
    training_rows = BloomFilter(info.pop("n_bits"), info.pop("n_hashes"), bloom) if bloom is not None else None
    try:
        state = load_safetensors(weights)
    except Exception as e:  # safetensors raises its own error types
        raise ArtifactError(f"model artefact at {uri}: cannot read {WEIGHTS_FILE}: {e}") from e
    return ModelArtifact(
        model_config=AutoencoderConfig(**meta["model_config"]),
        preprocessor=Preprocessor.from_dict(meta["preprocessor"]),
        state_dict=state,
        threshold=meta["threshold"],
        reference=meta["reference"],
        history=meta["history"],
        train_config=meta["train_config"],
        created_at=meta["created_at"],
        run_id=meta.get("run_id", ""),
        metrics=meta.get("metrics", {}),
        training_rows=training_rows,
        training_rows_info=info,
        version=meta["version"],
    )
