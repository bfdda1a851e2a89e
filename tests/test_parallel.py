"""rnn_jax.parallel: Newton's method over time (DEER, ELK) against the sequential scan.

Three kinds of weights:
  * "init": the cell's own initializer (Glorot / orthogonal, zero biases).
  * "trained": 300 Adam steps on a memory task (`_trained`), in the slow checks.
  * "trained-like": the kernels doubled (the recurrent kernel's singular values all 2)
    and biases drawn from normal * 0.5. Trained RNNs move from their init in this way:
    larger recurrent weights, saturated gates, long memory, which is what makes Newton
    need more iterations. It stands in for a few hundred Adam steps, which would cost
    this file seconds it does not have. (Weights drawn as normal * 1.5, spectral radius
    ~4, make a GRU(8) chaotic: float32 Newton then stalls above tol and every method
    falls back to the sequential scan; kernels x3 make DEER overflow on an LSTM.)
"""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnn_jax import cells, parallel

INPUT, UNITS, BATCH = 3, 8, 2

CELLS = {
    "gru": lambda: cells.gru(),
    "lstm": lambda: cells.lstm(),
    "simple_rnn": lambda: cells.simple_rnn("tanh"),
}


_TRAINED = {}


def _trained(cell, key):
  """The cell trained by 300 Adam steps on a memory task (output 0 at step t reads input 0
  of step t - 5, length 40): weights that training moved, with long memory. Cached per
  cell name."""
  name = getattr(cell, "name", type(cell).__name__)
  if name not in _TRAINED:
    params = cell.init(key, INPUT, UNITS)
    optimizer = optax.adam(1e-2)

    def loss(params, xs):
      _, ys = _sequential(cell.step, params, cell.initial_carry(16, UNITS), xs)
      return jnp.mean(jnp.square(ys[5:, :, 0] - xs[:-5, :, 0]))

    @jax.jit
    def train(params):
      def update(state, key):
        params, opt_state = state
        grads = jax.grad(loss)(params, jax.random.normal(key, (40, 16, INPUT)))
        updates, opt_state = optimizer.update(grads, opt_state)
        return (optax.apply_updates(params, updates), opt_state), None
      keys = jax.random.split(jax.random.PRNGKey(7), 300)
      return jax.lax.scan(update, (params, optimizer.init(params)), keys)[0][0]

    _TRAINED[name] = train(params)
  return _TRAINED[name]


def _params(cell, weights, key=jax.random.PRNGKey(0)):
  if weights == "trained":
    return _trained(cell, key)
  params = cell.init(key, INPUT, UNITS)
  if weights == "init":
    return params
  noise = jax.random.normal(jax.random.fold_in(key, 1), params["bias"].shape)
  return {name: p + 0.5 * noise if name == "bias" else 2.0 * p for name, p in params.items()}


def _problem(cell, weights, time, key=jax.random.PRNGKey(1)):
  xs = jax.random.normal(key, (time, BATCH, INPUT))
  carry = jax.tree_util.tree_map(lambda a: a + 0.1, cell.initial_carry(BATCH, UNITS))
  return _params(cell, weights), carry, xs


def _sequential(step, params, carry, xs):
  return jax.lax.scan(lambda c, x: step(params, c, x), carry, xs)


def _rel_err(a, b):
  leaves = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
  return max(float(jnp.max(jnp.abs(x - y)) / jnp.maximum(jnp.max(jnp.abs(y)), 1e-6))
             for x, y in leaves)


