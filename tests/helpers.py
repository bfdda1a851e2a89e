"""Helpers the test modules share (imported as `helpers`: pytest puts tests/ on the path)."""
import types

import jax
import jax.numpy as jnp
import numpy as np


def assert_trees_close(actual, expected, tol: float = 1e-5, atol=None) -> None:
  """Every leaf of two pytrees of one structure equal to `tol` (relative, and absolute
  unless `atol` is given)."""
  leaves_a, leaves_e = jax.tree.leaves(actual), jax.tree.leaves(expected)
  assert jax.tree.structure(actual) == jax.tree.structure(expected), (
      jax.tree.structure(actual), jax.tree.structure(expected))
  for a, e in zip(leaves_a, leaves_e, strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=tol,
                               atol=tol if atol is None else atol)


def ragged_mask(batch: int, time: int) -> np.ndarray:
  """<bool>[batch, time], False at padded steps: row 0 padded at the end, row 1 at the
  start, row 2 in the middle, row 4 (of 5 or more) wholly, the others full, so that
  every masking case is met."""
  mask = np.ones((batch, time), bool)
  mask[0, time - max(time // 3, 1):] = False
  if batch > 1:
    mask[1, :max(time // 4, 1)] = False
  if batch > 2 and time > 2:
    mask[2, time // 2] = False
  if batch > 4:
    mask[4] = False
  return mask


def two_state_cell():
  """A carry of two arrays and an output that is neither of them (2*units wide)."""

  def init(key, input_size, units):
    return (jax.random.normal(key, (input_size, units)) * 0.5, jnp.full((units,), 0.9))

  def initial_carry(batch_size, units, dtype=jnp.float32):
    return {"fast": jnp.zeros((batch_size, units), dtype),
            "slow": jnp.zeros((batch_size, units), dtype)}

  def step(params, carry, x_t):
    w, decay = params
    fast = jnp.tanh(x_t @ w + 0.5 * carry["fast"])
    slow = decay * carry["slow"] + (1 - decay) * fast
    return {"fast": fast, "slow": slow}, jnp.concatenate([fast, slow], axis=-1)

  return types.SimpleNamespace(init=init, initial_carry=initial_carry, step=step)


def sum_batches(rows: int, test_rows: int, batch_size: int = 16, seed: int = 0):
  """A tiny regression for `fit`: x <float32>[rows, 5, 2] uniform, y the sum of x[..., 0]
  over time; the last quarter validates, the first `test_rows` rows test."""
  from rnn_jax.data.batches import ArrayBatches  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=(rows, 5, 2)).astype(np.float32)
  y = x[:, :, 0].sum(axis=1, keepdims=True)
  return ArrayBatches.from_arrays(x, y, validation_split=0.25, x_test=x[:test_rows],
                                  y_test=y[:test_rows], batch_size=batch_size)
