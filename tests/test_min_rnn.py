"""minGRU and minLSTM: the paper's formulas, and the step, the parallel scans and the
log-space form agreeing in values and gradients."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells
from rnn_jax.cells.min_gru import g, log_g
from rnn_jax.linear_scan import linear_recurrence

INPUT, UNITS, BATCH, TIME = 3, 4, 2, 9
CELLS = {"min_gru": cells.min_gru, "min_lstm": cells.min_lstm}
MASK = np.array([[0, 0, 1, 1, 0, 1, 1, 1, 0],   # a padded prefix, a gap and a padded end
                 [1, 1, 1, 1, 1, 1, 1, 0, 1]], bool)


def _params(cell, key):
  """Init's params with the bias redrawn too, so that no gate sits at exactly 0."""
  params = cell.init(key, INPUT, UNITS)
  return {"kernel": params["kernel"] * 2.0,
          "bias": jax.random.normal(jax.random.fold_in(key, 1), params["bias"].shape)}


def _data(key):
  k_x, k_h = jax.random.split(key)
  return (jax.random.normal(k_x, (BATCH, TIME, INPUT)),
          jax.random.normal(k_h, (BATCH, UNITS)))


def _by_steps(cell, params, xs, h0, mask=None, reverse=False):
  """The reference: lax.scan over cell.step; a masked step keeps h. [batch, time, units]."""
  mask = jnp.ones(xs.shape[:2], bool) if mask is None else mask

  def step(h, xm):
    x_t, m_t = xm
    new, _ = cell.step(params, h, x_t)
    h = jnp.where(m_t[:, None], new, h)
    return h, h

  _, hs = jax.lax.scan(step, h0, (jnp.swapaxes(xs, 0, 1), jnp.swapaxes(mask, 0, 1)),
                       reverse=reverse)
  return jnp.swapaxes(hs, 0, 1)


def _parallel(method, log_space):
  def run(cell, params, xs, h0, mask=None, reverse=False):
    a, b = cell.coefficients(params, xs, log_space=log_space)
    return linear_recurrence(a, b, h0, mask=mask, reverse=reverse, method=method,
                             log_space=log_space)
  return run


def _time_major(method, log_space):
  """The unroll's layout: the coefficients of time-first inputs, time-first states."""
  def run(cell, params, xs, h0, mask=None, reverse=False):
    a, b = cell.coefficients(params, jnp.swapaxes(xs, 0, 1), log_space=log_space)
    mask = None if mask is None else jnp.swapaxes(mask, 0, 1)
    return jnp.swapaxes(linear_recurrence(a, b, h0, mask=mask, reverse=reverse, method=method,
                                          log_space=log_space, time_major=True), 0, 1)
  return run


RUNS = {"associative": _parallel("associative", False),
        "time_major_sequential": _time_major("sequential", False),
        "time_major_log_associative": _time_major("associative", True),
        "sequential": _parallel("sequential", False),
        "log_associative": _parallel("associative", True),
        "log_sequential": _parallel("sequential", True)}


# --- the paper's formulas


def test_g_is_continuous_and_positive_and_log_g_is_its_log():
  x = jnp.array([-30.0, -2.0, -1e-6, 0.0, 1e-6, 0.7, 40.0])
  np.testing.assert_allclose(g(x), [1 / (1 + math.exp(30)), 1 / (1 + math.exp(2)),
                                            0.5 - 0.25e-6, 0.5, 0.5 + 1e-6, 1.2, 40.5], rtol=1e-6)
  np.testing.assert_allclose(log_g(x), np.log(g(x)), rtol=1e-6)
  assert np.isfinite(jax.grad(lambda x: log_g(x).sum())(x)).all()


# Two steps, one unit, inputs [1, 0] then [0, 1], chosen so that every gate is a round
# number: sigmoid(0) = 1/2, sigmoid(+-ln 3) = 3/4, 1/4; g(1) = 1.5, g(-ln 3) = 1/4.
LN3 = math.log(3.0)
X2 = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])


