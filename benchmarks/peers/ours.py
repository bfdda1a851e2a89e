"""rnn_jax: the train step `rnn_jax.train.fit` compiles, on the mesh `fit` builds.

That is: `layers.Sequential`, one jitted step with params and optimizer state donated,
the batch split over one device per CPU core (`train.cpu_devices_per_core`), each device
differentiating its rows and the gradients added once per step
(`train.make_train_step`). `num_devices=1` gives the single-device step (framework
`rnn_jax_one_device` in benchmarks.run). The model ends in Dense(1) logits with
`bce_logits`, fit's loss, where the peers apply a sigmoid and Keras's binary
cross-entropy: the same function of the weights (the sigmoid is folded into the loss).
"""
from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from benchmarks.peers import Unsupported
from benchmarks.tasks import BATCH, LEARNING_RATE, Task, layer_stack
from rnn_jax import layers, precision, train
from rnn_jax.train import optim
from rnn_jax.train import provenance

_LOSSES = {"mae": "mae", "bce": "bce_logits"}


def model(task: Task, implementation: str = "auto") -> layers.Sequential:
  stack = layer_stack(layers, task, implementation)
  stack[-1] = layers.Dense(1)  # logits: `bce_logits` applies the sigmoid
  return layers.Sequential(stack)


def make_step_fn(task: Task, num_devices: Optional[int] = None, implementation: str = "auto",
                 compute_dtype: str = "float32"):
  """(net, init_state(x) -> state, step(state, x, y) -> (state, loss sum), put(x, y)).

  compute_dtype="bfloat16" is `fit`'s --compute_dtype=bfloat16 (rnn_jax.precision)."""
  if num_devices != 1:
    train.cpu_devices_per_core(1, BATCH)  # as the experiments do, before JAX computes
  placement = train.Placement.make(num_devices, BATCH)
  net = precision.with_compute_dtype(model(task, implementation), compute_dtype)
  try:  # a backend that cannot compute this task's layers (native: minGRU on CPU only)
    provenance.backends(net, compute_dtype)
  except ValueError as e:
    raise Unsupported(str(e)) from None
  optimizer = optim.keras_rmsprop(LEARNING_RATE)
  loss = _LOSSES[task.loss]
  step_fn = train.make_train_step(net, optimizer, loss, (), placement)
  epoch = jax.device_put(np.int32(1), placement.replicated)
  weight = jax.device_put(np.ones(BATCH, np.float32), placement.batches)

  def init_state(x):
    """The `TrainState` as `fit` lays it out: params of key(0), the dropout keys of seed 1."""
    host_params = jax.device_get(net.init(jax.random.key(0), x))
    return train.init_state(host_params, optimizer, placement, [1], loss, ())

  def step(state, x, y):
    state = step_fn(state, epoch, x, y, weight)
    return state, state.totals["loss"]

  return net, init_state, step, lambda x, y: jax.device_put((x, y), placement.batches)


def train_step(task: Task, x, y, num_devices: Optional[int] = None,
               implementation: str = "auto", compute_dtype: str = "float32"):
  _, init_state, step, put = make_step_fn(task, num_devices, implementation, compute_dtype)
  x, y = put(x, y)
  state = {"state": init_state(x), "loss_sum": 0.0}

  def run():
    state["state"], loss_sum = step(state["state"], x, y)
    loss_sum = float(loss_sum)  # waits for the step
    loss, state["loss_sum"] = (loss_sum - state["loss_sum"]) / BATCH, loss_sum
    return loss

  return run
