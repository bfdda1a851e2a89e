"""rnn_jax: `layers.Sequential`, jitted train step (params and optimizer state donated).

As `rnn_jax.train.fit` runs it: the batch split over one device per CPU core
(`train.cpu_devices_per_core`), each device differentiating its rows and one all-reduce
per step adding the gradients (`train.shard_gradients`). `num_devices=1` gives the
single-device step (framework `rnn_jax_one_device` in benchmarks.run).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from benchmarks.tasks import BATCH, LEARNING_RATE, Task, layer_stack
from rnn_jax import layers, optim, train


def model(task: Task) -> layers.Sequential:
  return layers.Sequential(layer_stack(layers, task))


def loss_fn(name: str, pred: jax.Array, y: jax.Array) -> jax.Array:
  if name == "mae":
    return jnp.mean(jnp.abs(pred - y))
  p = jnp.clip(pred, 1e-7, 1 - 1e-7)  # Keras's binary cross-entropy on probabilities
  return -jnp.mean(y * jnp.log(p) + (1 - y) * jnp.log(1 - p))


def make_step_fn(task: Task, num_devices: Optional[int] = None):
  """(net, optimizer, step, mesh): step(params, opt_state, i, x, y) -> (params,
  opt_state, loss), jitted and donating, over a 'data' mesh of `num_devices` (default:
  one per core).

  The dropout key of step i is fold_in(key(1), i), made inside the jitted step (as
  `rnn_jax.train` does) so that a step costs the host one dispatch.
  """
  if num_devices != 1:
    train.cpu_devices_per_core(1, BATCH)  # as `fit` does, before JAX computes
  mesh = Mesh(np.array(jax.local_devices()[:num_devices]), ("data",))
  net = model(task)
  optimizer = optim.keras_rmsprop(LEARNING_RATE)

  def step(params, opt_state, i, x, y):
    key = jax.random.fold_in(jax.random.PRNGKey(1), i)

    def objective(p, x, y):  # the sum over this device's rows
      return loss_fn(task.loss, net.apply(p, x, training=True, key=key), y) * x.shape[0], ()
    loss, _, grads = train.shard_gradients(objective, params, x, y)
    grads = jax.tree.map(lambda g: g / BATCH, grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss / BATCH

  replicated, rows = PartitionSpec(), PartitionSpec("data")
  step = jax.shard_map(step, mesh=mesh, in_specs=(replicated,) * 3 + (rows,) * 2,
                       out_specs=(replicated,) * 3, check_vma=False)
  return net, optimizer, jax.jit(step, donate_argnums=(0, 1)), mesh


def train_step(task: Task, x, y, num_devices: Optional[int] = None):
  net, optimizer, step, mesh = make_step_fn(task, num_devices)
  params = jax.device_put(net.init(jax.random.PRNGKey(0), x), NamedSharding(mesh, PartitionSpec()))
  state = {"params": params, "opt": optimizer.init(params), "i": 0}
  x, y = jax.device_put((x, y), NamedSharding(mesh, PartitionSpec("data")))

  def run():
    state["params"], state["opt"], loss = step(state["params"], state["opt"], state["i"], x, y)
    state["i"] += 1
    return float(loss)

  return run