@pytest.mark.parametrize("h0,expected", [(0.0, [0.75, 0.375]), (1.0, [1.25, 0.5])])
def test_min_gru_two_steps_by_hand(h0, expected):
  # kernel columns z, h. Step 1: z = 1/2, h~ = 1.5: h1 = h0/2 + 3/4.
  # Step 2: z = 3/4, h~ = 1/4: h2 = h1/4 + 3/16.
  cell = cells.min_gru()
  params = {"kernel": jnp.array([[0.0, 1.0], [LN3, -LN3]]), "bias": jnp.zeros(2)}
  for run in [_by_steps, *RUNS.values()]:
    h = run(cell, params, X2, jnp.full((1, 1), h0))
    np.testing.assert_allclose(h[0, :, 0], expected, rtol=1e-6)


@pytest.mark.parametrize("h0,expected", [(0.0, [0.75, 0.375]), (1.0, [1.25, 0.5])])
def test_min_lstm_two_steps_by_hand(h0, expected):
  # kernel columns i, f, h. Step 1: i = f = 1/2, so i' = f' = 1/2; h~ = 1.5.
  # Step 2: i = 3/4, f = 1/4, so i' = 3/4, f' = 1/4 (they already sum to 1); h~ = 1/4.
  cell = cells.min_lstm()
  params = {"kernel": jnp.array([[0.0, 0.0, 1.0], [LN3, -LN3, -LN3]]), "bias": jnp.zeros(3)}
  for run in [_by_steps, *RUNS.values()]:
    h = run(cell, params, X2, jnp.full((1, 1), h0))
    np.testing.assert_allclose(h[0, :, 0], expected, rtol=1e-6)


def test_min_lstm_normalises_gates_that_do_not_sum_to_one():
  # i = f = sigmoid(2): i' = f' = 1/2 whatever their size; h~ = g(2) = 2.5.
  cell = cells.min_lstm()
  params = {"kernel": jnp.zeros((1, 3)), "bias": jnp.array([2.0, 2.0, 2.0])}
  h, y = cell.step(params, jnp.array([[1.0]]), jnp.array([[0.0]]))
  np.testing.assert_allclose(h, [[0.5 * 1.0 + 0.5 * 2.5]], rtol=1e-6)
  np.testing.assert_array_equal(h, y)


def _np_g(x):
  return np.where(x >= 0, x + 0.5, 1 / (1 + np.exp(-x)))


def test_min_gru_against_numpy_by_hand():
  """The minGRU equations in float64 numpy with given weights, over a whole sequence."""
  rng = np.random.default_rng(0)
  w_z, w_h = rng.normal(size=(INPUT, UNITS)), rng.normal(size=(INPUT, UNITS))
  b_z, b_h = rng.normal(size=UNITS), rng.normal(size=UNITS)
  xs = rng.normal(size=(BATCH, TIME, INPUT))
  h = np.zeros((BATCH, UNITS))
  expected = []
  for t in range(TIME):
    z = 1 / (1 + np.exp(-(xs[:, t] @ w_z + b_z)))
    h = (1 - z) * h + z * _np_g(xs[:, t] @ w_h + b_h)
    expected.append(h)
  expected = np.stack(expected, 1)

  cell = cells.min_gru()
  params = {"kernel": jnp.asarray(np.concatenate([w_z, w_h], 1), jnp.float32),
            "bias": jnp.asarray(np.concatenate([b_z, b_h]), jnp.float32)}
  xs = jnp.asarray(xs, jnp.float32)
  h0 = cell.initial_carry(BATCH, UNITS)
  for run in [_by_steps, *RUNS.values()]:
    np.testing.assert_allclose(run(cell, params, xs, h0), expected, rtol=1e-5, atol=1e-6)


