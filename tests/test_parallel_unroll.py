"""implementation="parallel" (Newton's method over time, `rnn_jax.parallel`) through the
unroll and the layers: equal to the sequential "scan" with masks, go_backwards,
return_sequences, Bidirectional, and for a cell of the user's."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells, layers, recurrent

BATCH, TIME, FEATURES, UNITS = 2, 12, 3, 4


def _inputs():
  x = jax.random.normal(jax.random.PRNGKey(0), (BATCH, TIME, FEATURES))
  mask = np.ones((BATCH, TIME), bool)
  mask[0, 8:] = False
  mask[1, :3] = False
  return x, jnp.asarray(mask)


def _close(a, b, rtol):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("cell_name,method,go_backwards,return_sequences", [
    pytest.param(cell, method, backwards, sequences,
                 # every step's output of a gated cell: ~20 s of compiling each
                 marks=pytest.mark.slow if sequences and cell != "simple_rnn" else ())
    for cell, method in [("gru", "deer"), ("lstm", "quasi_deer"), ("simple_rnn", "deer")]
    for backwards, sequences in [(False, True), (True, False)]])
def test_parallel_equals_scan_with_masks(cell_name, method, go_backwards, return_sequences):
  x, mask = _inputs()
  model_of = lambda impl: layers.Sequential([layers.RNN(
      cells.CELLS[cell_name](), UNITS, go_backwards=go_backwards,
      return_sequences=return_sequences, implementation=impl, method=method),
      layers.Flatten()])

  def value_and_grads(impl):
    model = model_of(impl)
    params = model.init(jax.random.PRNGKey(1), x)
    return jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(model.apply(p, x, mask=mask))),
                              argnums=(0, 1))(params, x)

  _close(value_and_grads("parallel"), value_and_grads("scan"), 1e-4)


def test_bidirectional_and_a_users_cell():
  def step(params, h, x_t):
    h = jnp.tanh(x_t @ params["w"] + params["u"] * h)
    return h, 2.0 * h
  cell = types.SimpleNamespace(
      init=lambda key, n, units: {"w": jax.random.normal(key, (n, units)) * 0.5,
                                  "u": jnp.full((units,), 0.5)},
      initial_carry=lambda batch, units, dtype=jnp.float32: jnp.zeros((batch, units), dtype),
      step=step)
  x, mask = _inputs()
  outputs = {}
  for impl in ("parallel", "scan"):
    layer = layers.Bidirectional(layers.RNN(cell, UNITS, return_sequences=True,
                                            implementation=impl))
    params, _ = layer.init(jax.random.PRNGKey(2), x.shape[1:])
    outputs[impl] = layer.apply(params, x, mask)[0]
  _close(outputs["parallel"], outputs["scan"], 1e-4)


def test_parallel_needs_no_gate_layout_and_refuses_recurrent_dropout():
  assert recurrent.resolve_implementation(cells.mgu(), "parallel") == "parallel"
  x, _ = _inputs()
  layer = layers.GRU(UNITS, recurrent_dropout=0.3, implementation="parallel")
  params, _ = layer.init(jax.random.PRNGKey(0), x.shape[1:])
  with pytest.raises(ValueError, match="recurrent_dropout is not available"):
    layer.apply(params, x, training=True, key=jax.random.PRNGKey(1))
