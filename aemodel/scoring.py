"""Batch scoring with a loaded artefact: Arrow table in, per-row error arrays out."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from aemodel.artifact import ModelArtifact
from aemodel.losses import column_losses, row_errors


class RowScorer:
    """Scores tables with one model; build once per worker and reuse.

    Args:
        artifact: The loaded model artefact.
        device: Torch device to run on.
    """

    def __init__(self, artifact: ModelArtifact, device: str | torch.device = "cpu"):
        self.artifact = artifact
        self.preprocessor = artifact.preprocessor
        self.device = torch.device(device)
        self.model = artifact.build_model().to(self.device)
        self.baselines = torch.tensor(self.preprocessor.baselines, dtype=torch.float32, device=self.device)
        self.threshold = artifact.threshold_value

    def score_encoded(self, enc: dict[str, np.ndarray]) -> np.ndarray:
        """Per-row reconstruction error for an encoded batch (see ``Preprocessor.transform``)."""
        dev = self.device
        nb = dev.type == "cuda"
        t = {k: torch.from_numpy(enc[k]).to(dev, non_blocking=nb) for k in ("x_num", "x_bin", "x_cat", "observed")}
        with torch.inference_mode():
            recon = self.model(t["x_num"], t["x_bin"], t["x_cat"])
            losses = column_losses(recon, t["x_num"], t["x_bin"], t["x_cat"], self.baselines)
            err = row_errors(losses, t["observed"])
        return err.float().cpu().numpy()

    def score_table(self, table: pa.Table) -> dict[str, np.ndarray]:
        """``recon_error``, ``is_anomaly``, ``missing_cells`` and ``unseen_cells`` per row."""
        enc = self.preprocessor.transform(table)
        err = self.score_encoded(enc)
        thr = self.threshold
        return {
            "recon_error": err,
            "is_anomaly": err > thr if thr is not None else np.zeros(len(err), dtype=bool),
            "missing_cells": enc["missing_cells"],
            "unseen_cells": enc["unseen_cells"],
        }
