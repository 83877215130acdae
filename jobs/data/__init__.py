"""Where data lives: URIs and file systems, Parquet inputs, the run manifest, the synthetic data of the demo and benchmarks."""
