"""Gradient diagnostics: vanishing and exploding gradients through time, checked against
direct gradients, finite differences and Jacobians written out by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnn_jax import cells
from rnn_jax.analysis import diagnostics

FEATURES, UNITS, BATCH, LONG = 3, 8, 4, 100


def _xs(time, key=0, batch=BATCH):
  return jax.random.normal(jax.random.PRNGKey(key), (batch, time, FEATURES))


def _ratio(cell, params, xs):
  """||dL/dh_1|| / ||dL/dh_T||: how much of the last step's gradient reaches the first."""
  d_states = diagnostics.step_gradient_norms(cell, params, xs, UNITS)["d_states"]
  assert d_states.shape == (xs.shape[1],)
  return float(d_states[0] / d_states[-1])


def _simple_rnn(activation, recurrent_kernel):
  cell = cells.simple_rnn(activation)
  params = cell.init(jax.random.PRNGKey(1), FEATURES, UNITS)
  return cell, {**params, "recurrent_kernel": recurrent_kernel(params["recurrent_kernel"])}


# --- the story at T = 100


def test_tanh_with_small_recurrent_weights_vanishes():
  # ||U|| = 0.8 and tanh' <= 1: every step shrinks the gradient by 0.8 at least.
  cell, params = _simple_rnn("tanh", lambda u: 0.8 * u)
  ratio = _ratio(cell, params, _xs(LONG))
  assert 0 < ratio < 1e-3, ratio


def test_relu_with_recurrent_kernel_past_one_explodes():
  # U = 1.5 I: every unit that stays active multiplies its gradient by 1.5 a step.
  cell, params = _simple_rnn("relu", lambda u: 1.5 * jnp.eye(UNITS))
  ratio = _ratio(cell, params, _xs(LONG))
  assert ratio > 1e3, ratio
  assert np.isfinite(ratio)


def test_lstm_at_init_keeps_far_more_gradient_than_tanh():
  """An LSTM's cell state is additive, c_t = f c_{t-1} + i g, and at init the forget gate
  sits near sigmoid(1) = 0.73: the gradient decays, but orders of magnitude more slowly
  than through a tanh RNN at its own (orthogonal) init, let alone a small one."""
  xs = _xs(LONG)
  lstm = cells.lstm()
  lstm_ratio = _ratio(lstm, lstm.init(jax.random.PRNGKey(1), FEATURES, UNITS), xs)
  tanh_ratio = _ratio(*_simple_rnn("tanh", lambda u: u), xs)
  small_tanh_ratio = _ratio(*_simple_rnn("tanh", lambda u: 0.8 * u), xs)
  assert lstm_ratio > 1e6 * tanh_ratio, (lstm_ratio, tanh_ratio)
  assert lstm_ratio > 1e6 * small_tanh_ratio, (lstm_ratio, small_tanh_ratio)


# --- step_gradient_norms against direct gradients


def _lstm_weights():
  cell = cells.lstm()
  params = cell.init(jax.random.PRNGKey(2), FEATURES, UNITS)
  return cell, {**params, "bias": params["bias"] + 0.3}


CASES = {
    "simple_rnn": (lambda: _simple_rnn("tanh", lambda u: u), lambda carry: carry),
    "lstm": (_lstm_weights, lambda carry: carry[0]),
}


def _weighted_loss(ys):
  """A loss that reads every step's output, not only the last."""
  weights = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
  return jnp.sum(weights * ys ** 2)


@pytest.mark.parametrize("loss", [None, _weighted_loss], ids=["last_output", "every_output"])
@pytest.mark.parametrize("name", CASES)
def test_step_gradient_norms_match_direct_gradients(name, loss):
  """dL/dh_t by jax.grad of the rest of the sequence as a function of h_t, for every t;
  dL/dx_t by jax.grad w.r.t. the inputs."""
  make, output_of = CASES[name]
  cell, params = make()
  time = 5
  xs = _xs(time, key=3, batch=2)
  loss_fn = loss or (lambda ys: ys[:, -1].sum())
  carry0 = cell.initial_carry(2, UNITS)
  got = diagnostics.step_gradient_norms(cell, params, xs, UNITS, loss=loss)

  def run(carry, xs):  # (final carry, carries [time] after each step, ys [batch, time, units])
    def step(c, x_t):
      c, y = cell.step(params, c, x_t)
      return c, (c, y)
    carry, (carries, ys) = jax.lax.scan(step, carry, jnp.swapaxes(xs, 0, 1))
    return carries, jnp.swapaxes(ys, 0, 1)

  carries, ys = run(carry0, xs)
  d_states = []
  for t in range(time):
    def loss_from(carry_t, t=t):
      """L as a function of the carry after step t: earlier outputs are fixed."""
      _, later = run(carry_t, xs[:, t + 1:])
      return loss_fn(jnp.concatenate([ys[:, :t], output_of(carry_t)[:, None], later], 1))
    carry_t = jax.tree_util.tree_map(lambda c, t=t: c[t], carries)
    d_states.append(diagnostics.global_grad_norm(jax.grad(loss_from)(carry_t)))
  np.testing.assert_allclose(got["d_states"], d_states, rtol=1e-5)

  d_xs = jax.grad(lambda xs: loss_fn(run(carry0, xs)[1]))(xs)
  np.testing.assert_allclose(got["d_inputs"], jnp.sqrt(jnp.sum(d_xs ** 2, axis=(0, 2))),
                             rtol=1e-5)


