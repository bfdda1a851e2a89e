"""The first-order linear recurrence h_t = a_t * h_{t-1} + b_t, for all t at once.

Gated recurrences whose gates do not read h_{t-1} (minGRU, minLSTM, see
`rnn_jax.cells.min_gru`, `min_lstm`) reduce to it: their coefficients a_t, b_t come from the inputs
alone, so the whole sequence can be computed without a loop over time.

  * method="associative": `jax.lax.associative_scan` over the pairs (a_t, b_t), whose
    composition (a1, b1) then (a2, b2) is (a1 * a2, a2 * b1 + b2): O(log T) depth.
  * method="sequential": `jax.lax.scan`, one step per time step; the reference.
  * log_space=True takes (log a, log b) and needs b > 0, as Feng et al. (2024, appendix
    B) do, so that products of many gates in (0, 1) cannot underflow. The associative
    form composes the pairs (log a, log h) in log space, each step a logaddexp. (The
    paper's Heinsen (2023) form, log h_t = a*_t + logcumsumexp(log b - a*_t) with
    a*_t = sum_{s<=t} log a_s, loses precision with t: log h is a difference of numbers
    of size |a*_t|, 2e-4 relative after 2000 steps of gates near 1/2 in float32.)

The initial state h0 enters linearly in both spaces, h_t = exp(a*_t) h0 + (the scan from
zero), rather than as a first term log h0 inside the logcumsumexp as in the paper's code:
the paper needs h0 > 0 there and so passes its h0 through g (g(0) = 0.5), while here any
h0, zero (the cells' initial carry) and negative included, gives the same h_t as the
direct form, with finite gradients. Only b must be positive in log space.

Arrays are batch first, time on axis 1: a, b <float32>[batch, time, units], h0
<float32>[batch, units]; or time first with `time_major=True`, the unroll's layout. All of it is differentiable by autodiff and runs under `jit`.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array


def _log_zero(dtype) -> Array:
  """A finite stand-in for log 0 = -inf: exp of it is 0 and, unlike -inf, it keeps the
  gradients of logaddexp and logcumsumexp finite where every term is "zero" (a masked
  prefix, a zero h0)."""
  return jnp.asarray(jnp.finfo(dtype).min / 4, dtype)


@functools.partial(jax.jit, static_argnames=("reverse", "method", "log_space", "time_major"))
def linear_recurrence(a: Array, b: Array, h0: Optional[Array] = None, *,
                      mask: Optional[Array] = None, reverse: bool = False,
                      method: str = "associative", log_space: bool = False,
                      time_major: bool = False) -> Array:
  """h_t = a_t * h_{t-1} + b_t for t = 1..T, from h_0 = h0.

  Args:
    a, b: <float32>[batch, time, units] ([time, batch, units] with `time_major`); with
      `log_space`, log a and log b (b > 0: -inf, or anything below about -1e37, stands
      for b = 0).
    h0: <float32>[batch, units], the state before the first step; zeros if None. In
      either space any real value (see the module docstring).
    mask: <bool>[batch, time] ([time, batch] with `time_major`), False at padded steps,
      which keep h: a = 1, b = 0 (log a = 0, log b = log 0).
    reverse: run from the last step to the first, h_t = a_t * h_{t+1} + b_t with h0
      after the last step; the result stays aligned with the inputs (as `lax.scan`'s
      reverse, not as Keras's go_backwards).
    method: "associative" (parallel over time) or "sequential" (one loop over time).
    log_space: a and b are given as their logs.
    time_major: the arrays are time first, as the loop wants them (the unroll's layout:
      no transposes of [time, batch, units] arrays, which cost as much as the loop on CPU).

  Returns:
    h <float32>[batch, time, units] ([time, batch, units] with `time_major`): the state
    after each step, in linear space.
  """
  if method not in ("associative", "sequential"):
    raise ValueError(f"method must be 'associative' or 'sequential', got {method!r}")
  if not time_major:
    a, b = jnp.swapaxes(a, 0, 1), jnp.swapaxes(b, 0, 1)
    mask = None if mask is None else jnp.swapaxes(mask, 0, 1)
  if h0 is None:
    h0 = jnp.zeros(a.shape[1:], a.dtype)
  if log_space:
    b = jnp.maximum(b, _log_zero(b.dtype))
  if mask is not None:
    keep = mask[..., None].astype(bool)
    a = jnp.where(keep, a, 0.0 if log_space else 1.0)
    b = jnp.where(keep, b, _log_zero(b.dtype) if log_space else 0.0)
  if reverse:
    a, b = jnp.flip(a, 0), jnp.flip(b, 0)
  if log_space:
    h = _log_recurrence(a, b, h0, method)
  else:
    h = _recurrence(a, b, h0, method)
  if reverse:
    h = jnp.flip(h, 0)
  return h if time_major else jnp.swapaxes(h, 0, 1)


# Below, arrays are time first: a, b, h <[time, batch, units]>.

def _recurrence(a, b, h0, method):
  if method == "sequential":
    return sequential(a, b, h0)

  def compose(earlier, later):
    (a1, b1), (a2, b2) = earlier, later
    return a1 * a2, a2 * b1 + b2

  # h0 folds into the first step's offset: h_1 = a_1 h0 + b_1.
  b = b.at[0].add(a[0] * h0)
  _, h = jax.lax.associative_scan(compose, (a, b), axis=0)
  return h


def _previous_states(a, b, h0):
  """h_{t-1} for every t: the loop's only output, and all its backward pass needs."""
  def step(h, ab_t):
    return ab_t[0] * h + ab_t[1], h
  return jax.lax.scan(step, h0, (a, b))[1]


@jax.custom_vjp
def sequential(a: Array, b: Array, h0: Array) -> Array:
  """h_t = a_t * h_{t-1} + b_t by one loop over time, arrays time first: a, b
  <float32>[time, batch, units], h0 <float32>[batch, units] -> h [time, batch, units].

  Its derivative is written out rather than left to autodiff of `lax.scan`: the forward
  loop saves h_{t-1} alone, and the backward pass is the adjoint recurrence
  d_t = g_t + a_{t+1} d_{t+1}, one more loop of a multiply-add per step, followed by
  da = d * h_{t-1}, db = d over the whole sequence. Autodiff of the scan saves and
  re-reads more than h_{t-1} at every step, which costs more than this second loop on a
  CPU (docs/performance.md has the numbers)."""
  return a * _previous_states(a, b, h0) + b


def _sequential_forward(a, b, h0):
  previous = _previous_states(a, b, h0)
  return a * previous + b, (a, previous)


def _sequential_backward(saved, g):
  a, previous = saved
  def step(a_d, a_g):  # carries a_{t+1} * d_{t+1}
    d = a_g[1] + a_d
    return a_g[0] * d, d
  d_h0, d = jax.lax.scan(step, jnp.zeros_like(a[0]), (a, g), reverse=True)
  return d * previous, d, d_h0


sequential.defvjp(_sequential_forward, _sequential_backward)


def _log_recurrence(log_a, log_b, h0, method):
  if method == "sequential":
    # Log of the scan from zero, log H_t = logaddexp(log a_t + log H_{t-1}, log b_t),
    # and the products of a, A_t = exp(a*_t), which carry h0.
    def step(carry, ab_t):
      log_h, a_star = carry
      log_a_t, log_b_t = ab_t
      log_h = jnp.logaddexp(log_a_t + log_h, log_b_t)
      a_star = a_star + log_a_t
      return (log_h, a_star), (log_h, a_star)
    start = jnp.full_like(h0, _log_zero(h0.dtype))
    _, (log_h, a_star) = jax.lax.scan(step, (start, jnp.zeros_like(h0)), (log_a, log_b))
  else:
    # The pairs (log a, log H) composed in log space, (la1, lh1) then (la2, lh2) =
    # (la1 + la2, logaddexp(la2 + lh1, lh2)): every operation local, so no precision is
    # lost to the size of a*_t as in Heinsen's a*_t + logcumsumexp(log b - a*_t).
    def compose(earlier, later):
      (la1, lh1), (la2, lh2) = earlier, later
      return la1 + la2, jnp.logaddexp(la2 + lh1, lh2)
    a_star, log_h = jax.lax.associative_scan(compose, (log_a, log_b), axis=0)
  return jnp.exp(a_star) * h0 + jnp.exp(log_h)
