"""rnn_jax: `layers.Sequential`, jitted train step (params and optimizer state donated)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from benchmarks.tasks import LEARNING_RATE, Task, layer_stack
from rnn_jax import layers, optim


def model(task: Task) -> layers.Sequential:
  return layers.Sequential(layer_stack(layers, task))


def loss_fn(name: str, pred: jax.Array, y: jax.Array) -> jax.Array:
  if name == "mae":
    return jnp.mean(jnp.abs(pred - y))
  p = jnp.clip(pred, 1e-7, 1 - 1e-7)  # Keras's binary cross-entropy on probabilities
  return -jnp.mean(y * jnp.log(p) + (1 - y) * jnp.log(1 - p))


def make_step_fn(task: Task):
  """(params, opt_state, step, x, y) -> (params, opt_state, loss), jitted and donating.

  The dropout key of step i is fold_in(key(1), i), made inside the jitted step (as
  `rnn_jax.train` does) so that a step costs the host one dispatch.
  """
  net = model(task)
  optimizer = optim.keras_rmsprop(LEARNING_RATE)

  def step(params, opt_state, i, x, y):
    key = jax.random.fold_in(jax.random.PRNGKey(1), i)

    def objective(p):
      return loss_fn(task.loss, net.apply(p, x, training=True, key=key), y)
    loss, grads = jax.value_and_grad(objective)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return net, optimizer, jax.jit(step, donate_argnums=(0, 1))


def train_step(task: Task, x, y):
  net, optimizer, step = make_step_fn(task)
  params = net.init(jax.random.PRNGKey(0), x)
  state = {"params": params, "opt": optimizer.init(params), "i": 0}
  x, y = jnp.asarray(x), jnp.asarray(y)

  def run():
    state["params"], state["opt"], loss = step(state["params"], state["opt"], state["i"], x, y)
    state["i"] += 1
    return float(loss)

  return run
