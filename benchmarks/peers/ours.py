"""rnn_jax: the train step `rnn_jax.train.fit` compiles, on the mesh `fit` builds.

That is: `layers.Sequential`, one jitted step with params and optimizer state donated,
the batch split over one device per CPU core (`train.cpu_devices_per_core`), each device
differentiating its rows and the gradients added once per step
(`train._make_train_step`). `num_devices=1` gives the single-device step (framework
`rnn_jax_one_device` in benchmarks.run). The model ends in Dense(1) logits with
`bce_logits`, fit's loss, where the peers apply a sigmoid and Keras's binary
cross-entropy: the same function of the weights (the sigmoid is folded into the loss).
"""
from __future__ import annotations

from typing import Optional

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from benchmarks.tasks import BATCH, LEARNING_RATE, Task, layer_stack
from rnn_jax import layers, metrics, optim, train

_LOSSES = {"mae": "mae", "bce": "bce_logits"}


def model(task: Task) -> layers.Sequential:
  stack = layer_stack(layers, task)
  stack[-1] = layers.Dense(1)  # logits: `bce_logits` applies the sigmoid
  return layers.Sequential(stack)


def make_step_fn(task: Task, num_devices: Optional[int] = None):
  """(net, init_state(x) -> state, step(state, i, x, y) -> (state, loss sum), put(x, y))."""
  if num_devices != 1:
    train.cpu_devices_per_core(1, BATCH)  # as `fit` does, before JAX computes
  mesh = train._mesh(num_devices, BATCH)  # pylint: disable=protected-access
  net = model(task)
  optimizer = optim.keras_rmsprop(LEARNING_RATE)
  loss = _LOSSES[task.loss]
  step_fn = train._make_train_step(  # pylint: disable=protected-access
      net, optimizer, loss, (), mesh)
  replicated = NamedSharding(mesh, PartitionSpec())
  rows = train._batch_sharding(mesh, 1)  # pylint: disable=protected-access
  epoch = jax.device_put(np.int32(1), replicated)
  weight = jax.device_put(np.ones(BATCH, np.float32), rows)

  def init_state(x):
    """(params, opt_state, totals, seed) as `fit` lays them out: params of key(0), the
    dropout keys of seed 1."""
    params, opt_state, seed = train._initial_state(  # pylint: disable=protected-access
        jax.device_get(net.init(jax.random.key(0), x)), optimizer, mesh, [1])
    return params, opt_state, jax.device_put(metrics.zero_totals(loss, ()), replicated), seed

  def step(state, x, y):
    *state, seed = state
    state = (*step_fn(*state, seed, epoch, x, y, weight), seed)
    return state, state[2]["loss"]

  return net, init_state, step, lambda x, y: jax.device_put((x, y), rows)


def train_step(task: Task, x, y, num_devices: Optional[int] = None):
  _, init_state, step, put = make_step_fn(task, num_devices)
  x, y = put(x, y)
  state = {"state": init_state(x), "loss_sum": 0.0}

  def run():
    state["state"], loss_sum = step(state["state"], x, y)
    loss_sum = float(loss_sum)  # waits for the step
    loss, state["loss_sum"] = (loss_sum - state["loss_sum"]) / BATCH, loss_sum
    return loss

  return run