def _check_values(cell, weights, time, method, may_fall_back=False, max_iter=None):
  """Newton's solution equals the scan's. With `may_fall_back`, a solve that does not
  converge is allowed, but then it warns and returns the scan's result (the contract)."""
  params, carry, xs = _problem(cell, weights, time)
  final, outputs = jax.jit(_sequential, static_argnums=0)(cell.step, params, carry, xs)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    sol = jax.jit(lambda p, c, x: parallel.evaluate(cell.step, p, c, x, method=method,
                                                    max_iter=max_iter))(params, carry, xs)
    jax.block_until_ready(sol)
    jax.effects_barrier()
  if not (may_fall_back and not bool(sol.converged)):
    assert bool(sol.converged), int(sol.iterations)
  else:
    assert any("did not converge" in str(w.message) for w in caught), caught
  assert sol.outputs.shape == outputs.shape and sol.iterations.dtype == jnp.int32
  assert 1 <= int(sol.iterations) <= time
  assert _rel_err(sol.outputs, outputs) < 1e-4
  assert _rel_err(sol.final_carry, final) < 1e-4
  return int(sol.iterations)


def _cases(fast):
  """(cell, method) pairs, those not in `fast` marked slow: ELK compiles for ~10 s."""
  return [pytest.param(name, method, id=f"{name}-{method}",
                       marks=() if (name, method) in fast else pytest.mark.slow)
          for name in CELLS for method in parallel.METHODS]


@pytest.mark.parametrize("name,method", _cases(
    {(n, m) for n in CELLS for m in ("deer", "quasi_deer")}))  # ELK compiles for ~30 s: slow
def test_values_equal_sequential_t100(name, method):
  _check_values(CELLS[name](), "init", 100, method)


@pytest.mark.parametrize("name,method", _cases({("lstm", "deer"), ("gru", "quasi_deer")}))
def test_values_equal_sequential_trained_like_t1000(name, method):
  _check_values(CELLS[name](), "trained-like", 1000, method)


@pytest.mark.slow
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("weights", ["init", "trained-like", "trained"])
@pytest.mark.parametrize("method", ["deer", "quasi_deer"])
@pytest.mark.parametrize("time", [100, 1000, 10_000])
def test_values_and_gradients_equal_sequential(name, weights, method, time):
  """Outputs and final carry to 1e-4, gradients to 1e-3 (relative), T up to 10,000.
  Trained weights at T = 10,000 can make Newton diverge in float32 (DEER on the LSTM,
  quasi-DEER on the SimpleRNN): those solves must warn and return the scan's result."""
  _check_values(CELLS[name](), weights, time, method, may_fall_back=weights == "trained")
  _check_gradients(CELLS[name](), weights, time, method)


@pytest.mark.slow
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("method", ["elk", "quasi_elk"])
def test_elk_values_and_gradients_equal_sequential_t10000(name, method):
  """Capped at 100 iterations: ELK stalls on the trained LSTM (and quasi-ELK on the trained
  SimpleRNN) in float32, and 10,000 iterations of it would take hours before falling back."""
  _check_values(CELLS[name](), "trained", 10_000, method, may_fall_back=True, max_iter=100)
  _check_gradients(CELLS[name](), "trained", 10_000, method, max_iter=100)


def test_deer_converges_within_time_steps_far_from_the_solution():
  """Newton fixes at least one more state per iteration: at most T iterations.

  (Only where float32 allows: with recurrent weights x8 the rounding errors of the
  linear solve grow by ~8 a step and the residual stalls above tol instead.)
  """
  cell = cells.simple_rnn("tanh")
  params, carry, xs = _problem(cell, "trained-like", 12)
  sol = parallel.evaluate(cell.step, params, carry, xs, method="deer", tol=1e-6)
  assert bool(sol.converged) and int(sol.iterations) <= 12
  np.testing.assert_allclose(sol.outputs, _sequential(cell.step, params, carry, xs)[1],
                             rtol=1e-4, atol=1e-5)


def _sum_loss(outputs, final_carry):
  """A loss that weights every step's output and every part of the final carry."""
  w = jnp.cos(jnp.arange(outputs.size, dtype=jnp.float32)).reshape(outputs.shape)
  return jnp.sum(w * jnp.tanh(outputs)) + sum(
      jnp.sum(jnp.square(c)) for c in jax.tree_util.tree_leaves(final_carry))


