"""Models over time: MLflow tracking and registry, promotion with its ledger and evidence."""
