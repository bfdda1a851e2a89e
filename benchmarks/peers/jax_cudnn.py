"""`jax.experimental.rnn.lstm`: cuDNN's LSTM through JAX, on GPUs only (imdb tasks)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from benchmarks.peers import Unsupported, jax_loss as loss_fn
from benchmarks.tasks import BATCH, LEARNING_RATE, VOCAB, Task
from rnn_jax.train import optim


def train_step(task: Task, x, y):
  if jax.default_backend() != "gpu":
    raise Unsupported("cuDNN's LSTM needs a GPU")
  (kind, units, options), = task.recurrent
  if kind not in ("lstm", "bilstm") or options:
    raise Unsupported("jax.experimental.rnn has only an LSTM without dropout")
  from jax.experimental import rnn  # pylint: disable=import-outside-toplevel
  bidirectional = kind == "bilstm"
  directions = 2 if bidirectional else 1
  embedding_dim = 32
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  params = {"embed": jax.random.uniform(keys[0], (VOCAB, embedding_dim), minval=-0.05,
                                        maxval=0.05),
            "lstm": rnn.init_lstm_weight(keys[1], embedding_dim, units, 1, bidirectional),
            "dense": jax.random.normal(keys[2], (directions * units, 1)) * 0.1}
  zeros = jnp.zeros((directions, BATCH, units))
  lengths = jnp.full((BATCH,), x.shape[1], jnp.int32)

  def apply(p, x):
    h = jnp.take(p["embed"], x, axis=0)
    _, h_n, _ = rnn.lstm(h, zeros, zeros, p["lstm"], lengths, input_size=embedding_dim,
                         hidden_size=units, num_layers=1, dropout=0.0,
                         bidirectional=bidirectional)
    return jax.nn.sigmoid(jnp.concatenate(list(h_n), axis=-1) @ p["dense"])

  optimizer = optim.keras_rmsprop(LEARNING_RATE)
  x, y = jnp.asarray(x), jnp.asarray(y)

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(lambda p: loss_fn(task.loss, apply(p, x), y))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  state = {"params": params, "opt": optimizer.init(params)}

  def run():
    state["params"], state["opt"], loss = step(state["params"], state["opt"], x, y)
    return float(loss)

  return run
