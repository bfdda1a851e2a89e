"""Data pipelines: every source hands the training loop a `Batches` (see batches.py)."""
