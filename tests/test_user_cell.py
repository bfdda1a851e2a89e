"""A cell written by a user, from three plain functions and nothing of rnn_jax, runs
through every part of the library: `recurrent.unroll`, `layers.RNN` (masks,
go_backwards, return_sequences, return_state, input dropout), `Bidirectional`,
`Sequential` and `fit`, and equals a plain `lax.scan` written here, values and gradients.
"""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_trees_close, two_state_cell
from rnn_jax import layers, recurrent, train
from rnn_jax.data.batches import ArrayBatches

BATCH, TIME, FEATURES, UNITS = 3, 6, 4, 5


def _ind_rnn():
  """IndRNN (Li et al. 2018): h_t = tanh(x_t W + u * h_{t-1} + b), u a vector."""

  def init(key, input_size, units):
    k_w, k_u = jax.random.split(key)
    return {"w": jax.random.normal(k_w, (input_size, units)) / jnp.sqrt(input_size),
            "u": jax.random.uniform(k_u, (units,), minval=-1.0, maxval=1.0),
            "b": jnp.full((units,), 0.1)}

  def initial_carry(batch_size, units, dtype=jnp.float32):
    return jnp.zeros((batch_size, units), dtype)

  def step(params, h, x_t):
    h = jnp.tanh(x_t @ params["w"] + params["u"] * h + params["b"])
    return h, h

  return types.SimpleNamespace(init=init, initial_carry=initial_carry, step=step)


CELLS = {"ind_rnn": _ind_rnn, "two_state": two_state_cell}


def _inputs(seed=0):
  rng = np.random.RandomState(seed)
  x = jnp.asarray(rng.randn(BATCH, TIME, FEATURES).astype(np.float32))
  mask = np.ones((BATCH, TIME), bool)
  mask[0, 4:] = False   # trailing padding
  mask[1, :2] = False   # leading padding
  mask[2, 3] = False    # a hole
  return x, jnp.asarray(mask)


def _by_hand(cell, params, x, mask=None, *, go_backwards=False, input_mask=None,
             zero_output_for_mask=False):
  """The Keras semantics, written out: a masked step keeps the carry and repeats the
  previous output; returns (outputs in processing order [batch, time, ...], carry)."""
  if input_mask is not None:
    x = x * input_mask
  if mask is None:
    mask = jnp.ones(x.shape[:2], bool)
  if go_backwards:
    x, mask = x[:, ::-1], mask[:, ::-1]
  carry = cell.initial_carry(x.shape[0], UNITS)
  _, y_shape = jax.eval_shape(cell.step, params, carry, x[:, 0])
  y_previous = jnp.zeros(y_shape.shape)

  def body(state, inputs):
    carry, y_previous = state
    x_t, m_t = inputs
    new_carry, y = cell.step(params, carry, x_t)
    m = m_t[:, None]
    new_carry = jax.tree.map(lambda n, o: jnp.where(m, n, o), new_carry, carry)
    y = jnp.where(m, y, y_previous)
    out = jnp.where(m, y, 0.0) if zero_output_for_mask else y
    return (new_carry, y), out

  (carry, _), ys = jax.lax.scan(body, (carry, y_previous),
                                (jnp.swapaxes(x, 0, 1), jnp.swapaxes(mask, 0, 1)))
  return jnp.swapaxes(ys, 0, 1), carry


def _check_values_and_gradients(ours, reference, params, x):
  loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)))
  assert_trees_close(jax.value_and_grad(loss(ours), argnums=(0, 1))(params, x),
                     jax.value_and_grad(loss(reference), argnums=(0, 1))(params, x), atol=1e-6)


@pytest.mark.parametrize("cell_name", sorted(CELLS))
@pytest.mark.parametrize("implementation", ["scan", "recompute"])
@pytest.mark.parametrize("masked,go_backwards,return_sequences", [
    (False, False, True), (True, False, True), (True, True, False), (True, True, True)])
def test_rnn_layer_equals_a_plain_scan(cell_name, implementation, masked, go_backwards,
                                       return_sequences):
  cell = CELLS[cell_name]()
  x, mask = _inputs()
  mask = mask if masked else None
  layer = layers.RNN(cell, UNITS, return_sequences=return_sequences,
                     go_backwards=go_backwards, implementation=implementation)
  params, shape = layer.init(jax.random.PRNGKey(0), x.shape[1:])

  def ours(p, x):
    return layer.apply(p, x, mask)[0]

  def reference(p, x):
    ys, _ = _by_hand(cell, p, x, mask, go_backwards=go_backwards)
    return ys if return_sequences else ys[:, -1]

  assert ours(params, x).shape[1:] == shape
  _check_values_and_gradients(ours, reference, params, x)


