"""Parallel-in-time evaluation of any cell's recurrence by Newton's method (DEER, ELK).

A sequence of states h_1..h_T with h_t = f(h_{t-1}, x_t) is the root of the residual
r_t = h_t - f(h_{t-1}, x_t). Newton's method on all T states at once linearises f at
the current guess, h_t ≈ J_t h_{t-1} + (f(h_{t-1}^k, x_t) - J_t h_{t-1}^k), and solves
that linear recurrence for every t with `jax.lax.associative_scan` (compositions of
affine maps): O(log T) depth instead of T. Since the first k states are exact after k
iterations, it converges in at most T iterations; in practice in a handful.

  * "deer" (Lim et al. 2024): full Jacobians J_t <float32>[T, batch, D, D].
  * "quasi_deer": only diag(J_t) (Gonzalez et al. 2024): memory O(T·D), more iterations.
  * "elk" / "quasi_elk" (Gonzalez et al. 2024): Levenberg–Marquardt steps, each the
    mean of a linear-Gaussian smoother (dynamics noise I, observations h^k with noise
    sigma² I), run as a parallel Kalman filter and smoother (Särkkä & García-Fernández
    2021). Here sigma² adapts: x10 after a step that lowers sum ||r_t||², /10 (and the
    step is rejected) after one that does not, which keeps it from diverging where
    DEER does.

Carry pytrees (LSTM's (h, c)) are flattened to one vector of D numbers per batch row.
Gradients come from a `jax.custom_vjp`: the adjoint recurrence
λ_t = ∂L/∂h_t + J_{t+1}^T λ_{t+1} is one more (reversed) associative scan at the
solution, with full Jacobians for every method so that it is exact, and the parameter
and input cotangents are one vmapped vjp of the step over all t; the Newton iterations
are never differentiated. If Newton does not converge within `max_iter` (or goes
non-finite), the sequential `lax.scan` result is returned instead, with a warning.
`max_iter` defaults to T, where every method converges in exact arithmetic. In float32 the
damped methods can stall instead: ELK on a trained LSTM at T = 1,000 ran all 1,000
iterations without converging, many times the loop's cost, while quasi-DEER and ELK on
other cells need hundreds of cheap iterations and get there. For long sequences, set
`max_iter` to what a solve may cost (docs/performance.md has the timings).
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

Array = jax.Array
METHODS = ("deer", "quasi_deer", "elk", "quasi_elk")
_SIGMASQ_INIT, _SIGMASQ_MAX = 1e2, 1e10  # ELK's observation noise: start damped, end at DEER


class Solution(NamedTuple):
  """What `evaluate` returns."""
  outputs: Array     # <float32>[time, batch, ...] every step's y_t (time-major)
  final_carry: Any   # the carry after the last step, as the cell shapes it
  iterations: Array  # <int32>[] Newton iterations used
  converged: Array   # <bool>[] False where the sequential result was returned instead


# ------------------------------------------- linear algebra, full [..., D, D] or diagonal [..., D]

def _mv(a, v, diag):
  return a * v if diag else (a @ v[..., None])[..., 0]


def _mm(a, b, diag):
  return a * b if diag else a @ b


def _tr(a, diag):
  return a if diag else jnp.swapaxes(a, -1, -2)


def _solve(m, b, diag):
  """m^{-1} b for a matrix b."""
  return b / m if diag else _gauss_jordan(m, b)


def _gauss_jordan(m, b):
  """m^{-1} b <[..., n, k]> for a batch of small matrices m <[..., n, n]>: Gauss-Jordan
  elimination with partial pivoting, n steps of array arithmetic over the whole batch.

  Not `jnp.linalg.solve`: jaxlib's CPU LU kernel splits its batch over XLA's intra-op
  thread pool and waits for the pieces, so two independent solves that XLA runs at once
  (ELK's filter combines two) can each hold a thread of a 2-thread pool while waiting for
  work queued behind the other: a deadlock, seen as ELK hanging at T = 10,000.
  """
  n = m.shape[-1]
  rows = jnp.arange(n)
  aug = jnp.concatenate([m, b], axis=-1)

  def eliminate(i, aug):
    row = lambda a, r: jax.lax.dynamic_slice_in_dim(a, r, 1, axis=-2)  # <[..., 1, n + k]>
    column = jax.lax.dynamic_index_in_dim(aug, i, axis=-1, keepdims=False)  # <[..., n]>
    pivot = jnp.argmax(jnp.where(rows >= i, jnp.abs(column), -1.0), axis=-1)[..., None, None]
    row_i, row_p = row(aug, i), jnp.take_along_axis(aug, pivot, axis=-2)
    aug = jnp.where(rows[:, None] == i, row_p, jnp.where(rows[:, None] == pivot, row_i, aug))
    pivot_row = row(aug, i) / jax.lax.dynamic_slice_in_dim(row(aug, i), i, 1, axis=-1)
    aug = aug - jax.lax.dynamic_slice_in_dim(aug, i, 1, axis=-1) * pivot_row
    return jnp.where(rows[:, None] == i, pivot_row, aug)

  return jax.lax.fori_loop(0, n, eliminate, aug)[..., n:]


def _eye_like(a, diag):
  return jnp.ones_like(a) if diag else jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)


def _affine_scan(a, b, diag, reverse=False):
  """x_t = a_t x_{t-1} + b_t with x_0 = 0 for all t (x_t = a_t x_{t+1} + b_t if reverse)."""
  def compose(first, second):  # apply `first`, then `second`
    return _mm(second[0], first[0], diag), _mv(second[0], first[1], diag) + second[1]
  return jax.lax.associative_scan(compose, (a, b), reverse=reverse)[1]


def _kalman_smoother_mean(f, u, y, sigmasq, diag):
  """Posterior mean of x_t = f_t x_{t-1} + u_t + N(0, I), y_t = x_t + N(0, sigmasq I).

  x_0 is known and folded into u_1 (with f_1 = 0). The filter is Särkkä & García-
  Fernández's associative scan of elements (A, b, C, eta, J); the smoother is the
  affine reverse scan of (E_t, g_t), whose covariances ELK does not need.
  """
  k = 1.0 / (1.0 + sigmasq)  # Kalman gain with H = Q = I, R = sigmasq I
  a = sigmasq * k
  eye = _eye_like(f, diag)
  elems = (a * f, a * u + k * y, a * eye, k * _mv(_tr(f, diag), y - u, diag),
           k * _mm(_tr(f, diag), f, diag))

  def combine(ei, ej):
    ai, bi, ci, etai, ji = ei
    aj, bj, cj, etaj, jj = ej
    g = _tr(_solve(eye[:1] + _mm(jj, ci, diag), _tr(aj, diag), diag), diag)  # aj (I + ci jj)^-1
    h = _solve(eye[:1] + _mm(ci, jj, diag), ai, diag)  # (I + ci jj)^-1 ai
    return (_mm(g, ai, diag), _mv(g, bi + _mv(ci, etaj, diag), diag) + bj,
            _mm(_mm(g, ci, diag), _tr(aj, diag), diag) + cj,
            _mv(_tr(h, diag), etaj - _mv(jj, bi, diag), diag) + etai,
            _mm(_mm(_tr(h, diag), jj, diag), ai, diag) + ji)

  _, m, p, _, _ = jax.lax.associative_scan(combine, elems)
  # Smoother gains E_t = P_t F_{t+1}^T (F_{t+1} P_t F_{t+1}^T + I)^-1; E_T = 0.
  fn, un, mt, pt = f[1:], u[1:], m[:-1], p[:-1]
  s = _mm(_mm(fn, pt, diag), _tr(fn, diag), diag) + eye[1:]
  e = _tr(_solve(s, _mm(fn, pt, diag), diag), diag)
  g = mt - _mv(e, _mv(fn, mt, diag) + un, diag)
  e = jnp.concatenate([e, jnp.zeros_like(f[:1])])  # (f's shape: e is empty when T = 1)
  g = jnp.concatenate([g, m[-1:]])
  return _affine_scan(e, g, diag, reverse=True)


# ----------------------------------------------------------------------------- the solver

def _diag_jacobian(fh, h):
  """diag(∂fh/∂h) for fh acting on [time, batch, D], one jvp per unit: memory O(T·D)."""
  d = h.shape[-1]
  col = lambda i: jax.jvp(fh, (h,), (jnp.broadcast_to(jax.nn.one_hot(i, d, dtype=h.dtype),
                                                        h.shape),))[1][..., i]
  return jnp.moveaxis(jax.lax.map(col, jnp.arange(d), batch_size=min(d, 8)), 0, -1)


def _newton(f, params, xs, h0, method, tol, max_iter):
  """Solves h_t = f(params, h_{t-1}, x_t): (states <float32>[T, B, D], iterations, converged)."""
  diag, damped = method.startswith("quasi"), method.endswith("elk")
  f_all = jax.vmap(jax.vmap(f, (None, 0, 0)), (None, 0, 0))  # over time, batch
  prev = lambda hs: jnp.concatenate([h0[None], hs[:-1]])
  evaluate_f = lambda hs: f_all(params, prev(hs), xs)
  error = lambda hs, fhs: jnp.max(jnp.abs(hs - fhs) / (1.0 + jnp.abs(fhs)))
  merit = lambda hs, fhs: jnp.sum(jnp.square(hs - fhs))

  def jacobians(hp):
    if diag:
      return _diag_jacobian(lambda h: f_all(params, h, xs), hp)
    jac = jax.jacfwd(f, argnums=1)
    return jax.vmap(jax.vmap(jac, (None, 0, 0)), (None, 0, 0))(params, hp, xs)

  def body(state):
    k, hs, fhs, err, sigmasq = state
    hp = prev(hs)
    jac = jacobians(hp).at[0].set(0.0)  # h_0 is given: the first state is f(h_0, x_1)
    u = fhs - _mv(jac, hp, diag)
    if damped:
      new = _kalman_smoother_mean(jac, u, hs, sigmasq, diag)
    else:
      new = _affine_scan(jac, u, diag)
    fnew = evaluate_f(new)
    if damped:  # Levenberg–Marquardt: keep the step only if it lowers sum ||r_t||²
      accept = merit(new, fnew) < merit(hs, fhs)
      new, fnew = jnp.where(accept, new, hs), jnp.where(accept, fnew, fhs)
      sigmasq = jnp.where(accept, jnp.minimum(sigmasq * 10, _SIGMASQ_MAX), sigmasq / 10)
    return k + 1, new, fnew, error(new, fnew), sigmasq

  def cond(state):
    k, _, _, err, _ = state
    return (k < max_iter) & (err > tol) & jnp.isfinite(err)

  hs = jnp.broadcast_to(h0, (xs.shape[0], *h0.shape))  # initial guess: h_0 at every step
  fhs = evaluate_f(hs)
  init = (jnp.int32(0), hs, fhs, error(hs, fhs), jnp.float32(_SIGMASQ_INIT))
  k, hs, _, err, _ = jax.lax.while_loop(cond, body, init)
  return hs, k, (err <= tol) & jnp.all(jnp.isfinite(hs))


def _sequential(f, params, xs, h0):
  f_batch = jax.vmap(f, (None, 0, 0))
  return jax.lax.scan(lambda h, x: (f_batch(params, h, x),) * 2, h0, xs)[1]


def _make_states(f, method, tol, max_iter, fallback):
  """states(params, xs, h0) -> (hs, iterations, converged), differentiable in hs."""

  def solve(params, xs, h0):
    hs, k, ok = _newton(f, params, xs, h0, method, tol, max_iter)
    if fallback:
      hs = jax.lax.cond(ok, lambda: hs, lambda: _sequential(f, params, xs, h0))
    return hs, k, ok

  @jax.custom_vjp
  def states(params, xs, h0):
    return solve(params, xs, h0)

  def fwd(params, xs, h0):
    out = solve(params, xs, h0)
    return out, (params, xs, h0, out[0])

  def bwd(res, cts):
    params, xs, h0, hs = res
    hp = jnp.concatenate([h0[None], hs[:-1]])
    f_all = jax.vmap(jax.vmap(f, (None, 0, 0)), (None, 0, 0))
    jac = jax.vmap(jax.vmap(jax.jacfwd(f, argnums=1), (None, 0, 0)), (None, 0, 0))(params, hp, xs)
    # λ_t = ḡ_t + J_{t+1}^T λ_{t+1}: the transposed Jacobians shifted one step back.
    jac_t = jnp.concatenate([_tr(jac[1:], False), jnp.zeros_like(jac[:1])])
    lam = _affine_scan(jac_t, cts[0], False, reverse=True)
    _, vjp = jax.vjp(f_all, params, hp, xs)
    ct_params, ct_hp, ct_xs = vjp(lam)
    return ct_params, ct_xs, ct_hp[0]

  states.defvjp(fwd, bwd)
  return states


def _warn(converged, iterations, *, method, fallback):
  if not converged:
    what = "returned the sequential scan's result" if fallback else "the result is wrong"
    warnings.warn(f"rnn_jax.parallel.evaluate(method={method!r}) did not converge in "
                  f"{int(iterations)} iterations; {what}", RuntimeWarning, stacklevel=2)


def evaluate(step: Callable, params: Any, initial_carry: Any, xs: Array, *,
             method: str = "deer", tol: float = 1e-5, max_iter: Optional[int] = None,
             fallback: bool = True, warn: bool = True) -> Solution:
  """Runs step(params, carry, x_t) -> (carry, y_t) over xs, in parallel over time.

  Args:
    step: a cell's step; only it is used, on carries of one batch row ([1, ...]).
    params: its parameters.
    initial_carry: the carry before the first step, a pytree of [batch, ...] arrays.
    xs: <float32>[time, batch, features], time-major.
    method: "deer" | "quasi_deer" | "elk" | "quasi_elk" (see the module docstring).
    tol: converged when every |h_t - f(h_{t-1}, x_t)| <= tol * (1 + |f(h_{t-1}, x_t)|).
    max_iter: the cap on Newton iterations; time by default (see the module docstring).
    fallback: return the sequential scan's result where Newton did not converge.
    warn: warn (`warnings.warn`, from inside `jit` through `jax.debug.callback`) then.

  Returns:
    A `Solution`; its values equal `jax.lax.scan(lambda c, x: step(params, c, x),
    initial_carry, xs)` to the tolerance (exactly for T = 0 and 1, which are that scan).
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  if xs.shape[0] <= 1:
    # Nothing to solve in parallel: no step (T = 0: the initial carry, no output) or one,
    # h_1 = f(h_0, x_1) exactly. The scan itself, rather than Newton's machinery, which
    # needs a step to vmap over and whose damped methods would spend their one
    # iteration (max_iter = T) on a damped step and fall back with a warning.
    carry, outputs = jax.lax.scan(lambda c, x: step(params, c, x), initial_carry, xs)
    return Solution(outputs, carry, jnp.int32(xs.shape[0]), jnp.bool_(True))
  row = lambda tree: jax.tree_util.tree_map(lambda a: a[None], tree)
  unrow = lambda tree: jax.tree_util.tree_map(lambda a: a[0], tree)
  _, unravel = ravel_pytree(unrow(initial_carry))
  h0 = jax.vmap(lambda c: ravel_pytree(c)[0])(initial_carry)

  def f(params, h, x):  # one batch row: flat state [D], input [features] -> flat state
    return ravel_pytree(unrow(step(params, row(unravel(h)), x[None])[0]))[0]

  def output(params, h, x):
    return unrow(step(params, row(unravel(h)), x[None])[1])

  states = _make_states(f, method, tol, xs.shape[0] if max_iter is None else max_iter, fallback)
  hs, iterations, converged = states(params, xs, h0)
  if warn:
    jax.debug.callback(functools.partial(_warn, method=method, fallback=fallback),
                       converged, iterations, ordered=True)
  hp = jnp.concatenate([h0[None], hs[:-1]])
  outputs = jax.vmap(jax.vmap(output, (None, 0, 0)), (None, 0, 0))(params, hp, xs)
  return Solution(outputs, jax.vmap(unravel)(hs[-1]), iterations, converged)
