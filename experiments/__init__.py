"""Experiments: thin, declarative modules (flags, models, data) over `rnn_jax.train.fit`.

Run one with `./run.sh NAME --flags` or `python -m experiments.NAME --flags`.
"""
