"""MGU (`cells.mgu`, written against the cell contract alone) equals `flax.linen.MGUCell`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

flax_linen = pytest.importorskip("flax.linen")

from rnn_jax import cells, layers  # pylint: disable=g-import-not-at-top

BATCH, TIME, FEATURES, UNITS = 3, 9, 4, 6


def _from_flax(variables, reset_gate):
  """Flax's Dense layers `if`, `in` (input), `hf`, `hn` (recurrent) as rnn_jax's params."""
  p = variables["params"]
  p = p.get("cell", p)  # nn.RNN keeps the cell's under "cell"
  params = {"kernel": jnp.concatenate([p["if"]["kernel"], p["in"]["kernel"]], axis=1),
            "recurrent_kernel": jnp.concatenate([p["hf"]["kernel"], p["hn"]["kernel"]], axis=1),
            "bias": jnp.concatenate([p["if"]["bias"], p["in"]["bias"]])}
  if reset_gate:
    params["recurrent_bias"] = p["hn"]["bias"]
  return params


def _randomized(variables, key):
  """Every parameter redrawn, so that biases are non-zero."""
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(tree, [0.5 * jax.random.normal(k, l.shape)
                                   for k, l in zip(keys, leaves)])


@pytest.mark.parametrize("reset_gate", [True, False])
def test_mgu_matches_flax_mgu_cell(reset_gate):
  x = jax.random.normal(jax.random.PRNGKey(0), (BATCH, TIME, FEATURES))
  flax_rnn = flax_linen.RNN(flax_linen.MGUCell(UNITS, reset_gate=reset_gate))
  variables = _randomized(flax_rnn.init(jax.random.PRNGKey(1), x), jax.random.PRNGKey(2))
  expected = flax_rnn.apply(variables, x)  # <float32>[batch, time, units]

  layer = layers.MGU(UNITS, reset_gate=reset_gate, return_sequences=True)
  params = _from_flax(variables, reset_gate)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(
      jnp.shape, layer.init(jax.random.PRNGKey(0), x.shape[1:])[0])
  got, _ = layer.apply(params, x)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

  # One step of the cell alone, and its gradient.
  cell = cells.mgu(reset_gate=reset_gate)
  h = jax.random.normal(jax.random.PRNGKey(3), (BATCH, UNITS))
  flax_cell = flax_linen.MGUCell(UNITS, reset_gate=reset_gate)
  flax_step = lambda v, h, x: flax_cell.apply({"params": v["params"]["cell"]}, h, x)[1]
  ours_step = lambda v, h, x: cell.step(_from_flax(v, reset_gate), h, x)[1]
  np.testing.assert_allclose(ours_step(variables, h, x[:, 0]),
                             flax_step(variables, h, x[:, 0]), rtol=1e-5, atol=1e-5)
  grads = [jax.grad(lambda v, f=f: jnp.sum(jnp.sin(f(v, h, x[:, 0]))))(variables)
           for f in (ours_step, flax_step)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_mgu_initial_state_and_shapes():
  params = cells.mgu().init(jax.random.PRNGKey(0), FEATURES, UNITS)
  assert params["kernel"].shape == (FEATURES, 2 * UNITS)
  assert params["recurrent_kernel"].shape == (UNITS, 2 * UNITS)
  np.testing.assert_array_equal(params["bias"], np.r_[np.ones(UNITS), np.zeros(UNITS)])
  assert "recurrent_bias" not in cells.mgu(reset_gate=False).init(
      jax.random.PRNGKey(0), FEATURES, UNITS)