def test_state_gradient_matches_finite_differences():
  """One component of dL/dh_2 by central differences: nudge h_2, run the rest."""
  cell, params = _simple_rnn("tanh", lambda u: u)
  xs = _xs(4, key=4, batch=1)

  def loss_given_h2(h2):
    for t in range(2, 4):
      h2, _ = cell.step(params, h2, xs[:, t])
    return h2.sum()

  h = cell.initial_carry(1, UNITS)
  for t in range(2):
    h, _ = cell.step(params, h, xs[:, t])
  eps = 1e-2
  basis = jnp.eye(UNITS)[None]
  fd = np.array([(loss_given_h2(h + eps * basis[:, i]) - loss_given_h2(h - eps * basis[:, i]))
                 / (2 * eps) for i in range(UNITS)])
  got = diagnostics.step_gradient_norms(cell, params, xs, UNITS)["d_states"]
  np.testing.assert_allclose(got[1], np.linalg.norm(fd), rtol=1e-3)


def test_initial_carry_and_output_leaf():
  """A given initial carry changes the states; the last step's state gradient is the
  loss's own: dL/dh_T = 1 for every unit of every sequence."""
  cell, params = _simple_rnn("tanh", lambda u: u)
  xs = _xs(6)
  zero = diagnostics.step_gradient_norms(cell, params, xs, UNITS)
  other = diagnostics.step_gradient_norms(cell, params, xs, UNITS,
                                          initial_carry=jnp.full((BATCH, UNITS), 0.9))
  np.testing.assert_allclose(zero["d_states"][-1], np.sqrt(BATCH * UNITS), rtol=1e-6)
  assert not np.allclose(zero["d_states"][:-1], other["d_states"][:-1])


# --- Jacobians


def test_tanh_jacobian_norm_is_that_of_diag_times_kernel():
  """h_t = tanh(x W + h U + b): dh_t/dh_{t-1} = diag(1 - h_t^2) U^T."""
  cell, params = _simple_rnn("tanh", lambda u: 0.8 * u)
  xs = _xs(4, key=5)
  got = diagnostics.jacobian_spectral_norms(cell, params, xs, UNITS)
  h = cell.initial_carry(BATCH, UNITS)
  u = np.asarray(params["recurrent_kernel"])
  expected = []
  for t in range(4):
    h, _ = cell.step(params, h, xs[:, t])
    per_sequence = [np.linalg.norm(np.diag(1 - np.asarray(h_b) ** 2) @ u.T, 2) for h_b in h]
    expected.append(np.mean(per_sequence))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert (got < 0.8 + 1e-6).all()


def test_relu_identity_jacobian_norm_is_the_scale():
  cell, params = _simple_rnn("relu", lambda u: 1.5 * jnp.eye(UNITS))
  got = diagnostics.jacobian_spectral_norms(cell, params, _xs(20, key=6), UNITS)
  # Some unit is active at every step of every sequence: J = 1.5 diag(active).
  np.testing.assert_allclose(got, 1.5, rtol=1e-6)


def test_lstm_jacobian_is_of_the_whole_carry():
  """For an LSTM the carry is (h, c): a [2 units, 2 units] Jacobian, whose norm is at
  least that of its block dc_t/dc_{t-1} = diag(f_t)."""
  cell, params = _lstm_weights()
  xs = _xs(3, key=7, batch=1)
  got = diagnostics.jacobian_spectral_norms(cell, params, xs, UNITS)
  assert got.shape == (3,)
  carry = cell.initial_carry(1, UNITS)
  for t in range(3):
    f = jax.nn.sigmoid((xs[:, t] @ params["kernel"] + carry[0] @ params["recurrent_kernel"]
                        + params["bias"])[:, UNITS:2 * UNITS])
    assert got[t] >= float(f.max()) - 1e-6
    carry, _ = cell.step(params, carry, xs[:, t])


def test_min_gru_jacobian_is_its_keep_gate():
  """minGRU's gates do not read h: dh_t/dh_{t-1} = diag(1 - z_t), norm max(1 - z_t)."""
  cell = cells.min_gru()
  params = cell.init(jax.random.PRNGKey(8), FEATURES, UNITS)
  xs = _xs(5, key=9)
  got = diagnostics.jacobian_spectral_norms(cell, params, xs, UNITS)
  k_z = (xs @ params["kernel"] + params["bias"])[..., :UNITS]
  np.testing.assert_allclose(got, jnp.max(jax.nn.sigmoid(-k_z), axis=-1).mean(0), rtol=1e-6)


def test_global_grad_norm_is_optax_global_norm():
  grads = {"a": jnp.arange(6.0).reshape(2, 3), "b": (jnp.ones(4), -jnp.ones((2, 2)))}
  np.testing.assert_allclose(diagnostics.global_grad_norm(grads), optax.tree.norm(grads),
                             rtol=1e-6)
