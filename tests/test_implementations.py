"""Every implementation of the unroll equals the portable one, "scan" (autodiff of `lax.scan`).

The gate layouts ("per_gate", the CPU default; "fused", the accelerator default) and the
recompute backward pass: values, parameter gradients, input gradients and initial-carry
gradients agree to 1e-5 for every cell, with and without masks, input and recurrent
dropout, go_backwards, return_sequences, unroll and Bidirectional.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import _fast_paths, cells, layers, recurrent

BATCH, TIME, FEATURES, UNITS = 3, 7, 4, 5
FAST = ("per_gate", "fused", "recompute")  # each compared with "scan"

CELLS = {
    "simple_rnn": cells.simple_rnn(),
    "lstm": cells.lstm(),
    "gru": cells.gru(),
    "gru_reset_before": cells.gru(reset_after=False),
    "lstm_relu_no_bias": cells.lstm(activation="relu", use_bias=False),
}


def _inputs(seed=0):
  rng = np.random.RandomState(seed)
  x = jnp.asarray(rng.randn(BATCH, TIME, FEATURES).astype(np.float32))
  # Ragged lengths, one sequence padded at the front (masks need not be a suffix).
  mask = np.ones((BATCH, TIME), bool)
  mask[0, 5:] = False
  mask[1, :2] = False
  return x, jnp.asarray(mask)


def _loss_and_grads(cell, params, x, mask, implementation, *, initial_carry=None, **kwargs):
  """Gradients of a loss that reads every output and the final carry."""

  def loss(params, x, initial_carry):
    y, carry = recurrent.unroll(cell, params, x, units=UNITS, mask=mask,
                                implementation=implementation,
                                initial_carry=initial_carry, key=jax.random.PRNGKey(7),
                                **kwargs)
    weights = jnp.sin(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape)
    carry_term = sum(jnp.sum(jnp.cos(leaf)) for leaf in jax.tree_util.tree_leaves(carry))
    return jnp.sum(weights * y) + carry_term

  return jax.value_and_grad(loss, argnums=(0, 1, 2))(params, x, initial_carry)


def _assert_close(fast, reference):
  for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(reference),
                  strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell_name", sorted(CELLS))
@pytest.mark.parametrize("implementation", FAST)
@pytest.mark.parametrize("masked,dropout,go_backwards,return_sequences", [
    (False, False, False, False),
    (True, False, False, True),
    (True, True, True, False),
])
def test_fast_gradients_equal_autodiff(cell_name, implementation, masked, dropout,
                                       go_backwards, return_sequences):
  cell = CELLS[cell_name]
  x, mask = _inputs()
  params = cell.init(jax.random.PRNGKey(1), FEATURES, UNITS)
  if "bias" in params:  # non-zero biases, so that their gradients are exercised
    params["bias"] = params["bias"] + 0.1 * jnp.arange(params["bias"].size).reshape(
        params["bias"].shape) / params["bias"].size
  initial_carry = jax.tree_util.tree_map(
      lambda z: z + 0.3, cell.initial_carry(BATCH, UNITS))
  kwargs = dict(go_backwards=go_backwards, return_sequences=return_sequences,
                zero_output_for_mask=masked and return_sequences, training=True,
                dropout=0.3 if dropout else 0.0, recurrent_dropout=0.4 if dropout else 0.0)
  fast = _loss_and_grads(cell, params, x, mask if masked else None, implementation,
                         initial_carry=initial_carry, **kwargs)
  reference = _loss_and_grads(cell, params, x, mask if masked else None, "scan",
                              initial_carry=initial_carry, **kwargs)
  _assert_close(fast, reference)
  # The gradients are not trivially zero.
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree_util.tree_leaves(fast[1][0]))


@pytest.mark.parametrize("implementation", FAST)
@pytest.mark.parametrize("dropout,recurrent_dropout", [(0.2, 0.0), (0.0, 0.3)])
def test_fast_gradients_with_one_kind_of_dropout(implementation, dropout, recurrent_dropout):
  # Input dropout alone shares one mask across gates; recurrent dropout gives one per gate.
  cell = cells.lstm()
  x, mask = _inputs(1)
  params = cell.init(jax.random.PRNGKey(2), FEATURES, UNITS)
  kwargs = dict(training=True, dropout=dropout, recurrent_dropout=recurrent_dropout,
                return_sequences=True)
  _assert_close(_loss_and_grads(cell, params, x, mask, implementation, **kwargs),
                _loss_and_grads(cell, params, x, mask, "scan", **kwargs))


@pytest.mark.parametrize("implementation", FAST)
@pytest.mark.parametrize("unroll", [1, 3, 8])
def test_fast_gradients_with_unroll(implementation, unroll):
  cell = cells.gru()
  x, mask = _inputs(2)
  params = cell.init(jax.random.PRNGKey(3), FEATURES, UNITS)
  _assert_close(_loss_and_grads(cell, params, x, mask, implementation, unroll=unroll),
                _loss_and_grads(cell, params, x, mask, "scan", unroll=1))


@pytest.mark.parametrize("implementation", FAST)
def test_fast_path_in_a_stacked_bidirectional_model(implementation):
  # The path every layer takes: Embedding(mask_zero) -> Bidirectional(LSTM) -> GRU -> Dense.
  def model(implementation):
    return layers.Sequential([
        layers.Embedding(11, 4, mask_zero=True),
        layers.Bidirectional(layers.RNN(cells.lstm(), 3, return_sequences=True,
                                        recurrent_dropout=0.2, implementation=implementation)),
        layers.RNN(cells.gru(), 5, dropout=0.1, implementation=implementation),
        layers.Dense(1),
    ])

  ids = jnp.asarray([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5], [0, 0, 7, 8, 9]])
  grads = {}
  for name in (implementation, "scan"):
    net = model(name)
    params = net.init(jax.random.PRNGKey(0), ids)
    grads[name] = jax.value_and_grad(
        lambda p: jnp.sum(net.apply(p, ids, training=True, key=jax.random.PRNGKey(5)) ** 2)
    )(params)
  _assert_close(grads[implementation], grads["scan"])


def test_fast_path_under_jit_and_vmap_of_grad():
  # Per-example gradients: vmap over a batch axis of the custom VJP.
  cell = cells.lstm()
  x, _ = _inputs(3)
  params = cell.init(jax.random.PRNGKey(4), FEATURES, UNITS)

  def per_example(implementation):
    def loss(p, x_one):
      y, _ = recurrent.unroll(cell, p, x_one[None], units=UNITS, implementation=implementation)
      return jnp.sum(y ** 2)
    return jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(params, x)

  for implementation in FAST:
    _assert_close(per_example(implementation), per_example("scan"))


@pytest.mark.parametrize("implementation", FAST)
def test_unroll_together_equals_separate_unrolls(implementation):
  # Two recurrences in one loop (Bidirectional's directions): the same values and
  # gradients as two loops, with different cells, widths, masks and dropout.
  x, mask = _inputs(4)
  forward, backward = cells.lstm(), cells.gru()
  p_f = forward.init(jax.random.PRNGKey(1), FEATURES, UNITS)
  p_b = backward.init(jax.random.PRNGKey(2), FEATURES, UNITS + 1)

  def calls(p_f, p_b, x):
    return [dict(cell=forward, params=p_f, inputs=x, units=UNITS, mask=mask,
                 return_sequences=True,
                 zero_output_for_mask=True, dropout=0.2, recurrent_dropout=0.3,
                 training=True, key=jax.random.PRNGKey(5)),
            dict(cell=backward, params=p_b, inputs=x, units=UNITS + 1, mask=mask,
                 go_backwards=True,
                 dropout=0.1, training=True, key=jax.random.PRNGKey(6))]

  def loss(together, p_f, p_b, x):
    if together:
      outputs = recurrent.unroll_together(
          [dict(kwargs, implementation=implementation) for kwargs in calls(p_f, p_b, x)])
    else:
      outputs = [recurrent.unroll(**kwargs, implementation="scan")
                 for kwargs in calls(p_f, p_b, x)]
    return sum(jnp.sum(jnp.sin(y)) + jnp.sum(jnp.cos(jax.tree_util.tree_leaves(c)[0]))
               for y, c in outputs)

  _assert_close(jax.value_and_grad(lambda *a: loss(True, *a), argnums=(0, 1, 2))(p_f, p_b, x),
                jax.value_and_grad(lambda *a: loss(False, *a), argnums=(0, 1, 2))(p_f, p_b, x))


@pytest.mark.parametrize("mask_kind", ["none", "shared", "per_gate"])
def test_gate_matmuls_derivatives_equal_plain_matmuls(mask_kind):
  # `_fast_paths.gate_matmuls` has a custom JVP (one kernel matmul in its transpose); its
  # forward- and reverse-mode derivatives must be those of the plain per-gate matmuls.
  rng = np.random.RandomState(5)
  v = jnp.asarray(rng.randn(2, BATCH, FEATURES).astype(np.float32))  # batch shape [2, 3]
  kernel = jnp.asarray(rng.randn(FEATURES, 4 * UNITS).astype(np.float32))
  masks = {"none": None,
           "shared": jnp.asarray(rng.rand(1, 2, BATCH, FEATURES).astype(np.float32)),
           "per_gate": jnp.asarray(rng.rand(4, 2, BATCH, FEATURES).astype(np.float32))}
  mask = masks[mask_kind]

  def fast(v, kernel):
    return jnp.stack(_fast_paths.gate_matmuls(v, kernel, mask, 4))

  def plain(v, kernel):
    gate_masks = [None] * 4 if mask is None else [mask[min(g, mask.shape[0] - 1)]
                                                  for g in range(4)]
    return jnp.stack([(v if m is None else v * m) @ k
                      for m, k in zip(gate_masks, jnp.split(kernel, 4, axis=-1))])

  np.testing.assert_array_equal(fast(v, kernel), plain(v, kernel))
  for derivative in (jax.jacrev, jax.jacfwd):
    _assert_close(derivative(fast, argnums=(0, 1))(v, kernel),
                  derivative(plain, argnums=(0, 1))(v, kernel))
