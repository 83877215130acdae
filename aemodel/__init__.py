"""aemodel: a tabular autoencoder, its preprocessing, losses and metrics (torch only, no Ray)."""

from aemodel.artifact import ArtifactError, ModelArtifact, load_artifact, save_artifact
from aemodel.losses import batch_loss, column_losses, row_errors
from aemodel.metrics import ErrorStats, auroc, histogram_edges
from aemodel.model import AutoencoderConfig, TabularAutoencoder
from aemodel.preprocess import Preprocessor, PreprocessConfig, merge_stats, partial_stats
from aemodel.schema import ColumnSpec, SchemaError, check_schema, resolve_columns
from aemodel.scoring import RowScorer

__all__ = [
    "ArtifactError", "AutoencoderConfig", "ColumnSpec", "ErrorStats", "ModelArtifact", "PreprocessConfig",
    "Preprocessor", "RowScorer", "SchemaError", "TabularAutoencoder", "auroc", "batch_loss", "check_schema",
    "column_losses", "histogram_edges", "load_artifact", "merge_stats", "partial_stats", "resolve_columns",
    "row_errors", "save_artifact",
]
