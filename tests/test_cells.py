"""The cells as pure functions: initializers, gradients, and jit/vmap/grad/scan without Flax."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax.test_util import check_grads

from rnn_jax import activations, cells, recurrent

INPUT, UNITS, BATCH, TIME = 3, 4, 2, 5

CELLS = {
    "simple_rnn": lambda: cells.simple_rnn(),
    "simple_rnn_relu": lambda: cells.simple_rnn("relu"),
    "lstm": lambda: cells.lstm(),
    "lstm_hard_sigmoid_nobias": lambda: cells.lstm("elu", "hard_sigmoid", use_bias=False),
    "gru_reset_after": lambda: cells.gru(),
    "gru_reset_before": lambda: cells.gru(reset_after=False),
    "gru_leaky_relu": lambda: cells.gru("leaky_relu", reset_after=False),
}


def _random_params(cell, key, dtype=jnp.float32):
  """The cell's params with every leaf redrawn from normal * 0.5, so biases are nonzero."""
  params = cell.init(key, INPUT, UNITS, dtype)
  keys = jax.random.split(jax.random.fold_in(key, 1), len(params))
  return {name: 0.5 * jax.random.normal(k, p.shape, dtype)
          for (name, p), k in zip(sorted(params.items()), keys)}


def _run(cell, params, carry, xs):
  """lax.scan over cell.step: xs <float>[time, ..., input] -> ys [time, ..., units]."""
  return jax.lax.scan(lambda c, x_t: cell.step(params, c, x_t), carry, xs)


# --- initializers: Keras's defaults


@pytest.mark.parametrize("name,num_gates", [("simple_rnn", 1), ("lstm", 4), ("gru", 3)])
def test_default_initializers(name, num_gates):
  params = cells.CELLS[name]().init(jax.random.PRNGKey(0), INPUT, UNITS)
  kernel, recurrent_kernel = params["kernel"], params["recurrent_kernel"]
  assert kernel.shape == (INPUT, num_gates * UNITS)
  assert recurrent_kernel.shape == (UNITS, num_gates * UNITS)
  limit = np.sqrt(6.0 / (INPUT + num_gates * UNITS))  # glorot uniform over the fused matrix
  assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.5 * limit
  # orthogonal: the [units, gates*units] matrix has orthonormal rows
  np.testing.assert_allclose(recurrent_kernel @ recurrent_kernel.T, np.eye(UNITS), atol=1e-5)
  bias = params["bias"]
  if name == "lstm":  # unit_forget_bias: the f block (i, f, c, o) starts at one
    np.testing.assert_array_equal(bias, np.r_[np.zeros(UNITS), np.ones(UNITS), np.zeros(2 * UNITS)])
  elif name == "gru":  # reset_after: input and recurrent bias
    assert bias.shape == (2, 3 * UNITS) and not bias.any()
  else:
    assert bias.shape == (UNITS,) and not bias.any()


def test_init_options():
  key = jax.random.PRNGKey(0)
  assert "bias" not in cells.lstm(use_bias=False).init(key, INPUT, UNITS)
  assert not cells.lstm(unit_forget_bias=False).init(key, INPUT, UNITS)["bias"].any()
  assert cells.gru(reset_after=False).init(key, INPUT, UNITS)["bias"].shape == (3 * UNITS,)


# --- the math, checked by hand on the parts the parity tests cannot isolate


def test_lstm_gate_order_is_i_f_c_o():
  cell = cells.lstm()
  params = {"kernel": jnp.zeros((1, 4)), "recurrent_kernel": jnp.zeros((1, 4)),
            "bias": jnp.array([20.0, -20.0, 1.0, 20.0])}  # i open, f closed, c = tanh(1), o open
  (h, c), y = cell.step(params, (jnp.ones((1, 1)), jnp.full((1, 1), 5.0)), jnp.zeros((1, 1)))
  np.testing.assert_allclose(c, np.tanh(1.0), atol=1e-6)  # the old c (5) is forgotten
  np.testing.assert_allclose(h, np.tanh(np.tanh(1.0)), atol=1e-6)
  np.testing.assert_array_equal(y, h)


@pytest.mark.parametrize("reset_after", [False, True])
def test_gru_keras_z_convention(reset_after):
  """Keras's h_t = z * h_{t-1} + (1 - z) * h~: z near 1 keeps the state, near 0 replaces it."""
  cell = cells.gru(reset_after=reset_after)
  params = cell.init(jax.random.PRNGKey(0), INPUT, UNITS)
  h0, x = jnp.full((1, UNITS), 0.7), jnp.ones((1, INPUT))
  for z_bias, expected in [(30.0, h0), (-30.0, None)]:
    bias = params["bias"].at[..., :UNITS].set(0.0)
    bias = bias.at[0, :UNITS].set(z_bias) if reset_after else bias.at[:UNITS].set(z_bias)
    h, _ = cell.step({**params, "bias": bias}, h0, x)
    if expected is not None:
      np.testing.assert_allclose(h, expected, atol=1e-6)
    else:  # the candidate alone, which is not the old state
      assert np.abs(h - h0).max() > 1e-2