def test_min_lstm_against_numpy_by_hand():
  rng = np.random.default_rng(1)
  w_i, w_f, w_h = (rng.normal(size=(INPUT, UNITS)) for _ in range(3))
  xs = rng.normal(size=(BATCH, TIME, INPUT))
  h = np.zeros((BATCH, UNITS))
  expected = []
  for t in range(TIME):
    i, f = (1 / (1 + np.exp(-(xs[:, t] @ w))) for w in (w_i, w_f))
    h = f / (f + i) * h + i / (f + i) * _np_g(xs[:, t] @ w_h)
    expected.append(h)
  cell = cells.min_lstm()
  params = {"kernel": jnp.asarray(np.concatenate([w_i, w_f, w_h], 1), jnp.float32),
            "bias": jnp.zeros(3 * UNITS)}
  h = _by_steps(cell, params, jnp.asarray(xs, jnp.float32), cell.initial_carry(BATCH, UNITS))
  np.testing.assert_allclose(h, np.stack(expected, 1), rtol=1e-5, atol=1e-6)


# --- the contract


@pytest.mark.parametrize("name,gates", [("min_gru", 2), ("min_lstm", 3)])
def test_params_and_carry_follow_the_contract(name, gates):
  cell = CELLS[name]()
  params = cell.init(jax.random.PRNGKey(0), INPUT, UNITS)
  assert set(params) == {"kernel", "bias"}  # no recurrent kernel
  assert params["kernel"].shape == (INPUT, gates * UNITS)
  np.testing.assert_array_equal(params["bias"], np.zeros(gates * UNITS))
  limit = math.sqrt(6 / (INPUT + gates * UNITS))  # glorot uniform over the fused matrix
  assert 0 < np.abs(params["kernel"]).max() <= limit
  carry = cell.initial_carry((2, 5), UNITS)
  np.testing.assert_array_equal(carry, np.zeros((2, 5, UNITS)))
  carry, y = jax.jit(cell.step)(params, carry, jnp.ones((2, 5, INPUT)))
  assert carry.shape == y.shape == (2, 5, UNITS)


@pytest.mark.parametrize("name", CELLS)
def test_log_space_coefficients_are_the_logs_of_the_direct_ones(name):
  cell = CELLS[name]()
  params = _params(cell, jax.random.PRNGKey(2))
  xs = 3.0 * _data(jax.random.PRNGKey(3))[0]
  a, b = cell.coefficients(params, xs)
  log_a, log_b = cell.coefficients(params, xs, log_space=True)
  assert a.shape == b.shape == (BATCH, TIME, UNITS)
  assert (a > 0).all() and (a <= 1).all() and (b > 0).all()
  np.testing.assert_allclose(jnp.exp(log_a), a, rtol=1e-5)
  np.testing.assert_allclose(jnp.exp(log_b), b, rtol=1e-5)


# --- step == parallel, values and gradients


# Each compiles the six forms with their gradients: two in the default run, all with -m slow.
@pytest.mark.parametrize("name,masked,reverse", [
    pytest.param(name, masked, reverse, id=f"{name}-{kind}",
                 marks=() if (name, kind) in (("min_gru", "masked"),
                                              ("min_lstm", "masked_reverse"))
                 else pytest.mark.slow)
    for name in CELLS
    for kind, masked, reverse in [("unmasked", False, False), ("masked", True, False),
                                  ("masked_reverse", True, True)]])
def test_step_and_parallel_forms_agree(name, masked, reverse):
  cell = CELLS[name]()
  params = _params(cell, jax.random.PRNGKey(4))
  xs, h0 = _data(jax.random.PRNGKey(5))
  mask = jnp.asarray(MASK) if masked else None
  weights = jax.random.normal(jax.random.PRNGKey(6), (BATCH, TIME, UNITS))

  @jax.jit
  def states_and_grads(params, xs, h0):
    """{method: (h, gradients of a weighted sum of h w.r.t. params, xs, h0)}, in one jit."""
    out = {}
    for method, run in {"steps": _by_steps, **RUNS}.items():
      loss = lambda p, x, h, run=run: (run(cell, p, x, h, mask, reverse) * weights).sum()
      h = run(cell, params, xs, h0, mask, reverse)
      out[method] = h, jax.grad(loss, argnums=(0, 1, 2))(params, xs, h0)
    return out

  results = states_and_grads(params, xs, h0)
  expected_h, expected_grads = results.pop("steps")
  for method, (h, grads) in results.items():
    np.testing.assert_allclose(h, expected_h, rtol=1e-5, atol=1e-6, err_msg=method)
    for got, want in zip(jax.tree_util.tree_leaves(grads),
                         jax.tree_util.tree_leaves(expected_grads)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=method)