def _check_gradients(cell, weights, time, method, max_iter=None):
  params, carry, xs = _problem(cell, weights, time)

  def parallel_loss(params, carry, xs):
    sol = parallel.evaluate(cell.step, params, carry, xs, method=method, max_iter=max_iter)
    return _sum_loss(sol.outputs, sol.final_carry)

  def sequential_loss(params, carry, xs):
    final, outputs = _sequential(cell.step, params, carry, xs)
    return _sum_loss(outputs, final)

  got = jax.jit(jax.grad(parallel_loss, argnums=(0, 1, 2)))(params, carry, xs)
  want = jax.jit(jax.grad(sequential_loss, argnums=(0, 1, 2)))(params, carry, xs)
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    assert _rel_err(g, w) < 1e-3


@pytest.mark.parametrize("name,method", [
    ("gru", "deer"), ("lstm", "quasi_deer"), ("simple_rnn", "deer"),
    pytest.param("gru", "elk", marks=pytest.mark.slow),
    pytest.param("lstm", "quasi_elk", marks=pytest.mark.slow)])
def test_gradients_equal_autodiff_of_the_scan(name, method):
  _check_gradients(CELLS[name](), "trained-like", 60, method)


def test_any_cell_with_a_pytree_carry_and_its_own_outputs():
  """A cell written here: a dict carry of two shapes, outputs unlike the carry."""

  def init(key, input_size, units):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"a": 0.4 * jax.random.normal(k1, (units, units)),
            "b": jax.random.normal(k2, (input_size, units)),
            "out": jax.random.normal(k3, (units + 1, 5))}

  def initial_carry(batch_size, units, dtype=jnp.float32):
    return {"h": jnp.zeros((batch_size, units), dtype), "s": jnp.ones((batch_size, 1), dtype)}

  def step(params, carry, x_t):
    h = jnp.tanh(carry["h"] @ params["a"] + x_t @ params["b"] + 0.1 * carry["s"])
    s = 0.9 * carry["s"] + 0.1 * jnp.mean(h, axis=-1, keepdims=True)
    y = jnp.concatenate([h, s], axis=-1) @ params["out"]
    return {"h": h, "s": s}, y

  params = init(jax.random.PRNGKey(2), INPUT, UNITS)
  carry, xs = initial_carry(BATCH, UNITS), jax.random.normal(jax.random.PRNGKey(3), (50, BATCH, INPUT))
  sol = jax.jit(lambda p, c, x: parallel.evaluate(step, p, c, x, method="quasi_deer"))(
      params, carry, xs)
  final, outputs = _sequential(step, params, carry, xs)
  assert sol.outputs.shape == (50, BATCH, 5)
  assert _rel_err(sol.outputs, outputs) < 1e-4 and _rel_err(sol.final_carry, final) < 1e-4


@pytest.mark.parametrize("method", ["deer", "quasi_deer"])
def test_no_convergence_falls_back_to_the_sequential_result_with_a_warning(method):
  """A recurrent kernel x6 sends Newton's first iterate to inf, where it stops."""
  cell = cells.simple_rnn("tanh")
  params, carry, xs = _problem(cell, "init", 200)
  params = dict(params, recurrent_kernel=6.0 * params["recurrent_kernel"])
  final, outputs = _sequential(cell.step, params, carry, xs)
  run = jax.jit(lambda p, c, x, fallback: parallel.evaluate(
      cell.step, p, c, x, method=method, max_iter=3, fallback=fallback),
                static_argnums=3)
  with pytest.warns(RuntimeWarning, match=r"did not converge in \d iterations; returned"):
    sol = jax.block_until_ready(run(params, carry, xs, True))
    jax.effects_barrier()
  assert not bool(sol.converged) and 1 <= int(sol.iterations) <= 3
  np.testing.assert_allclose(sol.outputs, outputs, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sol.final_carry, final, rtol=1e-5, atol=1e-6)
  # Without the fallback the unconverged iterate comes back, and it is wrong here.
  with pytest.warns(RuntimeWarning, match="the result is wrong"):
    raw = jax.block_until_ready(run(params, carry, xs, False))
    jax.effects_barrier()
  assert not np.allclose(raw.outputs, outputs, rtol=1e-2, atol=1e-2)


