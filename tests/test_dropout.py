"""Recurrent dropout (Gal & Ghahramani) as Keras's dropout / recurrent_dropout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells, layers, recurrent

UNITS, BATCH, TIME = 5, 4, 6


def _identity_rnn(units=UNITS):
  """A linear SimpleRNN with identity kernels and no bias: h_t = x_t*m_x + (h_{t-1}*m_h)."""
  eye = jnp.eye(units)
  return cells.simple_rnn("linear", use_bias=False), {"kernel": eye, "recurrent_kernel": eye}


def test_mask_values_are_zero_or_inverted_scale():
  rate = 0.3
  mask = recurrent.dropout_mask(jax.random.PRNGKey(0), rate, (200, 500))
  values = np.unique(np.asarray(mask))
  np.testing.assert_allclose(values, [0.0, 1 / (1 - rate)], rtol=1e-6)
  assert abs(float(mask.mean()) - 1.0) < 0.01  # inverted dropout keeps the expectation
  assert abs(float((mask == 0).mean()) - rate) < 0.01


def test_input_mask_is_the_same_at_every_step():
  cell, params = _identity_rnn()
  params = {**params, "recurrent_kernel": jnp.zeros((UNITS, UNITS))}  # y_t = x_t * m_x
  ones = jnp.ones((BATCH, TIME, UNITS))
  ys, _ = recurrent.unroll(cell, params, ones, units=UNITS, return_sequences=True, dropout=0.5,
                           training=True, key=jax.random.PRNGKey(0))
  np.testing.assert_array_equal(ys, jnp.broadcast_to(ys[:, :1], ys.shape))  # one mask per sequence
  assert set(np.unique(np.asarray(ys))) == {0.0, 2.0}
  assert not np.array_equal(ys[0, 0], ys[1, 0])  # but one per sequence in the batch


def test_recurrent_mask_is_the_same_at_every_step():
  cell, params = _identity_rnn()
  x = jnp.zeros((BATCH, TIME, UNITS)).at[:, 0].set(1.0)  # h_1 = 1, then h_{t+1} = h_t * m_h
  ys, _ = recurrent.unroll(cell, params, x, units=UNITS, return_sequences=True, recurrent_dropout=0.5,
                           training=True, key=jax.random.PRNGKey(1))
  mask = ys[:, 1]  # m_h
  assert set(np.unique(np.asarray(mask))) == {0.0, 2.0}
  for t in range(1, TIME):
    np.testing.assert_array_equal(ys[:, t], mask ** t)


def test_recurrent_dropout_draws_one_mask_per_gate():
  """Keras 3 (implementation=1): each gate sees its own mask of inputs and state."""
  input_mask, recurrent_mask = recurrent.sequence_dropout_masks(
      4, jax.random.PRNGKey(0), (BATCH,), 3, UNITS, dropout=0.5,
      recurrent_dropout=0.5, training=True)
  assert input_mask.shape == (4, BATCH, 3) and recurrent_mask.shape == (4, BATCH, UNITS)
  assert not np.array_equal(recurrent_mask[0], recurrent_mask[1])
  input_mask, recurrent_mask = recurrent.sequence_dropout_masks(
      3, jax.random.PRNGKey(0), (BATCH,), 3, UNITS, dropout=0.5,
      recurrent_dropout=0.0, training=True)
  assert input_mask.shape == (1, BATCH, 3) and recurrent_mask is None


@pytest.mark.parametrize("make_cell", [cells.lstm, cells.gru, lambda: cells.gru(reset_after=False)])
def test_identity_at_rate_zero_and_in_inference(make_cell):
  cell = make_cell()
  params = cell.init(jax.random.PRNGKey(0), 3, UNITS)
  x = jax.random.normal(jax.random.PRNGKey(1), (BATCH, TIME, 3))
  plain, _ = recurrent.unroll(cell, params, x, units=UNITS, return_sequences=True)
  inference, _ = recurrent.unroll(cell, params, x, units=UNITS, return_sequences=True, dropout=0.5,
                                  recurrent_dropout=0.5, training=False)
  rate_zero, _ = recurrent.unroll(cell, params, x, units=UNITS, return_sequences=True, dropout=0.0,
                                  recurrent_dropout=0.0, training=True)  # no key needed
  np.testing.assert_array_equal(inference, plain)
  np.testing.assert_array_equal(rate_zero, plain)
  training, _ = recurrent.unroll(cell, params, x, units=UNITS, return_sequences=True, dropout=0.5,
                                 recurrent_dropout=0.5, training=True, key=jax.random.PRNGKey(2))
  assert np.abs(training - plain).max() > 1e-3


def test_rate_zero_costs_nothing():
  """Rate 0 in training traces to the same program as inference: no random numbers drawn."""
  cell = cells.gru()
  params = cell.init(jax.random.PRNGKey(0), 3, UNITS)
  x = jnp.ones((BATCH, TIME, 3))

  def program(training, rate):
    return str(jax.make_jaxpr(lambda p, x: recurrent.unroll(
        cell, p, x, units=UNITS, dropout=rate, recurrent_dropout=rate, training=training,
        key=jax.random.PRNGKey(0)))(params, x))

  assert program(True, 0.0) == program(False, 0.5)
  assert program(True, 0.5) != program(False, 0.5)


def test_same_key_same_mask_and_key_required():
  layer = layers.LSTM(UNITS, dropout=0.3, recurrent_dropout=0.3)
  params, _ = layer.init(jax.random.PRNGKey(0), (TIME, 3))
  x = jax.random.normal(jax.random.PRNGKey(1), (BATCH, TIME, 3))
  run = lambda key: layer.apply(params, x, training=True, key=key)[0]
  np.testing.assert_array_equal(run(jax.random.PRNGKey(5)), run(jax.random.PRNGKey(5)))
  assert not np.array_equal(run(jax.random.PRNGKey(5)), run(jax.random.PRNGKey(6)))
  with pytest.raises(ValueError, match="key"):
    run(None)


def test_dropout_layer():
  layer = layers.Dropout(0.25)
  x = jnp.ones((100, 200))
  y, _ = layer.apply({}, x, training=True, key=jax.random.PRNGKey(0))
  assert set(np.unique(np.asarray(y))) == {0.0, np.float32(1 / 0.75)}
  assert abs(float(y.mean()) - 1.0) < 0.02
  np.testing.assert_array_equal(layer.apply({}, x, training=False)[0], x)
  np.testing.assert_array_equal(layers.Dropout(0.0).apply({}, x, training=True)[0], x)


def test_dropout_expectation_matches_inference_for_a_linear_cell():
  """Inverted scaling: averaged over many masks, a linear RNN's output is the inference output."""
  cell, params = _identity_rnn()
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, UNITS))
  plain, _ = recurrent.unroll(cell, params, x, units=UNITS)
  keys = jax.random.split(jax.random.PRNGKey(1), 4000)
  runs = jax.vmap(lambda k: recurrent.unroll(cell, params, x, units=UNITS, dropout=0.2, training=True,
                                             key=k)[0])(keys)
  np.testing.assert_allclose(runs.mean(axis=0), plain, atol=0.05)
