"""A tabular autoencoder: an MLP encoder/decoder with one output head per column kind."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

Activation = Literal["relu", "gelu", "silu", "tanh"]
_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


@dataclass
class AutoencoderConfig:
    """Shape of the network; saved in the model artefact beside the weights."""

    n_numeric: int
    """Number of numeric input columns."""
    n_binary: int
    """Number of binary input columns."""
    category_sizes: list[int] = field(default_factory=list)
    """Vocabulary size (including <other>) of each categorical column."""
    hidden_dims: list[int] = field(default_factory=lambda: [64, 32])
    """Widths of the encoder's hidden layers; the decoder mirrors them."""
    latent_dim: int = 8
    """Width of the bottleneck."""
    activation: Activation = "tanh"
    """Non-linearity between layers (tanh: bounded, so extreme inputs reconstruct badly)."""
    dropout: float = 0.0
    """Dropout after each hidden layer (training only)."""

    def __post_init__(self) -> None:
        if self.n_numeric < 0 or self.n_binary < 0 or any(k < 2 for k in self.category_sizes):
            raise ValueError("column counts must be >= 0 and vocabularies >= 2 entries")
        if self.n_numeric + self.n_binary + len(self.category_sizes) == 0:
            raise ValueError("the model needs at least one input column")
        if self.latent_dim < 1 or any(h < 1 for h in self.hidden_dims):
            raise ValueError(f"latent_dim and hidden_dims must be >= 1, got {self.latent_dim}, {self.hidden_dims}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def n_columns(self) -> int:
        return self.n_numeric + self.n_binary + len(self.category_sizes)

    @property
    def input_dim(self) -> int:
        """Numeric and binary values plus one-hot categories."""
        return self.n_numeric + self.n_binary + sum(self.category_sizes)

    def to_dict(self) -> dict:
        return asdict(self)


def _mlp(dims: list[int], activation: str, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:  # no activation on the bottleneck or the output
            layers.append(_ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class Reconstruction(NamedTuple):
    """Decoder outputs per column kind (a NamedTuple so DDP and pytrees see the tensors)."""

    numeric: torch.Tensor
    """[B, n_numeric] predicted standardised values."""
    binary_logits: torch.Tensor
    """[B, n_binary] logits of P(value == 1)."""
    categorical_logits: list[torch.Tensor]
    """One [B, vocab_size] logit tensor per categorical column."""
    latent: torch.Tensor | None = None
    """[B, latent_dim] the rows' codes (the bottleneck's output)."""


class TabularAutoencoder(nn.Module):
    """MLP autoencoder over standardised numerics, 0/1 binaries and one-hot categories."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        dims = [config.input_dim, *config.hidden_dims, config.latent_dim]
        self.encoder = _mlp(dims, config.activation, config.dropout)
        # Decoder: latent -> mirrored hidden layers (each activated); the linear head
        # then emits every column's output (values, logits) from the last hidden layer.
        dec_dims = [config.latent_dim, *config.hidden_dims[::-1]]
        self.decoder = nn.Sequential(*(
            [_mlp(dec_dims, config.activation, config.dropout), _ACTIVATIONS[config.activation]()]
            if config.hidden_dims else []))
        self.head = nn.Linear(dec_dims[-1], config.input_dim)

    def encode_inputs(self, x_num: torch.Tensor, x_bin: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        parts = [x_num, x_bin]
        parts += [F.one_hot(x_cat[:, i], k).to(x_num.dtype) for i, k in enumerate(self.config.category_sizes)]
        return torch.cat(parts, dim=1)

    def encode(self, x_num: torch.Tensor, x_bin: torch.Tensor, x_cat: torch.Tensor,
               input_noise: torch.Tensor | None = None) -> torch.Tensor:
        """[B, latent_dim] codes of encoded rows; with ``input_noise`` ([input_dim] standard deviations),
        of a noisy copy of them (denoising training, ``aemodel.denoise``)."""
        inputs = self.encode_inputs(x_num, x_bin, x_cat)
        if input_noise is not None:
            inputs = inputs + torch.randn_like(inputs) * input_noise
        return self.encoder(inputs)

    def forward(self, x_num: torch.Tensor, x_bin: torch.Tensor, x_cat: torch.Tensor,
                input_noise: torch.Tensor | None = None) -> Reconstruction:
        z = self.encode(x_num, x_bin, x_cat, input_noise)
        return self.reconstruction(self.head(self.decoder(z)), z)

    def reconstruction(self, out: torch.Tensor, z: torch.Tensor) -> Reconstruction:
        """The head's [B, input_dim] output split per column kind (``aemodel.stack`` calls it on stacked rows)."""
        c = self.config
        num, rest = out.split([c.n_numeric, out.shape[1] - c.n_numeric], dim=1)
        bins, cats = rest.split([c.n_binary, rest.shape[1] - c.n_binary], dim=1)
        cat_logits = list(cats.split(c.category_sizes, dim=1)) if c.category_sizes else []
        return Reconstruction(numeric=num, binary_logits=bins, categorical_logits=cat_logits, latent=z)
