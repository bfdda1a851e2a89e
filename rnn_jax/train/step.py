"""The train step over one `TrainState`, its fresh state, and the evaluation step.

  state = init_state(model, optimizer, placement, sample_xs, seeds, loss, metrics)
  train_step = make_train_step(model, optimizer, loss, metrics, placement)
  state = train_step(state, epoch, x, y, weight)

Randomness: the model is initialised with `key(seed)`; the dropout key of step `s`
(0-based) of epoch `e` (1-based) is `fold_in(fold_in(key(seed), e), s)`. With
`num_seeds` > 1 every field of the state has a leading replica axis and the step is
vmapped over each device's replicas.
"""
from __future__ import annotations

import inspect
import itertools
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnn_jax.train import metrics as metrics_lib
from rnn_jax.train.placement import Placement, put


class TrainState(NamedTuple):
  """Everything a train step reads and writes."""
  params: Any
  opt_state: Any
  totals: dict  # the epoch's weighted metric sums, steps taken, first non-finite step
  seeds: Any    # <int32>[] (or [num_seeds]): the replicas' seeds, for their dropout keys


def init_params(model, sample_xs: Sequence[np.ndarray], seeds: Sequence[int]):
  """Host params: model.init(key(seed), sample_x) per seed (stacked for several)."""
  inits = [jax.device_get(model.init(jax.random.key(seed), jnp.asarray(x)))
           for seed, x in zip(seeds, sample_xs)]
  return inits[0] if len(seeds) == 1 else jax.tree.map(lambda *xs: np.stack(xs), *inits)


def init_state(host_params, optimizer: optax.GradientTransformation, placement: Placement,
               seeds: Sequence[int], loss: str, metrics: Sequence[str]) -> TrainState:
  """A fresh run's state laid out on the placement's mesh as the train step takes it."""
  num_seeds = len(seeds)
  per_replica = placement.per_replica
  params = put(host_params, per_replica)
  opt_state = jax.jit(jax.vmap(optimizer.init) if num_seeds > 1 else optimizer.init,
                      out_shardings=per_replica)(params)
  seed_values = put(np.asarray(seeds if num_seeds > 1 else seeds[0], np.int32), per_replica)
  return TrainState(params, opt_state, new_totals(placement, loss, metrics), seed_values)


def new_totals(placement: Placement, loss: str, metrics: Sequence[str]) -> dict:
  """An epoch's zero totals, on the devices."""
  return put(metrics_lib.zero_totals(loss, metrics, placement.num_seeds),
             placement.per_replica)


