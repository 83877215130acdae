"""Training data without Ray: the single-machine path of ``aescore train``.

Why a second path: a model trained in the driver process (Ray Train's local mode) on one
machine needs no Ray at all, yet starting Ray and running the statistics, split and
encoding as Ray Data jobs took most of a small run's wall time (bench/train_wall.py).
Here the driver reads each file once with pyarrow, feeds the chunks to the same mergeable
statistics (``MergedAggregates`` of the aggregations the Ray path runs), splits them with
the same row-hash rule (``keep_split``) and encodes them with the same
``Preprocessor.transform``; the training loop then gets ``TensorShard`` objects in place
of Ray Data shards (Ray Train's local mode hands ``get_dataset_shard`` whatever the
trainer was given). ``tests/test_train_local.py`` compares the two paths.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import torch

from aemodel.preprocess import Preprocessor
from aemodel.schema import ColumnSpec
from aemodel.statistics import CHUNK_ROWS, TableInput, encode_tables, split_tables
from aemodel.training import tensor_batches
from jobs.data.datasets import ParquetInput

# Feature values are read as float64 or strings: about 8 bytes a value as read, and the
# encoded tensors (float32 values plus an observed mask) are about the same again.
_BYTES_PER_VALUE = 16


def input_bytes(inputs: list[ParquetInput | None], n_features: int) -> int:
    """Memory the local path needs for ``inputs`` (rows x features from the footers, no data read)."""
    return sum(d.num_rows for d in inputs if d is not None) * n_features * _BYTES_PER_VALUE


class LocalInput(TableInput):
    """An input's feature columns read once into memory, typed as the Ray path reads them."""

    def __init__(self, data: ParquetInput, specs: list[ColumnSpec]):
        names = [s.name for s in specs]
        super().__init__(t for _f, _start, t in data.iter_tables(names, specs, CHUNK_ROWS))


class TensorShard:
    """Encoded rows in memory with the part of Ray's ``DataIterator`` the training loop uses.

    ``iter_torch_batches`` yields dicts of tensors in row order, or in a seeded random
    order when ``local_shuffle_seed`` is given (a full permutation, not a buffer);
    ``load_shard`` takes the tensors as they are instead of copying them batch by batch.
    """

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    @classmethod
    def encode(cls, pp: Preprocessor, tables: Iterator[pa.Table]) -> TensorShard:
        """The model inputs of ``tables`` (``aemodel.statistics.encode_tables``)."""
        # Never empty: an input has at least one file with rows (open_parquet_input).
        return cls(encode_tables(pp, tables))

    def count(self) -> int:
        return int(self.tensors["x_num"].shape[0])

    def on(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """The tensors on ``device`` (the same tensors when they are there already)."""
        return {k: v.to(device) for k, v in self.tensors.items()}

    def iter_torch_batches(self, *, batch_size: int, device: torch.device | str | None = None,
                           prefetch_batches: int = 0, local_shuffle_buffer_size: int | None = None,
                           local_shuffle_seed: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """The training loop's own in-memory batching (``aemodel.training.tensor_batches``) over these rows."""
        del prefetch_batches, local_shuffle_buffer_size  # nothing to prefetch; shuffles fully
        return tensor_batches(self.on(torch.device(device or "cpu")), batch_size, local_shuffle_seed)


def local_shards(pp: Preprocessor, names: list[str], train: LocalInput, val: LocalInput | None,
                 val_fraction: float) -> tuple[TensorShard, TensorShard]:
    """The encoded training and validation rows: ``val``, or the row-hash split of ``train`` (``keep_split``)."""
    if val is not None:
        return TensorShard.encode(pp, train.chunks()), TensorShard.encode(pp, val.chunks())
    return (TensorShard.encode(pp, split_tables(train.chunks(), names, val_fraction, validation=False)),
            TensorShard.encode(pp, split_tables(train.chunks(), names, val_fraction, validation=True)))
