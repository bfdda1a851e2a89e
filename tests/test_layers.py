"""Layers and the unroll: masking, go_backwards, initial state, return_state, stacking."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import layers, recurrent

FEATURES, UNITS, BATCH, TIME = 3, 4, 2, 6


def _x(key=1, batch=BATCH, time=TIME):
  return jax.random.normal(jax.random.PRNGKey(key), (batch, time, FEATURES))


def _init(layer, key=0, time=TIME):
  params, shape = layer.init(jax.random.PRNGKey(key), (time, FEATURES))
  return params, shape


RECURRENT = {"simple_rnn": layers.SimpleRNN, "lstm": layers.LSTM, "gru": layers.GRU}


@pytest.mark.parametrize("name", sorted(RECURRENT))
def test_masked_steps_carry_state_and_repeat_output(name):
  layer = RECURRENT[name](UNITS, return_sequences=True)
  params, shape = _init(layer)
  x = _x()
  mask = jnp.array([[True, True, False, False, True, True],
                    [True, True, True, True, False, False]])
  ys, _ = layer.apply(params, x, mask)
  assert ys.shape == (BATCH, *shape)
  np.testing.assert_array_equal(ys[0, 2], ys[0, 1])  # padding in the middle: output repeats
  np.testing.assert_array_equal(ys[0, 3], ys[0, 1])
  np.testing.assert_array_equal(ys[1, 5], ys[1, 3])  # padding at the end
  # skipping the padded steps gives the same outputs: the state went through unchanged
  unpadded, _ = layer.apply(params, x[:1, jnp.array([0, 1, 4, 5])])
  np.testing.assert_allclose(ys[0, jnp.array([0, 1, 4, 5])], unpadded[0], atol=1e-6)
  # the last output of a sequence padded at the end is the last real step's
  last, _ = RECURRENT[name](UNITS).apply(params, x, mask)
  np.testing.assert_allclose(last[1], ys[1, 3], atol=1e-6)


def test_embedding_mask_zero_feeds_the_recurrent_layer():
  model = layers.Sequential([layers.Embedding(10, FEATURES, mask_zero=True),
                             layers.GRU(UNITS, return_sequences=True)])
  ids = jnp.array([[3, 0, 0, 4], [5, 6, 7, 0]])
  params = model.init(jax.random.PRNGKey(0), ids)
  ys = model.apply(params, ids)
  _, mask = layers.Embedding(10, FEATURES, mask_zero=True).apply(params[0], ids)
  np.testing.assert_array_equal(mask, ids != 0)
  np.testing.assert_array_equal(ys[0, 1], ys[0, 0])
  np.testing.assert_array_equal(ys[1, 3], ys[1, 2])
  no_mask = layers.Sequential([layers.Embedding(10, FEATURES), layers.GRU(UNITS,
                                                                          return_sequences=True)])
  assert not np.allclose(no_mask.apply(params, ids)[0, 1], ys[0, 1])


@pytest.mark.parametrize("name", sorted(RECURRENT))
def test_go_backwards_reads_reversed_and_returns_in_processing_order(name):
  params, _ = _init(RECURRENT[name](UNITS))
  x = _x()
  forward, _ = RECURRENT[name](UNITS, return_sequences=True).apply(params, x[:, ::-1])
  backward, _ = RECURRENT[name](UNITS, return_sequences=True, go_backwards=True).apply(params, x)
  np.testing.assert_allclose(backward, forward, atol=1e-6)  # not flipped back, as in Keras
  last, _ = RECURRENT[name](UNITS, go_backwards=True).apply(params, x)
  np.testing.assert_allclose(last, forward[:, -1], atol=1e-6)


@pytest.mark.parametrize("name", sorted(RECURRENT))
def test_initial_state_and_return_state_continue_a_sequence(name):
  whole = RECURRENT[name](UNITS, return_sequences=True)
  params, _ = _init(whole)
  x = _x()
  ys, _ = whole.apply(params, x)
  first = RECURRENT[name](UNITS, return_state=True)
  (y, *state), _ = first.apply(params, x[:, :3])
  np.testing.assert_allclose(y, ys[:, 2], atol=1e-6)
  np.testing.assert_array_equal(state[0], y)  # h is the output
  assert len(state) == (2 if name == "lstm" else 1)
  carry = tuple(state) if name == "lstm" else state[0]
  rest, _ = whole.apply(params, x[:, 3:], initial_carry=carry)
  np.testing.assert_allclose(rest, ys[:, 3:], atol=1e-5)


def test_unroll_changes_nothing():
  layer = layers.LSTM(UNITS, return_sequences=True)
  params, _ = _init(layer)
  x = _x()
  ys, _ = layer.apply(params, x)
  for unroll in (2, TIME):
    unrolled, _ = layers.LSTM(UNITS, return_sequences=True, unroll=unroll).apply(params, x)
    np.testing.assert_allclose(unrolled, ys, atol=1e-6)


def test_zero_output_for_mask():
  cell_layer = layers.GRU(UNITS, return_sequences=True, zero_output_for_mask=True)
  params, _ = _init(cell_layer)
  mask = jnp.array([[True, False, True, True, True, False]] * BATCH)
  ys, _ = cell_layer.apply(params, _x(), mask)
  assert not ys[:, 1].any() and not ys[:, 5].any() and ys[:, 2].all()


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
def test_bidirectional_merge_modes(merge_mode):
  layer = layers.LSTM(UNITS, return_sequences=True)
  bidirectional = layers.Bidirectional(layer, merge_mode)
  params, shape = _init(bidirectional)
  x = _x()
  y, _ = bidirectional.apply(params, x)
  forward, _ = layer.apply(params["forward"], x)
  backward, _ = layer.apply(params["backward"], x[:, ::-1])
  backward = backward[:, ::-1]  # aligned in time
  expected = {"concat": lambda: jnp.concatenate([forward, backward], -1),
              "sum": lambda: forward + backward, "mul": lambda: forward * backward,
              "ave": lambda: (forward + backward) / 2,
              None: lambda: (forward, backward)}[merge_mode]()
  for got, want in zip(jax.tree_util.tree_leaves(y), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(got, want, atol=1e-6)
  assert jax.tree_util.tree_leaves(y)[0].shape[1:] == (shape if merge_mode else (TIME, UNITS))


def test_bidirectional_masks_zero_output_and_return_state():
  bidirectional = layers.Bidirectional(layers.GRU(UNITS, return_sequences=True, return_state=True),
                                       backward_layer=layers.GRU(2, return_sequences=True,
                                                                 return_state=True,
                                                                 go_backwards=True))
  params, shape = _init(bidirectional)
  assert shape == (TIME, UNITS + 2)
  mask = jnp.array([[True, True, True, False, False, False]] * BATCH)
  (y, h_forward, h_backward), out_mask = bidirectional.apply(params, _x(), mask)
  assert y.shape == (BATCH, TIME, UNITS + 2) and out_mask is mask
  assert not y[:, 3:].any()
  np.testing.assert_array_equal(h_forward, y[:, 2, :UNITS])
  np.testing.assert_array_equal(h_backward, y[:, 0, UNITS:])
  with pytest.raises(ValueError, match="merge_mode"):
    layers.Bidirectional(layers.GRU(UNITS), merge_mode="max")


def test_dense_flatten_maxout():
  x = _x()
  dense = layers.Dense(5, activation="relu")
  params, shape = dense.init(jax.random.PRNGKey(0), (TIME, FEATURES))
  y, _ = dense.apply(params, x)
  assert shape == (TIME, 5) and y.shape == (BATCH, TIME, 5) and (y >= 0).all()
  np.testing.assert_allclose(y, jax.nn.relu(x @ params["kernel"] + params["bias"]), atol=1e-6)
  flat, mask = layers.Flatten().apply({}, x, jnp.ones((BATCH, TIME), bool))
  assert flat.shape == (BATCH, TIME * FEATURES) and mask is None
  maxout = layers.Maxout(3, pieces=4)
  params, shape = maxout.init(jax.random.PRNGKey(0), (FEATURES,))
  y, _ = maxout.apply(params, x[:, 0])
  pieces = (x[:, 0] @ params["kernel"] + params["bias"]).reshape(BATCH, 3, 4)
  np.testing.assert_array_equal(y, pieces.max(-1))


def test_sequential_lecture_models_train_and_are_reproducible():
  imdb = layers.Sequential([layers.Embedding(100, 8, mask_zero=True), layers.LSTM(8),
                            layers.Dense(1, activation="sigmoid")])
  ids = jax.random.randint(jax.random.PRNGKey(0), (BATCH, TIME), 0, 100)
  params = imdb.init(jax.random.PRNGKey(0), ids)
  assert imdb.apply(params, ids).shape == (BATCH, 1)
  jena = layers.Sequential([layers.GRU(8, return_sequences=True, dropout=0.1,
                                       recurrent_dropout=0.5),
                            layers.GRU(16, activation="relu", dropout=0.1, recurrent_dropout=0.5),
                            layers.Dropout(0.5), layers.Dense(1)])
  x = _x()
  params = jena.init(jax.random.PRNGKey(0), x)
  assert [p["kernel"].shape for p in params if "kernel" in p] == [(3, 24), (8, 48), (16, 1)]
  loss = lambda p, key: jnp.sum(jena.apply(p, x, training=True, key=key) ** 2)
  value_and_grad = jax.jit(jax.value_and_grad(loss))
  same, grads = value_and_grad(params, jax.random.PRNGKey(3))
  assert same == value_and_grad(params, jax.random.PRNGKey(3))[0]
  assert same != value_and_grad(params, jax.random.PRNGKey(4))[0]
  assert all(np.isfinite(g).all() and np.abs(g).max() > 0
             for g in jax.tree_util.tree_leaves(grads))


def test_unroll_rejects_dropout_without_key():
  layer = layers.GRU(UNITS, dropout=0.5)
  params, _ = _init(layer)
  with pytest.raises(ValueError, match="PRNG key"):
    layer.apply(params, _x(), training=True)
  y, _ = layer.apply(params, _x(), training=False)
  np.testing.assert_array_equal(y, recurrent.unroll(layer.cell, params, _x(), units=UNITS)[0])
