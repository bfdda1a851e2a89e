"""Flax (linen): nn.RNN over nn.GRUCell / nn.OptimizedLSTMCell, optax RMSprop as Keras's."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from benchmarks.peers import Unsupported, jax_loss as loss_fn, require_classic_cells
from benchmarks.tasks import LEARNING_RATE, VOCAB, Task
from rnn_jax.train import optim



class Model(nn.Module):
  task: Task

  @nn.compact
  def __call__(self, x):
    if self.task.data == "imdb":
      x = nn.Embed(VOCAB, 32)(x)
    (kind, units, _), = self.task.recurrent
    if kind == "gru":
      h = nn.RNN(nn.GRUCell(units))(x)[:, -1]
    else:
      carry_f, _ = nn.RNN(nn.OptimizedLSTMCell(units), return_carry=True)(x)
      h = carry_f[1]
      if kind == "bilstm":
        carry_b, _ = nn.RNN(nn.OptimizedLSTMCell(units), return_carry=True, reverse=True,
                            keep_order=True)(x)
        h = jnp.concatenate([h, carry_b[1]], axis=-1)
    y = nn.Dense(1)(h)
    return nn.sigmoid(y) if self.task.loss == "bce" else y


def train_step(task: Task, x, y):
  require_classic_cells(task)
  if task.dropout:
    raise Unsupported("flax.linen's recurrent cells have no (recurrent) dropout")
  if len(task.recurrent) > 1:
    raise Unsupported("stacked task uses dropout")
  net = Model(task)
  optimizer = optim.keras_rmsprop(LEARNING_RATE)
  x, y = jnp.asarray(x), jnp.asarray(y)

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(lambda p: loss_fn(task.loss, net.apply(p, x), y))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params = net.init(jax.random.PRNGKey(0), x)
  state = {"params": params, "opt": optimizer.init(params)}

  def run():
    state["params"], state["opt"], loss = step(state["params"], state["opt"], x, y)
    return float(loss)

  return run
