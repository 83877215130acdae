"""Many autoencoders of one shape run as one: their weights stacked, one batched matrix product per layer.

A model bank's entity models (``aemodel.bank``) share one configuration and the global
model's preprocessor. Run one at a time, each model costs a forward pass's fixed overhead
(torch calls per layer and per loss term, whatever its row count) per scored batch and per
training step; a batch of interleaved events meets hundreds of entities, each with a few
rows. Stacked, E models score (or train on) [E, P, inputs] rows, each model's rows padded
to P, with one call per layer for all of them (bench/entity_bank.py, ``scorer``).

``StackedNetwork`` is ``TabularAutoencoder.forward`` over stacked weights (its layers
walked in the template's order, its output split by the template's ``reconstruction``), and
``stacked_figures`` is ``RowScorer.row_figures`` over many models: the same loss, score,
percentile and flag functions, each model's terms stacked beside its weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aemodel.leakage import BloomFilter, contains_each
from aemodel.losses import anomaly_score, column_losses, latent_distance, row_errors
from aemodel.marginal import marginal_distance
from aemodel.metrics import histogram_arrays, stacked_percentile
from aemodel.model import AutoencoderConfig, Reconstruction, TabularAutoencoder

INPUTS = ("x_num", "x_bin", "x_cat", "observed")
PAD_ROWS = 16
"""Rows each model may be padded to without counting as waste (``padded_chunks``)."""
PAD_WASTE = 1.25
"""Most padded rows per row of a group of stacked models (``padded_chunks``)."""


class StackedNetwork:
    """E networks of one configuration as stacked tensors (each ``state_dict`` key with a leading E).

    Args:
        template: A network of the shared configuration (its layer order and output split).
        params: Its ``state_dict`` keys, each the E models' tensors stacked.
    """

    def __init__(self, template: TabularAutoencoder, params: dict[str, torch.Tensor]):
        self.template = template.eval()
        self.leaves = [(n, m) for n, m in template.named_modules() if not list(m.children())]
        self.bottleneck = max(i for i, (n, _) in enumerate(self.leaves) if n.startswith("encoder."))
        self.params = params

    @classmethod
    def of(cls, config: AutoencoderConfig, state_dicts: list[dict[str, torch.Tensor]]) -> StackedNetwork:
        """The networks of ``state_dicts`` (``TabularAutoencoder.state_dict()``), stacked."""
        template = TabularAutoencoder(config)
        return cls(template, {k: torch.stack([sd[k] for sd in state_dicts]) for k in template.state_dict()})

    def __len__(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def forward(self, rows: dict[str, torch.Tensor], padded: int, training: bool = False,
                input_noise: torch.Tensor | None = None) -> Reconstruction:
        """The models' reconstructions of their rows: ``rows`` flat, model e's at [e * padded, (e + 1) * padded)."""
        e = len(self)
        x = self.template.encode_inputs(rows["x_num"], rows["x_bin"], rows["x_cat"])
        if input_noise is not None:
            x = x + torch.randn_like(x) * input_noise
        x, z = x.view(e, padded, -1), None
        for i, (name, module) in enumerate(self.leaves):
            if isinstance(module, nn.Linear):
                x = torch.baddbmm(self.params[f"{name}.bias"].unsqueeze(1), x,
                                  self.params[f"{name}.weight"].transpose(1, 2))
            elif isinstance(module, nn.Dropout):
                x = F.dropout(x, module.p, training)
            else:
                x = module(x)
            if i == self.bottleneck:
                z = x
        return self.template.reconstruction(x.reshape(e * padded, -1), z.reshape(e * padded, -1))

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Model ``i``'s weights, as ``TabularAutoencoder.state_dict()``."""
        return {k: v[i].detach().clone() for k, v in self.params.items()}


def padded_chunks(sizes: list[int], max_cells: int = 1 << 18) -> list[list[int]]:
    """Groups of models (indices into ``sizes``, their row counts) whose rows pad to one length with little waste.

    Largest first; a model joins the open group while the group's padded rows stay within
    ``PAD_WASTE`` times its rows (or every member pads to at most ``PAD_ROWS``) and
    ``max_cells``: one entity of 60,000 rows in a batch of many small ones is not padded for
    all of them, and a few more groups (one batched call each) cost less than padding.
    """
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    out: list[list[int]] = []
    rows = 0
    for i in order:
        if out:
            group, width = out[-1], sizes[out[-1][0]]
            cells = (len(group) + 1) * max(width, 1)
            if cells <= max_cells and (width <= PAD_ROWS or cells <= PAD_WASTE * (rows + sizes[i])):
                group.append(i)
                rows += sizes[i]
                continue
        out.append([i])
        rows = sizes[i]
    return out


