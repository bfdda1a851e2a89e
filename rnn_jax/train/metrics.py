"""Losses and metrics as weighted sums, accumulated on the device.

Every loss and metric is computed per example (<float32>[batch], Keras's mean over the
non-batch axes) and summed with the batch's weights (0 for padding rows); dividing the
accumulated sums by the accumulated weight gives Keras's epoch means over real examples.

With `num_seeds` > 1 the parameters and the accumulators carry a leading replica axis
(independent models trained together, rnn_jax.train); every replica sees the same
evaluation batches.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

LOSSES = ("mae", "mse", "bce_logits", "sparse_categorical_crossentropy")
METRICS = ("accuracy", "mae")
# A loss or metric: a name above, or a function (predictions, targets) -> <float>[batch],
# its value per example (its __name__ names it in results).
LossOrMetric = Union[str, Callable[[jax.Array, jax.Array], jax.Array]]


def name_of(loss_or_metric: LossOrMetric) -> str:
  """The key of a loss or metric in totals, histories and results.json."""
  if isinstance(loss_or_metric, str):
    return loss_or_metric
  return getattr(loss_or_metric, "__name__", None) or type(loss_or_metric).__name__


def _classes(pred: jax.Array, y: jax.Array) -> bool:
  """Whether pred holds one score per class ([..., classes]) for integer labels y [...]."""
  return pred.ndim >= 1 and pred.shape[-1] > 1 and pred.size == y.size * pred.shape[-1]


def per_example(name: LossOrMetric, pred: jax.Array, y: jax.Array) -> jax.Array:
  """The loss or metric `name` (or a function) of each example, <float32>[batch] (Keras's
  mean over the rest).

  `sparse_categorical_crossentropy` takes logits [..., classes] and integer labels [...];
  `accuracy` is binary (logits > 0 against y > 0.5) for one output per target, and the
  argmax against integer labels for one score per class.
  """
  pred = pred.astype(jnp.promote_types(pred.dtype, jnp.float32))  # bfloat16 -> float32
  if callable(name):
    values = jnp.asarray(name(pred, y), jnp.float32)
    if values.ndim == 0 or values.shape[0] != pred.shape[0]:
      raise ValueError(f"loss or metric {name_of(name)}: must return one value per example "
                       f"(<float>[{pred.shape[0]}]), got shape {values.shape}")
    return values.reshape(values.shape[0], -1).mean(axis=1)
  if name in ("sparse_categorical_crossentropy", "accuracy") and _classes(pred, y):
    labels = y.reshape(pred.shape[:-1]).astype(jnp.int32)
    values = (optax.softmax_cross_entropy_with_integer_labels(pred, labels)
              if name != "accuracy" else
              (jnp.argmax(pred, axis=-1) == labels).astype(jnp.float32))
    return values.reshape(values.shape[0], -1).mean(axis=1)
  if pred.shape != y.shape and pred.size == y.size:
    pred = pred.reshape(y.shape)  # e.g. Dense(1)'s [batch, 1] against targets [batch]
  y = y.astype(pred.dtype)
  values = {
      "mae": lambda: jnp.abs(pred - y),
      "mse": lambda: jnp.square(pred - y),
      "bce_logits": lambda: optax.sigmoid_binary_cross_entropy(pred, y),
      "accuracy": lambda: ((pred > 0) == (y > 0.5)).astype(jnp.float32),
  }.get(name)
  if values is None:
    raise ValueError(f"{name}: needs predictions [..., classes] for integer targets, got "
                     f"predictions {pred.shape} against targets {y.shape}")
  values = values()
  return values.reshape(values.shape[0], -1).mean(axis=1)


def sums(loss: LossOrMetric, metrics: Sequence[LossOrMetric], pred, y, weight) -> dict:
  """Weighted sums over a batch: {"loss", *metrics, "count"}; means come from dividing."""
  out = {name: jnp.sum(per_example(fn, pred, y) * weight)
         for name, fn in [("loss", loss), *[(name_of(m), m) for m in metrics]]}
  out["count"] = jnp.sum(weight)
  return out


def zero_totals(loss: LossOrMetric, metrics: Sequence[LossOrMetric], num_seeds: int = 1) -> dict:
  """Accumulators for an epoch (host arrays): the weighted sums, and bookkeeping of the
  train step; <[num_seeds]> each when num_seeds > 1, else scalars."""
  shape = [num_seeds] if num_seeds > 1 else []
  totals = {name: np.zeros(shape, np.float32)
            for name in ("loss", *map(name_of, metrics), "count")}
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
  return {name: float(totals[name]) / count for name in map(name_of, names)}


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
  """Names must be known; functions are taken as they are. Metric names must differ."""
  if not callable(loss) and loss not in LOSSES:
    raise ValueError(f"loss {loss!r} is not one of {LOSSES} (or a function)")
  for metric in metrics:
    if not callable(metric) and metric not in METRICS:
      raise ValueError(f"metric {metric!r} is not one of {METRICS} (or a function)")
  names = [name_of(m) for m in metrics]
  for name in names:
    if names.count(name) > 1 or name in ("loss", "count", "steps", "first_nonfinite",
                                         "grad_norm", "clipped"):
      raise ValueError(f"metric name {name!r} is taken: give each metric function its own "
                       "__name__")