def test_converged_runs_do_not_warn():
  cell = cells.gru()
  params, carry, xs = _problem(cell, "init", 30)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    jax.block_until_ready(parallel.evaluate(cell.step, params, carry, xs))
    jax.effects_barrier()


def test_unknown_method_is_refused():
  cell = cells.gru()
  params, carry, xs = _problem(cell, "init", 5)
  with pytest.raises(ValueError, match="method must be one of"):
    parallel.evaluate(cell.step, params, carry, xs, method="newton")


def test_elk_solves_without_lapack_and_as_accurately():
  """ELK's Kalman filter solves its small systems by Gauss-Jordan elimination in plain
  array code: jaxlib's CPU LU kernel deadlocked when XLA ran two of them at once on a
  2-core machine (ELK hung at T = 10,000). Accuracy as LAPACK's, pivoting included."""
  rng = np.random.default_rng(0)
  m = rng.standard_normal((50, 8, 8))
  m[:, 0, 0] = 0.0  # a zero first pivot: rows must be swapped
  b = rng.standard_normal((50, 8, 3))
  truth = np.linalg.solve(m, b)
  got = parallel._solve(jnp.asarray(m, jnp.float32), jnp.asarray(b, jnp.float32), False)
  assert np.max(np.abs(got - truth)) / np.max(np.abs(truth)) < 1e-4
  cell = cells.gru()
  params, carry, xs = _problem(cell, "init", 8)
  hlo = jax.jit(lambda p, c, x: parallel.evaluate(cell.step, p, c, x, method="elk")).lower(
      params, carry, xs).as_text()
  assert "lapack" not in hlo and "getrf" not in hlo


@pytest.mark.parametrize("method", parallel.METHODS)
@pytest.mark.parametrize("time", [0, 1])
def test_zero_and_one_steps_equal_the_scan_in_values_and_gradients(method, time):
  """issue 26: every method failed at T = 0 (a vmap over no step), ELK and quasi-ELK at
  T = 1 (the smoother's gains); now each is the scan's result, without a warning: at
  T = 0 no output and the initial carry, at T = 1 one step."""
  cell = cells.lstm()
  params, carry, xs = _problem(cell, "init", time)
  final, outputs = _sequential(cell.step, params, carry, xs)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    sol = jax.jit(lambda p, c, x: parallel.evaluate(cell.step, p, c, x, method=method))(
        params, carry, xs)
    jax.effects_barrier()
  assert sol.outputs.shape == outputs.shape == (time, BATCH, UNITS)
  assert bool(sol.converged) and int(sol.iterations) == time
  np.testing.assert_array_equal(sol.outputs, outputs)
  for got, want in zip(jax.tree_util.tree_leaves(sol.final_carry),
                       jax.tree_util.tree_leaves(final)):
    np.testing.assert_array_equal(got, want)

  def loss(solve):
    return lambda p, c: sum(jnp.sum(jnp.sin(leaf)) for leaf in
                            jax.tree_util.tree_leaves(solve(p, c)))
  got = jax.grad(loss(lambda p, c: parallel.evaluate(cell.step, p, c, xs, method=method)[:2]),
                 argnums=(0, 1))(params, carry)
  want = jax.grad(loss(lambda p, c: _sequential(cell.step, p, c, xs)[::-1]),
                  argnums=(0, 1))(params, carry)
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def test_the_smoother_takes_a_single_step():
  """ELK's smoother at T = 1 (its gains' concatenation assumed a second step)."""
  f = jnp.zeros((1, BATCH, UNITS, UNITS))
  u, y = jnp.ones((1, BATCH, UNITS)), jnp.full((1, BATCH, UNITS), 3.0)
  for diag, jac in ((False, f), (True, f[..., 0])):
    mean = parallel._kalman_smoother_mean(jac, u, y, 1.0, diag)  # pylint: disable=protected-access
    np.testing.assert_allclose(mean, jnp.full_like(u, 2.0))  # (u + y) / 2 with sigma² = 1
