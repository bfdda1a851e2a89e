"""Losses and metrics as weighted sums, accumulated on the device.

Every loss and metric is computed per example (<float32>[batch], Keras's mean over the
non-batch axes) and summed with the batch's weights (0 for padding rows); dividing the
accumulated sums by the accumulated weight gives Keras's epoch means over real examples.

With `num_seeds` > 1 the parameters and the accumulators carry a leading replica axis
(independent models trained together, rnn_jax.train); every replica sees the same
evaluation batches.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

LOSSES = ("mae", "mse", "bce_logits")
METRICS = ("accuracy", "mae")


def per_example(name: str, pred: jax.Array, y: jax.Array) -> jax.Array:
  """The loss or metric `name` of each example, <float32>[batch] (Keras's mean over the rest)."""
  if pred.shape != y.shape and pred.size == y.size:
    pred = pred.reshape(y.shape)  # e.g. Dense(1)'s [batch, 1] against targets [batch]
  y = y.astype(pred.dtype)
  values = {
      "mae": lambda: jnp.abs(pred - y),
      "mse": lambda: jnp.square(pred - y),
      "bce_logits": lambda: optax.sigmoid_binary_cross_entropy(pred, y),
      "accuracy": lambda: ((pred > 0) == (y > 0.5)).astype(jnp.float32),
  }[name]()
  return values.reshape(values.shape[0], -1).mean(axis=1)


def sums(loss: str, metrics: Sequence[str], pred, y, weight) -> dict:
  """Weighted sums over a batch: {"loss", *metrics, "count"}; means come from dividing."""
  out = {name: jnp.sum(per_example(fn, pred, y) * weight)
         for name, fn in [("loss", loss), *[(m, m) for m in metrics]]}
  out["count"] = jnp.sum(weight)
  return out


def zero_totals(loss: str, metrics: Sequence[str], num_seeds: int = 1) -> dict:
  """Accumulators for an epoch (host arrays): the weighted sums, and bookkeeping of the
  train step; <[num_seeds]> each when num_seeds > 1, else scalars."""
  shape = [num_seeds] if num_seeds > 1 else []
  totals = {name: np.zeros(shape, np.float32) for name in ("loss", *metrics, "count")}
  totals["steps"] = np.zeros(shape, np.int32)            # steps taken in this epoch
  totals["first_nonfinite"] = -np.ones(shape, np.int32)  # first step with a NaN/inf loss
  totals["grad_norm"] = np.zeros(shape, np.float32)      # sum of the steps' gradient norms
  totals["clipped"] = np.zeros(shape, np.float32)        # steps whose gradient was clipped
  return totals


def step_means(totals: Mapping[str, Any], num_seeds: int) -> list:
  """Per replica: the epoch's mean global gradient norm (before clipping) and the
  fraction of steps that clipping changed."""
  steps = np.maximum(np.reshape(totals["steps"], [-1]), 1)
  norms = np.reshape(totals["grad_norm"], [-1]) / steps
  clipped = np.reshape(totals["clipped"], [-1]) / steps
  return [{"grad_norm": float(n), "clip_fraction": float(c)}
          for n, c in zip(norms[:num_seeds], clipped[:num_seeds])]


def means(totals: Mapping[str, Any], names: Sequence[str]) -> dict:
  """Host floats: each accumulated sum divided by the accumulated weight."""
  count = max(float(totals["count"]), 1e-12)
  return {name: float(totals[name]) / count for name in names}


def replica_means(totals: Mapping[str, Any], names: Sequence[str], num_seeds: int) -> list:
  """`means` of each replica: a list of `num_seeds` dicts (of one for unstacked totals)."""
  if num_seeds == 1:
    return [means(totals, names)]
  return [means({k: np.asarray(v)[r] for k, v in totals.items()}, names)
          for r in range(num_seeds)]


def with_units(values: dict, target_unit) -> dict:
  """Adds `<key>_<unit>` = value * scale for every MAE entry (e.g. mae_degC)."""
  if target_unit is None:
    return values
  unit, scale = target_unit
  out = dict(values)
  for key, value in values.items():
    if key == "mae" or key.endswith("_mae"):
      out[f"{key}_{unit}"] = value * float(scale)
  return out


def check_names(loss, metrics):
  if loss not in LOSSES:
    raise ValueError(f"loss {loss!r} is not one of {LOSSES}")
  for metric in metrics:
    if metric not in METRICS:
      raise ValueError(f"metric {metric!r} is not one of {METRICS}")