@dataclass
class ModelTerms:
    """What scoring needs of one model, compactly (a bank keeps one per entity it met)."""

    config: AutoencoderConfig
    state_dict: dict[str, torch.Tensor]
    loss_scales: torch.Tensor
    latent: tuple | None
    latent_weight: float
    marginal: tuple | None
    marginal_weight: float
    histogram: tuple | None
    threshold: float | None
    ref_mean: np.ndarray | None
    ref_std: np.ndarray | None
    bloom: BloomFilter | None
    shape: str = field(init=False)
    """Models of one ``shape`` stack (``__post_init__``)."""

    @classmethod
    def of(cls, scorer) -> ModelTerms:
        """The terms of a ``RowScorer`` (which derives them from its artefact)."""
        hist = scorer.validation_histogram
        weights = (scorer.model.state_dict() if scorer.model is not None else
                   {k: v.to(scorer.device) for k, v in scorer.artifact.state_dict.items()})
        return cls(scorer.artifact.model_config, weights, scorer.loss_scales, scorer.latent,
                   scorer.latent_weight, scorer.marginal, scorer.marginal_weight,
                   histogram_arrays(hist) if hist else None, scorer.threshold, scorer.ref_mean, scorer.ref_std,
                   scorer.artifact.training_rows)

    def __post_init__(self) -> None:
        # Models of one shape stack: configuration, latent mixture size, marginal table layout, weights, edges.
        self.shape = json.dumps([self.config.to_dict(), None if self.latent is None else list(self.latent[0].shape),
                           self.latent_weight, None if self.marginal is None else
                           [self.marginal[0].numel(), self.marginal[1].tolist(), *self.marginal[2:]],
                           self.marginal_weight, None if self.histogram is None else self.histogram[0].tolist()])