def test_masked_steps_keep_the_state():
  cell = cells.min_gru()
  params = _params(cell, jax.random.PRNGKey(7))
  xs, h0 = _data(jax.random.PRNGKey(8))
  mask = jnp.asarray(MASK)
  for method, run in RUNS.items():
    h = run(cell, params, xs, h0, mask)
    previous = jnp.concatenate([h0[:, None], h[:, :-1]], 1)
    # Exactly in a loop; the associative scans reach h_t and h_{t-1} through different
    # trees of products, which round differently.
    rtol = 1e-6 if method.endswith("associative") else 0
    np.testing.assert_allclose(np.asarray(h)[~MASK], np.asarray(previous)[~MASK],
                               rtol=rtol, err_msg=method)


# --- the initial state in log space


@pytest.mark.parametrize("h0_value", [0.0, -2.0, 3.0])
def test_log_space_takes_any_initial_state(h0_value):
  """log-space scans add h0 outside the logs: zero and negative h0 work, and a zero h0
  (the initial carry, and a padded prefix after it) has finite gradients."""
  cell = cells.min_lstm()
  params = _params(cell, jax.random.PRNGKey(9))
  xs, _ = _data(jax.random.PRNGKey(10))
  h0 = jnp.full((BATCH, UNITS), h0_value)
  expected = _by_steps(cell, params, xs, h0, jnp.asarray(MASK))
  for method in ["log_associative", "log_sequential"]:
    run = RUNS[method]
    np.testing.assert_allclose(run(cell, params, xs, h0, jnp.asarray(MASK)), expected,
                               rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda p, h: run(cell, p, xs, h, jnp.asarray(MASK)).sum(),
                     argnums=(0, 1))(params, h0)
    assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))


def test_paper_initial_state_is_g_of_h0():
  """The paper's log-space scan puts log g(h0) first inside the logcumsumexp; passing
  g(h0) as the carry reproduces it."""
  cell = cells.min_gru()
  params = _params(cell, jax.random.PRNGKey(11))
  xs, h0_raw = _data(jax.random.PRNGKey(12))
  log_a, log_b = cell.coefficients(params, xs, log_space=True)
  # The paper's appendix B: a* padded with a leading 0, values [log g(h0), log b_1, ...].
  a_star = jnp.pad(jnp.cumsum(log_a, 1), ((0, 0), (1, 0), (0, 0)))
  values = jnp.concatenate([log_g(h0_raw)[:, None], log_b], 1)
  paper = jnp.exp(a_star + jax.lax.cumlogsumexp(values - a_star, axis=1))[:, 1:]
  np.testing.assert_allclose(_by_steps(cell, params, xs, g(h0_raw)), paper, rtol=1e-5)


def test_long_sequence_log_space_matches_direct():
  """2000 steps of gates near 1/2: products of a reach 1e-600, far below float32, while
  the state stays of order 1."""
  cell = cells.min_gru()
  params = cell.init(jax.random.PRNGKey(13), INPUT, UNITS)
  xs = jax.random.normal(jax.random.PRNGKey(14), (1, 2000, INPUT))
  h0 = jnp.ones((1, UNITS))
  direct = RUNS["sequential"](cell, params, xs, h0)
  # Every form, the log-space associative scan included (it composes the pairs in log
  # space rather than subtracting a* of size ~1400 as Heinsen's form does).
  for method in ["associative", "log_sequential", "log_associative"]:
    np.testing.assert_allclose(RUNS[method](cell, params, xs, h0), direct, rtol=1e-5, atol=1e-6,
                               err_msg=method)


def test_unknown_method_is_an_error():
  a = jnp.ones((1, 2, 1))
  with pytest.raises(ValueError, match="method"):
    linear_recurrence(a, a, method="cumsum")
