"""Losses and metrics as weighted sums, accumulated on the device, and evaluation.

Every loss and metric is computed per example (<float32>[batch], Keras's mean over the
non-batch axes) and summed with the batch's weights (0 for padding rows); dividing the
accumulated sums by the accumulated weight gives Keras's epoch means over real examples.

With `num_seeds` > 1 the parameters and the accumulators carry a leading replica axis
(independent models trained together, rnn_jax.train); every replica sees the same
evaluation batches.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rnn_jax import distributed

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
  return totals


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


def make_eval_step(apply_fn: Callable, loss: str, metrics: Sequence[str], mesh: Mesh,
                   num_seeds: int = 1):
  """(params, totals, x, y, weight) -> totals + the batch's sums; x, y, weight sharded.

  With num_seeds > 1, params and totals have a leading replica axis and every replica
  evaluates the same batch (vmapped inside the one compiled step).
  """
  replicas = distributed.replica_sharding(mesh, num_seeds)
  data = NamedSharding(mesh, PartitionSpec("data"))

  def eval_step(params, totals, x, y, weight):
    batch = sums(loss, metrics, apply_fn(params, x), y, weight)
    return {k: totals[k] + batch[k] if k in batch else totals[k] for k in totals}

  if num_seeds > 1:
    eval_step = jax.vmap(eval_step, in_axes=(0, 0, None, None, None))
  if not distributed.adds_by_copies(mesh):
    return jax.jit(eval_step, in_shardings=(replicas, replicas, data, data, data),
                   out_shardings=replicas, donate_argnums=(1,))
  # Several CPU devices: each keeps its own totals <[1, ...]>, added up on the host
  # (`run_eval`), as XLA's all-reduce there can deadlock (distributed.adds_by_copies).
  per_device = PartitionSpec("data", *replicas.spec)
  own_rows = lambda p, totals, *batch: jax.tree.map(
      lambda a: a[None], eval_step(p, jax.tree.map(lambda a: a[0], totals), *batch))
  return jax.jit(jax.shard_map(own_rows, mesh=mesh, check_vma=False,
                               in_specs=(replicas.spec, per_device) + (data.spec,) * 3,
                               out_specs=per_device), donate_argnums=(1,))


def run_eval(eval_step, params, batches: Iterable, loss, metrics, mesh, steps=None,
             num_seeds: Optional[int] = None):
  """Means over (the first `steps` of) `batches` with an `eval_step`; one wait at the end.

  Returns a dict, or with `num_seeds` a list of one dict per replica.
  """
  data = NamedSharding(mesh, PartitionSpec("data"))
  totals = zero_totals(loss, metrics, num_seeds or 1)
  replicas = distributed.replica_sharding(mesh, num_seeds or 1)
  per_device = distributed.adds_by_copies(mesh)
  if per_device:  # one row of totals per device along 'data' (see make_eval_step)
    totals = {k: np.stack([v] * mesh.shape["data"]) for k, v in totals.items()}
    replicas = NamedSharding(mesh, PartitionSpec("data", *replicas.spec))
  totals = distributed.put(totals, replicas)
  for batch in itertools.islice(batches, steps):
    totals = eval_step(params, totals, *distributed.put(batch, data))
  totals = jax.device_get(totals)
  if per_device:
    totals = {k: np.sum(v, axis=0) for k, v in totals.items()}
  names = ("loss", *metrics)
  return means(totals, names) if num_seeds is None else replica_means(totals, names, num_seeds)


def evaluate(apply_fn: Callable, params, batches: Iterable, *, loss: str,
             metrics: Sequence[str] = (), steps: Optional[int] = None,
             target_unit=None) -> dict:
  """Mean loss and metrics of `apply_fn(params, x)` over (x, y, weight) batches.

  Means are over the real rows (weight 1) of all batches, as Keras's `evaluate`. Runs on
  the first local device. Returns {"loss": ..., **metrics} (+ "mae_<unit>").
  """
  check_names(loss, metrics)
  mesh = Mesh(np.array(jax.local_devices()[:1]).reshape(1, 1), ("seed", "data"))
  eval_step = make_eval_step(apply_fn, loss, tuple(metrics), mesh)
  values = run_eval(eval_step, params, batches, loss, metrics, mesh, steps)
  return with_units(values, target_unit)


def check_names(loss, metrics):
  if loss not in LOSSES:
    raise ValueError(f"loss {loss!r} is not one of {LOSSES}")
  for metric in metrics:
    if metric not in METRICS:
      raise ValueError(f"metric {metric!r} is not one of {METRICS}")