class ShapeStore:
    """The stacked tensors of every model of one shape met so far, one row (slot) per model.

    A batch's models are then picked with one ``index_select`` per tensor instead of being
    stacked anew from their state dicts every batch (bench/entity_bank.py, ``scorer``).
    Rows grow by doubling, so adding N models copies O(N) rows.
    """

    def __init__(self, first: ModelTerms):
        self.template = TabularAutoencoder(first.config)
        self.tensors: dict[str, torch.Tensor] = {}
        self.slots: dict[int, int] = {}
        self.kept: list[ModelTerms] = []  # keeps ids in ``slots`` unique

    @staticmethod
    def _rows(m: ModelTerms) -> dict[str, torch.Tensor]:
        rows = {f"w:{k}": v for k, v in m.state_dict.items()}
        rows["scales"] = m.loss_scales
        if m.latent is not None:
            rows.update({f"latent{j}": v for j, v in enumerate(m.latent)})
        if m.marginal is not None:
            rows["table"] = m.marginal[0]
        return rows

    def slot(self, m: ModelTerms) -> int:
        """The model's row, added on first sight."""
        if id(m) in self.slots:
            return self.slots[id(m)]
        n = len(self.kept)
        for k, v in self._rows(m).items():
            t = self.tensors.get(k)
            if t is None or t.shape[0] == n:
                grown = torch.empty((max(16, 2 * n), *v.shape), dtype=v.dtype, device=v.device)
                if t is not None:
                    grown[:n] = t
                self.tensors[k] = t = grown
            t[n] = v
        self.kept.append(m)
        self.slots[id(m)] = n
        return n

    def take(self, members: list[ModelTerms]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The members' stacked tensors, in their order, and their slots.

        The marginal tables are not copied: ``marginal_distance`` looks each row up in the
        whole ``tensors["table"]`` at its model's slot.
        """
        slots = [self.slot(m) for m in members]
        index = torch.tensor(slots, device=next(iter(self.tensors.values())).device)
        return {k: v.index_select(0, index) for k, v in self.tensors.items() if k != "table"}, index


def _padding_mask(groups: list[np.ndarray], p: int) -> np.ndarray:
    """[len(groups), p] True where a group's rows sit when each is padded to ``p`` (row-major: the groups concatenated)."""
    return np.arange(p)[None, :] < np.array([len(g) for g in groups])[:, None]


def _run(members: list[ModelTerms], groups: list[np.ndarray], enc: dict[str, np.ndarray], device: torch.device,
         store: ShapeStore, autocast: torch.dtype | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``RowScorer.errors_encoded`` of models of one shape, each on its rows: (score, err, losses) padded, flat."""
    e, p = len(members), max(len(g) for g in groups)
    index = np.zeros((e, p), dtype=np.int64)
    index[_padding_mask(groups, p)] = np.concatenate(groups)
    flat = index.ravel()
    t = {k: torch.from_numpy(enc[k][flat]).to(device) for k in INPUTS}  # padding repeats row 0, dropped later
    first, (stacked, slots) = members[0], store.take(members)
    net = StackedNetwork(store.template, {k[2:]: v for k, v in stacked.items() if k.startswith("w:")})
    with torch.inference_mode():
        with torch.autocast("cuda", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            recon = net.forward(t, p)
        if autocast is not None:
            recon = Reconstruction(recon.numeric.float(), recon.binary_logits.float(),
                                   [c.float() for c in recon.categorical_logits], recon.latent.float())
        x = (t["x_num"], t["x_bin"], t["x_cat"])
        losses = column_losses(recon, *x, stacked["scales"].repeat_interleave(p, dim=0))
        err = row_errors(losses, t["observed"])
        dist = None
        if first.latent is not None:
            dist = latent_distance(recon.latent.view(e, p, -1), *(stacked[f"latent{j}"] for j in range(4)))
            dist = dist.reshape(-1)
        rare = None
        if first.marginal is not None:
            row_tables = slots.mul(first.marginal[0].numel()).repeat_interleave(p)
            rare = marginal_distance(*x, t["observed"], store.tensors["table"].view(-1), *first.marginal[1:],
                                     row_tables=row_tables)
        score = anomaly_score(err, dist, first.latent_weight, rare, first.marginal_weight)
    return (score.float().cpu().numpy(), err.float().cpu().numpy(), losses.float().cpu().numpy())


def stacked_figures(members: list[ModelTerms], groups: list[np.ndarray], enc: dict[str, np.ndarray],
                    device: torch.device, hashes: np.ndarray | None = None, autocast: torch.dtype | None = None,
                    stores: dict[str, ShapeStore] | None = None) -> dict[str, np.ndarray]:
    """Each row of an encoded batch under its model: ``members[i]`` scores the rows ``groups[i]``.

    Returns ``RowScorer.row_figures``' arrays over the whole batch (``anomaly_score``,
    ``recon_error``, ``losses``, ``score_percentile``, ``is_anomaly``), each row's model's
    column reference (``ref_mean``, ``ref_std``: NaN without one) and, given the rows'
    ``hashes``, ``seen`` (in its model's training-row filter; False without one).
    ``stores``: each shape's ``ShapeStore``, kept by the caller across batches.
    """
    stores = {} if stores is None else stores
    n, c = len(enc["observed"]), enc["observed"].shape[1]
    which = np.empty(n, dtype=np.int64)
    which[np.concatenate(groups)] = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    out = {"anomaly_score": np.empty(n, np.float32), "recon_error": np.empty(n, np.float32),
           "losses": np.empty((n, c), np.float32)}
    by_shape: dict[str, list[int]] = {}
    for i, m in enumerate(members):
        by_shape.setdefault(m.shape, []).append(i)
    out["score_percentile"] = np.full(n, np.nan, np.float32)
    for same in by_shape.values():
        for chunk in padded_chunks([len(groups[i]) for i in same]):
            picked = [same[j] for j in chunk if len(groups[same[j]])]
            if not picked:
                continue
            store = stores.setdefault(members[picked[0]].shape, ShapeStore(members[picked[0]]))
            score, err, losses = _run([members[i] for i in picked], [groups[i] for i in picked], enc, device, store,
                                      autocast)
            rows = [groups[i] for i in picked]
            kept = np.flatnonzero(_padding_mask(rows, max(len(g) for g in rows)).ravel())
            dest = np.concatenate(rows)
            out["anomaly_score"][dest], out["recon_error"][dest], out["losses"][dest] = (score[kept], err[kept],
                                                                                          losses[kept])
        if members[same[0]].histogram is not None:  # one shape: one grid of edges
            pos = np.full(len(members), -1)
            pos[same] = np.arange(len(same))
            rows = np.flatnonzero(pos[which] >= 0)
            arrays = [members[i].histogram for i in same]
            out["score_percentile"][rows] = stacked_percentile(
                arrays[0][0], np.stack([a[1] for a in arrays]), np.array([a[2] for a in arrays]),
                np.array([a[3] for a in arrays]), pos[which[rows]], out["anomaly_score"][rows])
    score = out["anomaly_score"]
    thresholds = np.array([np.inf if m.threshold is None else m.threshold for m in members])
    out["is_anomaly"] = score > thresholds[which]
    nan = np.full(c, np.nan)
    out["ref_mean"] = np.stack([nan if m.ref_mean is None else m.ref_mean for m in members])[which]
    out["ref_std"] = np.stack([nan if m.ref_std is None else m.ref_std for m in members])[which]
    if hashes is not None:
        out["seen"] = np.zeros(n, dtype=bool)
        with_filter = [i for i, m in enumerate(members) if m.bloom is not None]
        if with_filter:
            pos = np.full(len(members), -1)
            pos[with_filter] = np.arange(len(with_filter))
            rows = np.flatnonzero(pos[which] >= 0)
            out["seen"][rows] = contains_each([members[i].bloom for i in with_filter], pos[which[rows]], hashes[rows])
    return out
