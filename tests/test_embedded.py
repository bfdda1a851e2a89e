"""Token inputs handed to the unroll as `Embedded(table, ids)` equal the looked-up vectors.

The unroll projects the table once and gathers each step's rows, and its backward pass
scatters the rows' cotangents into the table's gradient. Values and gradients (of the
table, the cell's parameters and the initial carry) must match the unroll of
`jnp.take(table, ids, axis=0)` to 1e-5: every cell, every implementation, masks,
go_backwards, input and recurrent dropout (where the table is looked up first), ids out
of range, and through `Sequential` and `Bidirectional`.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells, layers, recurrent

BATCH, TIME, VOCAB, FEATURES, UNITS = 3, 7, 11, 4, 5
CELLS = {"simple_rnn": cells.simple_rnn(), "lstm": cells.lstm(), "gru": cells.gru(),
         "gru_reset_before": cells.gru(reset_after=False)}


def _data(seed=0):
  rng = np.random.RandomState(seed)
  table = jnp.asarray(rng.randn(VOCAB, FEATURES).astype(np.float32))
  ids = rng.randint(0, VOCAB, size=(BATCH, TIME)).astype(np.int32)
  ids[0, :3] = 0  # padding, and a repeated id within one step's batch
  ids[:, 4] = 5
  mask = jnp.asarray(ids != 0)
  return table, jnp.asarray(ids), mask


def _loss(cell, params, table, ids, initial_carry, embedded: bool, **kwargs):
  inputs = recurrent.Embedded(table, ids) if embedded else jnp.take(table, ids, axis=0)
  y, carry = recurrent.unroll(cell, params, inputs, units=UNITS, initial_carry=initial_carry,
                              key=jax.random.PRNGKey(3), **kwargs)
  weights = jnp.sin(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape)
  return jnp.sum(weights * y) + sum(jnp.sum(jnp.cos(c)) for c in jax.tree_util.tree_leaves(carry))


def _assert_close(a, b):
  for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell_name", sorted(CELLS))
@pytest.mark.parametrize("implementation", ["per_gate", "fused", "recompute", "scan"])
@pytest.mark.parametrize("options", [
    {},
    {"masked": True, "go_backwards": True, "return_sequences": True},
    {"training": True, "recurrent_dropout": 0.4},
    {"training": True, "dropout": 0.3, "masked": True},  # input dropout: looked up first
])
def test_embedded_equals_looked_up_inputs(cell_name, implementation, options):
  cell = CELLS[cell_name]
  table, ids, mask = _data()
  params = cell.init(jax.random.PRNGKey(1), FEATURES, UNITS)
  if "bias" in params:
    params["bias"] = params["bias"] + 0.05 * jnp.arange(params["bias"].size).reshape(
        params["bias"].shape)
  carry0 = jax.tree_util.tree_map(lambda z: z + 0.2, cell.initial_carry(BATCH, UNITS))
  options = dict(options)
  kwargs = dict(options, mask=mask if options.pop("masked", False) else None)
  kwargs.pop("masked", None)
  grad = jax.value_and_grad(_loss, argnums=(1, 2, 4))
  embedded = grad(cell, params, table, ids, carry0, True, implementation=implementation,
                  **kwargs)
  looked_up = grad(cell, params, table, ids, carry0, False, implementation="scan", **kwargs)
  _assert_close(embedded, looked_up)
  assert float(jnp.abs(embedded[1][1]).sum()) > 0  # the table does get a gradient


def test_ids_out_of_range_give_nan_rows_as_take_does():
  cell = cells.lstm()
  table, ids, _ = _data()
  ids = ids.at[1, 2].set(VOCAB).at[2, 3].set(-1).at[2, 5].set(-VOCAB - 1)
  params = cell.init(jax.random.PRNGKey(1), FEATURES, UNITS)
  for go_backwards, implementation in [(False, "per_gate"), (True, "per_gate"),
                                       (True, "fused")]:
    kwargs = dict(return_sequences=True, go_backwards=go_backwards)
    y_embedded, _ = recurrent.unroll(cell, params, recurrent.Embedded(table, ids),
                                     units=UNITS, implementation=implementation, **kwargs)
    y_take, _ = recurrent.unroll(cell, params, jnp.take(table, ids, axis=0), units=UNITS, **kwargs)
    np.testing.assert_array_equal(np.isnan(y_embedded), np.isnan(y_take))
    y = np.asarray(y_embedded)
    assert np.isnan(y[1]).any() and not np.isnan(y[0]).any()
    np.testing.assert_allclose(y_embedded, y_take, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("recurrent_layer", [
    layers.LSTM(UNITS),
    layers.GRU(UNITS, return_sequences=True),
    layers.Bidirectional(layers.LSTM(UNITS)),
    layers.Bidirectional(layers.GRU(UNITS, return_sequences=True), merge_mode="sum"),
])
@pytest.mark.parametrize("mask_zero", [False, True])
def test_sequential_hands_the_table_to_a_recurrent_layer(recurrent_layer, mask_zero):
  """Sequential([Embedding, RNN]) equals the two layers applied one after the other."""
  _, ids, _ = _data()
  embedding = layers.Embedding(VOCAB, FEATURES, mask_zero=mask_zero)
  model = layers.Sequential([embedding, recurrent_layer, layers.Dense(1)])
  params = model.init(jax.random.PRNGKey(0), ids)

  def by_layers(params, ids):
    x, mask = embedding.apply(params[0], ids)
    x, mask = recurrent_layer.apply(params[1], x, mask)
    return layers.Dense(1).apply(params[2], x, mask)[0]

  def loss(apply, params):
    return jnp.sum(jnp.sin(apply(params, ids)))

  value, grads = jax.value_and_grad(lambda p: loss(model.apply, p))(params)
  expected_value, expected_grads = jax.value_and_grad(lambda p: loss(by_layers, p))(params)
  _assert_close((value, grads), (expected_value, expected_grads))
