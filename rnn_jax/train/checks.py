"""What `fit` refuses before it makes or touches its workdir: a model whose layers cannot run
their implementation, a learning rate that is not finite and not negative at some step,
and batches that do not split over the mesh or whose parts differ in rows."""
from __future__ import annotations

import itertools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import layers
from rnn_jax.train import optim
from rnn_jax.train.options import TrainOptions
from rnn_jax.train.placement import Placement


def check_model(model, compute_dtype: Optional[str] = None) -> None:
  """Every recurrent layer's `implementation` computes it (`layers.RNN.backend`: the cell,
  the platform, the dtype, its dropout), or a `ValueError` naming the layer: found before
  a run writes anything, not while tracing."""
  for where, layer in layers.recurrent_layers(model):
    try:
      layer.backend(compute_dtype)
    except ValueError as e:
      name = layer._name  # pylint: disable=protected-access
      raise ValueError(f"{where} ({name}): {e}") from None


def check_learning_rates(options: TrainOptions, steps_per_epoch: int) -> None:
  """The learning rate of every step of the run is finite and not negative (and not 0 at
  every step): a schedule of the options or a function given as `learning_rate`; else a
  `ValueError` naming the first bad step."""
  rate = optim.schedule(options.lr_schedule, options.learning_rate,
                        total_steps=options.epochs * steps_per_epoch,
                        warmup_steps=options.warmup_steps, steps_per_epoch=steps_per_epoch,
                        decay_rate=options.lr_decay_rate)
  if not callable(rate):
    return  # a number: TrainOptions checked it
  steps = np.arange(options.epochs * steps_per_epoch)
  try:
    rates = np.asarray(jax.vmap(rate)(jnp.asarray(steps, jnp.int32)), np.float64)
  except Exception:  # pylint: disable=broad-except  # a function vmap cannot batch: a sample
    steps = np.unique(np.linspace(0, len(steps) - 1, 64).astype(int))
    rates = np.asarray([float(rate(int(step))) for step in steps], np.float64)
  rates = np.broadcast_to(rates, steps.shape)
  bad = np.flatnonzero(~np.isfinite(rates) | (rates < 0))
  if len(bad) or not np.any(rates > 0):
    step = int(steps[bad[0]]) if len(bad) else 0
    raise ValueError(
        f"TrainOptions: the learning rate at step {step} (epoch {step // steps_per_epoch + 1}) "
        f"is {float(rate(step)):g}; every step's must be finite and at least 0, and some "
        f"positive (learning_rate={options.learning_rate!r}, lr_schedule={options.lr_schedule!r})")


def _check_batch(batch, where: str, placement: Placement, stacked: bool) -> None:
  """A batch that cannot be split over the mesh's 'data' devices, or whose x, y and weight
  differ in rows, is a `ValueError` naming it (not JAX's `IndivisibleError` mid-run)."""
  axis = 1 if stacked else 0
  rows = {name: np.shape(part)[axis] for name, part in zip(("x", "y", "weight"), batch)}
  if len(set(rows.values())) > 1:
    raise ValueError(f"{where}: x, y and weight have {rows['x']}, {rows['y']} and "
                     f"{rows['weight']} rows; a batch is (x, y, weight) of one length")
  devices = placement.mesh.shape["data"]
  if rows["x"] % devices:
    raise ValueError(
        f"{where} has {rows['x']} rows, which do not split over the {devices} devices of the "
        "mesh: every batch must have batch_size rows (pad a last, smaller batch with "
        "weight-0 rows, as rnn_jax.data.batches does)")


def check_batches(batches, seed: int, steps_per_epoch: int, val_steps: int,
                  placement: Placement) -> None:
  """The first epoch's training batches, the validation and the test batches checked by
  `_check_batch` before anything is written (their shapes only: one cheap pass)."""
  parts = [(f"batches.train(seed={seed}, epoch=1)", batches.train(seed, 1), steps_per_epoch),
           ("batches.val()", batches.val(), val_steps)]
  if batches.test_steps:
    parts.append(("batches.test()", batches.test(), batches.test_steps))
  for what, iterator, steps in parts:
    for _ in checked(itertools.islice(iterator, steps), what, placement):
      pass


def checked(batches, what: str, placement: Placement, stacked: bool = False):
  """`batches` as they come, each checked by `_check_batch`."""
  for i, batch in enumerate(batches):
    _check_batch(batch, f"{what} batch {i + 1}", placement, stacked)
    yield batch