@pytest.mark.parametrize("cell_name", sorted(CELLS))
def test_input_dropout_and_return_state(cell_name):
  cell = CELLS[cell_name]()
  x, mask = _inputs(1)
  key = jax.random.PRNGKey(3)
  layer = layers.RNN(cell, UNITS, return_sequences=True, return_state=True, dropout=0.4)
  params, _ = layer.init(jax.random.PRNGKey(0), x.shape[1:])
  # The unroll's mask for this key: one per sequence, shared by every step.
  input_mask, _ = recurrent.sequence_dropout_masks(None, key, (BATCH,), FEATURES, UNITS, 0.4,
                                                   0.0, True)

  def ours(p, x):
    (ys, *state), _ = layer.apply(p, x, mask, training=True, key=key)
    return jnp.concatenate([ys.reshape(BATCH, -1)] + [s.reshape(BATCH, -1) for s in state], 1)

  def reference(p, x):
    ys, carry = _by_hand(cell, p, x, mask, input_mask=input_mask[0][:, None])
    return jnp.concatenate([ys.reshape(BATCH, -1)]
                           + [s.reshape(BATCH, -1) for s in jax.tree.leaves(carry)], 1)

  _check_values_and_gradients(ours, reference, params, x)
  inference, _ = layer.apply(params, x, mask)
  assert not np.allclose(ours(params, x)[:, :TIME], inference[0].reshape(BATCH, -1)[:, :TIME])


def test_recurrent_dropout_needs_a_gate_layout():
  layer = layers.RNN(_ind_rnn(), UNITS, recurrent_dropout=0.2)
  x, _ = _inputs()
  params, _ = layer.init(jax.random.PRNGKey(0), x.shape[1:])
  with pytest.raises(ValueError, match="recurrent_dropout needs a cell that declares"):
    layer.apply(params, x, training=True, key=jax.random.PRNGKey(1))
  with pytest.raises(ValueError, match="needs a cell that declares its gate layout"):
    layers.RNN(_ind_rnn(), UNITS, implementation="per_gate").apply(params, x)


@pytest.mark.parametrize("cell_name", sorted(CELLS))
@pytest.mark.parametrize("merge_mode", ["concat", "ave"])
def test_bidirectional_equals_two_plain_scans(cell_name, merge_mode):
  cell = CELLS[cell_name]()
  x, mask = _inputs(2)
  layer = layers.Bidirectional(layers.RNN(cell, UNITS, return_sequences=True),
                               merge_mode=merge_mode)
  params, shape = layer.init(jax.random.PRNGKey(0), x.shape[1:])

  def ours(p, x):
    return layer.apply(p, x, mask)[0]

  def reference(p, x):
    forward, _ = _by_hand(cell, p["forward"], x, mask, zero_output_for_mask=True)
    backward, _ = _by_hand(cell, p["backward"], x, mask, go_backwards=True,
                           zero_output_for_mask=True)
    backward = backward[:, ::-1]
    if merge_mode == "concat":
      return jnp.concatenate([forward, backward], axis=-1)
    return (forward + backward) / 2

  assert ours(params, x).shape[1:] == shape
  _check_values_and_gradients(ours, reference, params, x)


@pytest.mark.parametrize("cell_name", sorted(CELLS))
def test_fit_trains_a_stack_of_user_cells(cell_name, tmp_path):
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(128, 6, 2)).astype(np.float32)
  y = x[:, :, 0].sum(axis=1, keepdims=True)
  batches = ArrayBatches.from_arrays(x, y, validation_split=0.25, batch_size=16)
  cell = CELLS[cell_name]()
  model = layers.Sequential([
      layers.Bidirectional(layers.RNN(cell, 6, return_sequences=True, dropout=0.1)),
      layers.RNN(cell, 4),
      layers.Dense(1)])
  options = train.TrainOptions(experiment="test", model_name=cell_name, workdir=str(tmp_path),
                               epochs=4, optimizer="adam", learning_rate=1e-2,
                               flags={"seed": 0})
  result = train.fit(model, batches, loss="mse", options=options)
  history = result.results["history"]
  assert len(history) == 4
  assert history[-1]["loss"] < 0.5 * history[0]["loss"]
  assert np.isfinite(result.results["val"]["loss"])