def test_activations_by_name():
  x = jnp.array([-2.0, -0.5, 0.0, 0.5, 4.0])
  np.testing.assert_allclose(activations.get("leaky_relu")(x), np.maximum(0.1 * x, x))
  np.testing.assert_allclose(activations.get("hard_sigmoid")(x), np.clip(x / 6 + 0.5, 0, 1),
                             atol=1e-7)
  np.testing.assert_allclose(activations.get("elu")(x), np.where(x > 0, x, np.expm1(x)), atol=1e-7)
  np.testing.assert_allclose(activations.get("relu")(x), np.maximum(x, 0))
  np.testing.assert_allclose(activations.get("sigmoid")(x), 1 / (1 + np.exp(-x)), atol=1e-7)
  np.testing.assert_allclose(activations.get("tanh")(x), np.tanh(x), atol=1e-7)
  np.testing.assert_array_equal(activations.get(None)(x), x)
  assert activations.get(jnp.sin) is jnp.sin
  with pytest.raises(ValueError, match="unknown activation 'swishy'"):
    activations.get("swishy")


# --- gradients


@pytest.mark.parametrize("name", sorted(CELLS))
def test_check_grads_float64(name):
  """Forward- and reverse-mode derivatives of two steps against finite differences."""
  with jax.enable_x64(True):
    cell = CELLS[name]()
    key = jax.random.PRNGKey(0)
    params = _random_params(cell, key, jnp.float64)
    carry = jax.tree_util.tree_map(
        lambda c: 0.3 * jax.random.normal(jax.random.fold_in(key, 2), c.shape, jnp.float64),
        cell.initial_carry(BATCH, UNITS, jnp.float64))
    xs = jax.random.normal(jax.random.fold_in(key, 3), (2, BATCH, INPUT), jnp.float64)

    @jax.jit
    def loss(params, carry, xs):
      for x_t in xs:
        carry, y = cell.step(params, carry, x_t)
      return jnp.sum(y ** 2) + sum(jnp.sum(c) for c in jax.tree_util.tree_leaves(carry))

    check_grads(loss, (params, carry, xs), order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["lstm", "gru_reset_before"])
def test_check_grads_through_the_unroll(name):
  """The layers' path: `recurrent.unroll` with a mask, go_backwards and dropout masks."""
  with jax.enable_x64(True):
    cell = CELLS[name]()
    params = _random_params(cell, jax.random.PRNGKey(0), jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (BATCH, 4, INPUT), jnp.float64)
    mask = jnp.array([[True, False, True, True], [True, True, True, False]])

    @jax.jit
    def loss(params, xs):
      ys, carry = recurrent.unroll(cell, params, xs, units=UNITS, mask=mask, go_backwards=True,
                                   return_sequences=True, dropout=0.3, recurrent_dropout=0.3,
                                   training=True, key=jax.random.PRNGKey(2))
      return jnp.sum(ys ** 2) + sum(jnp.sum(c) for c in jax.tree_util.tree_leaves(carry))

    check_grads(loss, (params, xs), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_check_grads_second_order_through_scan():
  with jax.enable_x64(True):
    cell = cells.gru()
    params = _random_params(cell, jax.random.PRNGKey(0), jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 1, INPUT), jnp.float64)
    loss = jax.jit(lambda params: jnp.sum(_run(cell, params, cell.initial_carry(1, UNITS,
                                                                                jnp.float64),
                                               xs)[1] ** 2))
    check_grads(loss, (params,), order=2, modes=("rev",), atol=1e-5, rtol=1e-5)


# --- composition with jit, vmap, grad and lax.scan, no Flax


@pytest.mark.parametrize("name", ["lstm", "gru_reset_before"])
def test_jit_vmap_grad_scan_compose(name):
  cell = CELLS[name]()
  params = _random_params(cell, jax.random.PRNGKey(0))
  xs = jax.random.normal(jax.random.PRNGKey(1), (BATCH, TIME, INPUT))
  targets = jax.random.normal(jax.random.PRNGKey(2), (BATCH, UNITS))

  def example_loss(params, x, target):  # one unbatched example: x <float32>[time, input]
    _, ys = _run(cell, params, cell.initial_carry((), UNITS), x)
    return jnp.mean((ys[-1] - target) ** 2)

  def batch_loss(params, xs, targets):
    return jnp.mean(jax.vmap(example_loss, in_axes=(None, 0, 0))(params, xs, targets))

  loss, grads = jax.jit(jax.value_and_grad(batch_loss))(params, xs, targets)
  # the same loss from the batched cell run directly (no vmap), and from the layer's unroll
  _, ys = _run(cell, params, cell.initial_carry(BATCH, UNITS), jnp.swapaxes(xs, 0, 1))
  np.testing.assert_allclose(loss, jnp.mean((ys[-1] - targets) ** 2), rtol=1e-5)
  last, _ = recurrent.unroll(cell, params, xs, units=UNITS)
  np.testing.assert_allclose(last, ys[-1], atol=1e-6)
  # per-example gradients under vmap, averaged, are the batch gradient
  per_example = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(params, xs, targets)
  for g, g_batch in zip(jax.tree_util.tree_leaves(per_example), jax.tree_util.tree_leaves(grads)):
    np.testing.assert_allclose(g.mean(axis=0), g_batch, atol=1e-6)
  assert all(np.abs(g).max() > 0 for g in jax.tree_util.tree_leaves(grads))


def test_a_gradient_step_lowers_the_loss():
  cell = cells.gru()
  params = cell.init(jax.random.PRNGKey(0), INPUT, UNITS)
  xs = jax.random.normal(jax.random.PRNGKey(1), (TIME, BATCH, INPUT))

  @jax.jit
  def loss(params):
    _, ys = _run(cell, params, cell.initial_carry(BATCH, UNITS), xs)
    return jnp.mean((ys - 0.5) ** 2)

  before = loss(params)
  params = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, jax.grad(loss)(params))
  assert loss(params) < before
