"""The model artefact: everything scoring needs, under one directory or object prefix.

Layout at ``MODEL_URI`` (a prefix aescore owns, committed as scores are: ``aemodel.commit``)::

    _SUCCESS                  the pointer: JSON naming the committed run folder
    runs/<run>/model.safetensors  weights (safetensors: loading never unpickles anything)
    runs/<run>/model.json     model config, column schema, preprocessing statistics, threshold,
                              validation error distribution, training history, diagnostics, checksums
    runs/<run>/train_rows.bloom   Bloom filter of training/validation row hashes (leakage check)
    runs/<run>/metrics.json   training diagnostics, losses and threshold, for people (copy of model.json's)
    runs/<run>/report.html    training report: loss curves and validation error distribution
    runs/<run>/_SUCCESS       the version, written last: a folder without it is incomplete and refused

A run folder loads on its own too, and so does the flat layout of older aescore versions
(the same files at the top, ``_SUCCESS`` holding the version).

Any fsspec URI works (local path, ``file://``, ``s3://``, ``gs://``, ``memory://``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import fsspec
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from aemodel.commit import MARKER, OutputCommit, claim_prefix, parse_pointer
from aemodel.leakage import BloomFilter
from aemodel.model import AutoencoderConfig, TabularAutoencoder
from aemodel.preprocess import Preprocessor
from aemodel.store import read_bytes, url_to_fs, write_bytes

FORMAT = "aescore-model"
FORMAT_VERSION = 5
"""2: ``reference.latent`` (the latent term of anomaly_score; threshold on anomaly_score). Readers
of version 1 would ignore the latent term and mis-score, so an older aescore refuses these.
3: the latent term is a Gaussian mixture of several components (``aemodel.latent``); version 2
readers know only one Gaussian, so they refuse these. An artefact whose term has one
component also stores it as version 2 did and, without a marginal term (``--marginal-weight 0``),
is written as version 2, so an aescore one release older still scores it. 4: ``reference.marginal`` (the marginal term,
``aemodel.marginal``), which readers of versions 1-3 would ignore and mis-score, so they refuse
these. 5: a model bank (``bank``: one model per entity beside this global one, ``aemodel.bank``);
readers of versions 1-4 would score every row with the global model, so they refuse these.
Versions 1, 2, 3 and 4 load and score as they did."""
READABLE_VERSIONS = (1, 2, 3, 4, 5)
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
        location: The committed folder it was read from or written to (its report.html is there).
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
    location: str = ""
    bank: dict | None = None
    """A model bank's entity columns and index checksum (``aemodel.bank``); None for one model."""

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


def format_version(reference: dict, bank: dict | None = None) -> int:
    """The oldest format whose readers score right: 5 for a bank; 4 with a marginal term; else 2
    when the latent term is (also) stored as one Gaussian (``mean`` / ``whitening``) or absent, else 3."""
    if bank:
        return 5
    if reference.get("marginal"):
        return 4
    latent = reference.get("latent")
    return 2 if not latent or "whitening" in latent else 3