def make_train_step(model, optimizer: optax.GradientTransformation, loss: str,
                    metrics: Sequence[str], placement: Placement, *,
                    clip_norm: Optional[float] = None) -> Callable:
  """(state, epoch, x, y, weight) -> state: one optimizer step on the weighted mean loss.

  Each device differentiates the loss summed over its rows and the sums are added over
  'data' (`Placement.data_parallel_step`). Dropout masks are drawn for the whole batch
  (`batch_axis_name="data"`, for a model whose `apply` takes it, as `layers.Sequential`'s
  does), so a run's numbers do not depend on the device count.
  `totals` accumulates the epoch's weighted sums on the device (so the host never waits
  for a step), counts the steps, remembers the first step whose loss was not finite,
  and adds up the global norm of each step's gradient (before `optimizer` clips it) and
  the steps whose norm exceeds `clip_norm`. The state is donated.
  """
  num_seeds = placement.num_seeds
  batched = (lambda f, *axes: jax.vmap(f, in_axes=axes)) if num_seeds > 1 else (
      lambda f, *axes: f)
  sharded = {"batch_axis_name": "data"} if _takes_batch_axis_name(model) else {}

  def parts(params, totals, seed, epoch, x, y, weight):
    """This device's rows: (metric sums, gradient of the loss sum)."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), totals["steps"])

    def objective(p, x, y, weight):
      sums = metrics_lib.sums(loss, metrics,
                              model.apply(p, x, training=True, key=key, **sharded), y, weight)
      return sums["loss"], sums

    (_, sums), grads = jax.value_and_grad(objective, has_aux=True)(params, x, y, weight)
    return sums, grads

  def update(state, sums, grads):
    """The optimizer step from the whole batch's sums and gradient."""
    count = jnp.maximum(sums["count"], 1.0)
    grads = jax.tree.map(lambda g: g / count, grads)
    norm = optax.global_norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    totals = state.totals
    step = totals["steps"]
    totals = {k: totals[k] + sums[k] if k in sums else totals[k] for k in totals}
    totals["steps"] = step + 1
    totals["first_nonfinite"] = jnp.where(
        (totals["first_nonfinite"] < 0) & ~jnp.isfinite(sums["loss"] / count), step,
        totals["first_nonfinite"])
    totals["grad_norm"] = totals["grad_norm"] + norm
    if clip_norm is not None:
      totals["clipped"] = totals["clipped"] + (norm > clip_norm).astype(jnp.float32)
    return TrainState(params, opt_state, totals, state.seeds)

  replicas = placement.per_replica.spec
  state_spec = TrainState(replicas, replicas, replicas, replicas)
  return placement.data_parallel_step(batched(parts, 0, 0, 0, None, 0, 0, 0),
                                      batched(update, 0, 0, 0), state_spec)


def _takes_batch_axis_name(model) -> bool:
  """Whether `model.apply` takes `batch_axis_name` (or any keyword, passing it on)."""
  try:
    parameters = inspect.signature(model.apply).parameters.values()
  except (TypeError, ValueError):
    return False
  return any(p.name == "batch_axis_name" or p.kind is p.VAR_KEYWORD for p in parameters)


# ----------------------------------------------------------------------------- evaluation

def make_eval_step(apply_fn: Callable, loss: str, metrics: Sequence[str],
                   placement: Placement):
  """(params, totals, x, y, weight) -> totals + the batch's sums; x, y, weight sharded.

  With num_seeds > 1, params and totals have a leading replica axis and every replica
  evaluates the same batch (vmapped inside the one compiled step).
  """
  def eval_step(params, totals, x, y, weight):
    batch = metrics_lib.sums(loss, metrics, apply_fn(params, x), y, weight)
    return {k: totals[k] + batch[k] if k in batch else totals[k] for k in totals}

  if placement.num_seeds > 1:
    eval_step = jax.vmap(eval_step, in_axes=(0, 0, None, None, None))
  return placement.eval_step(eval_step)


def run_eval(eval_step, params, batches: Iterable, loss, metrics, placement: Placement,
             steps=None) -> list:
  """Means over (the first `steps` of) `batches`: one dict per replica; one wait at the end."""
  totals = placement.put_totals(metrics_lib.zero_totals(loss, metrics, placement.num_seeds))
  for batch in itertools.islice(batches, steps):
    totals = eval_step(params, totals, *put(batch, placement.rows))
  return metrics_lib.replica_means(placement.read_totals(totals), ("loss", *metrics),
                                   placement.num_seeds)


def evaluate(apply_fn: Callable, params, batches: Iterable, *, loss: str,
             metrics: Sequence[str] = (), steps: Optional[int] = None,
             target_unit=None) -> dict:
  """Mean loss and metrics of `apply_fn(params, x)` over (x, y, weight) batches.

  Means are over the real rows (weight 1) of all batches, as Keras's `evaluate`. Runs on
  the first local device. Returns {"loss": ..., **metrics} (+ "mae_<unit>").
  """
  metrics_lib.check_names(loss, metrics)
  placement = Placement.one_device()
  eval_step = make_eval_step(apply_fn, loss, tuple(metrics), placement)
  [values] = run_eval(eval_step, params, batches, loss, metrics, placement, steps)
  return metrics_lib.with_units(values, target_unit)