def _artifact_files(art: ModelArtifact) -> dict[str, bytes]:
    """Every file of the artefact, ``model.json`` with its checksums; sets ``art.version`` (its content hash)."""
    checked = {WEIGHTS_FILE: save_safetensors({k: v.detach().cpu().contiguous() for k, v in art.state_dict.items()})}
    if art.training_rows is not None:
        checked[BLOOM_FILE] = art.training_rows.to_bytes()
    art.created_at = art.created_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta = {
        "format": FORMAT,
        "format_version": format_version(art.reference, art.bank),
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
    if art.bank:
        meta["bank"] = art.bank
    body = json.dumps(meta, sort_keys=True).encode()
    art.version = hashlib.sha256(body).hexdigest()[:16]
    meta["version"] = art.version
    return {**checked, META_FILE: json.dumps(meta, indent=2, sort_keys=True).encode(),
            METRICS_FILE: json.dumps({"version": art.version, **art.metrics, "threshold": art.threshold},
                                     indent=2).encode(),
            **art.extra_files}


def flat_layout_files(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """The files of an artefact of the flat layout (before run folders) at the top of ``path``; empty if none.

    That layout kept the artefact's files at the top with ``_SUCCESS`` holding its
    version; a commit into such a prefix deletes exactly these names after its pointer swap.
    """
    if parse_pointer(read_bytes(fs, _join(path, SUCCESS_FILE))) is not None or not fs.exists(_join(path, META_FILE)):
        return []
    return [WEIGHTS_FILE, BLOOM_FILE, META_FILE, METRICS_FILE, "report.html"]


def check_model_prefix(uri: str, storage_options: dict | None = None) -> bool:
    """Check, before training, that a model may be committed at ``uri``; True if one is committed there.

    Raises:
        OutputError: ``uri`` is a file, holds another kind of aescore output, or holds
            files aescore did not write (a model committed by an older aescore, without the
            marker, is accepted).
    """
    fs, path = url_to_fs(uri, storage_options)
    committed = fs.exists(_join(path, SUCCESS_FILE))
    # claim_prefix first refuses a file or another kind's marker (a scores folder is named as
    # such, never loaded as a broken model); the marker is written later, with the artefact.
    # An unmarked folder is adopted only if it holds a model (a Spark output has _SUCCESS too).
    claim_prefix(uri, "model", storage_options, adopt=committed and bool(flat_layout_files(fs, path)), write=False)
    return committed


def save_artifact(art: ModelArtifact, uri: str, storage_options: dict | None = None,
                  commit: OutputCommit | None = None) -> str:
    """Commit the artefact at ``uri`` and return its version (``aemodel.commit``'s protocol).

    Every file goes into a new run folder, ``_SUCCESS`` (the version) last; then one swap of
    ``uri/_SUCCESS`` makes it the committed artefact. A crash at any point leaves the old
    artefact or the new one, never a mix; two writers at once: one wins, the other gets
    an ``OutputError``. The clean-up's warnings are in ``commit.warnings``.

    Args:
        art: The artefact; ``version``, ``created_at`` and ``location`` are set.
        uri: The model prefix (a folder aescore owns).
        storage_options: fsspec options.
        commit: A commit that observed the prefix earlier (training decides what it replaces
            before it trains); default: a new one, replacing whatever is committed now.

    Raises:
        OutputError: The prefix is not aescore's, or another run committed there first.
    """
    out = commit or OutputCommit(uri, storage_options, kind="model")
    try:
        if not out.begun:  # a bank's entity models were written into the run folder already
            out.begin(adopt=bool(flat_layout_files(out.fs, out.path)))
        files = _artifact_files(art)
        for name, data in files.items():
            write_bytes(out.fs, out.path_of(name), data)
        write_bytes(out.fs, out.path_of(SUCCESS_FILE), art.version.encode())  # the folder alone loads too
        out.replaces = flat_layout_files(out.fs, out.path)
        out.commit({}, art.run_id, mark=False, version=art.version)
    except BaseException:
        with contextlib.suppress(Exception):
            out.abort()
        raise
    art.location = out.run_uri
    return art.version


def _output_kind(uri: str, storage_options: dict | None) -> str | None:
    """The kind in ``uri``'s ownership marker (``aemodel.commit``), or None without one."""
    fs, path = url_to_fs(uri, storage_options)
    try:
        marker = json.loads(read_bytes(fs, _join(path, MARKER)) or b"null")
    except (ValueError, OSError):
        return None
    return marker.get("kind") if isinstance(marker, dict) else None


def artifact_folder(uri: str, storage_options: dict | None = None) -> str | None:
    """Where the committed artefact at ``uri`` lives: the run folder its pointer names, ``uri``
    itself for the flat layout (and for a run folder given directly), None if nothing is committed."""
    fs, path = url_to_fs(uri, storage_options)
    data = read_bytes(fs, _join(path, SUCCESS_FILE))
    if data is None:
        return None
    pointer = parse_pointer(data)
    return _join(uri, pointer["run"]) if pointer else uri


def load_artifact(uri: str, storage_options: dict | None = None) -> ModelArtifact:
    """Read and verify an artefact.

    Raises:
        ArtifactError: No complete artefact at ``uri``, a checksum mismatch, or an
            unknown format.
    """
    try:
        folder = artifact_folder(uri, storage_options)
        fs, path = url_to_fs(folder or uri, storage_options)
        kind = _output_kind(uri, storage_options)
        if kind not in (None, "model"):  # a scores output, a sweep: say so rather than "incomplete"
            raise ArtifactError(f"{uri} holds aescore {kind} output, not a model artefact; --model takes the --out "
                                "of aescore train (or a pointer file to one)")
        if folder is None or not fs.exists(_join(path, SUCCESS_FILE)):
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
    except (IsADirectoryError, NotADirectoryError) as e:
        raise ArtifactError(f"model artefact at {uri} is incomplete: {e}") from e
    except PermissionError as e:  # S3's 403 names no path
        raise ArtifactError(f"model artefact at {uri}: access denied ({e}); check the credentials for this "
                            "location") from e
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
        location=folder,
        bank=meta.get("bank"),
    )
