"""The "pallas" backend's kernels for the linear recurrence h_t = a_t * h_{t-1} + b_t
(`cells.Linear`: minGRU, minLSTM): a sequential loop over time inside the kernel per block
of batch rows and of units (as recurrentgemma's `jax/pallas.py`), no log space, and its
reverse loop for the backward pass. See `backends.pallas`."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from rnn_jax.backends.base import Recurrence
from rnn_jax.backends.pallas_common import (BLOCKS, _Plan, _compiler_params, _on_platforms,
                                            _pad_rows, _plan, _power_of_two)

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class _Linear:
  """One linear recurrence's static description."""
  time: int
  batch: int
  units: int
  dtype: Any
  store: bool
  blocks: dict
  interpret: Optional[bool]

  def plan(self, platform: str) -> _Plan:
    return _plan(platform, self.blocks[platform], self.batch, self.time, self.units)


def _linear_scan(a, b, h0):
  def body(h, ab):
    h = ab[0] * h + ab[1]
    return h, h
  final, hs = lax.scan(body, h0, (a, b))
  return hs, final


def _linear_specs(plan: _Plan, reverse: bool = False):
  """(a step block's spec <[steps, rows, cols]>, a state's spec <[rows, cols]>) on the
  grid (row block b, column block u, step block c)."""
  nc = plan.grid_time
  t = (lambda c: nc - 1 - c) if reverse else (lambda c: c)
  return (pl.BlockSpec((plan.steps, plan.rows, plan.units), lambda b, u, c: (t(c), b, u)),
          pl.BlockSpec((plan.rows, plan.units), lambda b, u, c: (b, u)))


def _linear_forward_kernel(plan: _Plan, store_states: bool):
  def kernel(a_ref, b_ref, h0_ref, *outs):
    hs_ref, final_ref = (outs if store_states else (None, *outs))
    h = h0_ref[...]
    if plan.grid_time > 1:  # the previous block of steps left h in `final`
      h = jnp.where(pl.program_id(2) == 0, h, final_ref[...])

    def body(t, h):
      h = a_ref[t] * h + b_ref[t]
      if store_states:
        hs_ref[t] = h
      return h

    final_ref[...] = lax.fori_loop(0, plan.steps, body, h)
  return kernel


def _linear_backward_kernel(plan: _Plan, store_states: bool):
  def kernel(*refs):
    if store_states:
      a_ref, prev_ref, d_hs_ref, d_final_ref, d_a_ref, d_b_ref, d_h0_ref = refs
    else:
      a_ref, prev_ref, d_final_ref, d_a_ref, d_b_ref, d_h0_ref = refs
      d_hs_ref = None
    d = d_final_ref[...]
    if plan.grid_time > 1:
      d = jnp.where(pl.program_id(2) == 0, d, d_h0_ref[...])

    def body(i, d):
      t = plan.steps - 1 - i
      total = d if d_hs_ref is None else d + d_hs_ref[t]
      d_b_ref[t] = total
      d_a_ref[t] = total * prev_ref[t]
      return total * a_ref[t]

    d_h0_ref[...] = lax.fori_loop(0, plan.steps, body, d)
  return kernel


def _linear_takes(plan: _Plan) -> bool:
  return plan.platform != "gpu" or (_power_of_two(plan.rows) and _power_of_two(plan.units))


def _linear_forward(layer: _Linear, platform: str, store_states: bool):
  def run(a, b, h0):
    plan = layer.plan(platform)
    if not _linear_takes(plan):
      hs, final = _linear_scan(a, b, h0)
      return (hs if store_states else None), final
    rows = plan.batch
    step, state = _linear_specs(plan)
    grid = (plan.grid_batch, layer.units // plan.units, plan.grid_time)
    shape = jax.ShapeDtypeStruct((plan.time, rows, layer.units), layer.dtype)
    final_shape = jax.ShapeDtypeStruct((rows, layer.units), layer.dtype)
    call = pl.pallas_call(
        _linear_forward_kernel(plan, store_states), grid=grid,
        in_specs=[step, step, state],
        out_specs=[step, state] if store_states else [state],
        out_shape=[shape, final_shape] if store_states else [final_shape],
        interpret=platform == "interpret", name="rnn_jax_linear_forward",
        compiler_params=_compiler_params(platform, ("parallel", "parallel", "arbitrary")))
    out = call(_pad_rows(a, 1, rows, 1.0), _pad_rows(b, 1, rows), _pad_rows(h0, 0, rows))
    final = out[-1][:layer.batch]
    return (out[0][:, :layer.batch] if store_states else None), final
  return run


def _linear_backward(layer: _Linear, platform: str):
  def run(a, b, h0, hs, d_hs, d_final):
    plan = layer.plan(platform)
    if not _linear_takes(plan):
      _, vjp = jax.vjp(_linear_scan, a, b, h0)
      return vjp((jnp.zeros_like(hs) if d_hs is None else d_hs, d_final))
    rows = plan.batch
    step, state = _linear_specs(plan, reverse=True)
    grid = (plan.grid_batch, layer.units // plan.units, plan.grid_time)
    prev = jnp.concatenate([h0[None], hs[:-1]])
    shape = jax.ShapeDtypeStruct((plan.time, rows, layer.units), layer.dtype)
    store_states = d_hs is not None
    call = pl.pallas_call(
        _linear_backward_kernel(plan, store_states), grid=grid,
        in_specs=[step, step, *([step] if store_states else []), state],
        out_specs=[step, step, state],
        out_shape=[shape, shape, jax.ShapeDtypeStruct((rows, layer.units), layer.dtype)],
        interpret=platform == "interpret", name="rnn_jax_linear_backward",
        compiler_params=_compiler_params(platform, ("parallel", "parallel", "arbitrary")))
    pad = functools.partial(_pad_rows, axis=1, rows=rows)
    d_a, d_b, d_h0 = call(pad(a), pad(prev), *([pad(d_hs)] if store_states else []),
                          _pad_rows(d_final, 0, rows))
    return d_a[:, :layer.batch], d_b[:, :layer.batch], d_h0[:layer.batch]
  return run


def _linear_states(layer: _Linear, a, b, h0):
  """(h_t for every step <[time, batch, units]> or None without `layer.store`, h_time)."""
  platforms = ("gpu", "tpu", "interpret")

  @jax.custom_vjp
  def states(a, b, h0):
    return _on_platforms({p: _linear_forward(layer, p, layer.store) for p in platforms},
                         (a, b, h0), layer.interpret)

  def forward(a, b, h0):
    hs, final = _on_platforms({p: _linear_forward(layer, p, True) for p in platforms},
                              (a, b, h0), layer.interpret)
    return ((hs if layer.store else None), final), (a, b, h0, hs)

  def backward(saved, cotangents):
    a, b, h0, hs = saved
    d_hs, d_final = cotangents
    return _on_platforms({p: _linear_backward(layer, p) for p in platforms},
                         (a, b, h0, hs, d_hs, d_final), layer.interpret)

  states.defvjp(forward, backward)
  return states(a, b, h0)


def linear_recurrence(a: Array, b: Array, h0: Array, *, blocks: Optional[dict] = None,
                      interpret: Optional[bool] = None) -> Array:
  """h_t = a_t * h_{t-1} + b_t for t = 1..time from h0, by the linear kernels: a, b
  <float32>[time, batch, units], h0 <[batch, units]> -> every h_t <[time, batch, units]>.
  Differentiable (the reverse kernel)."""
  time, batch, units = a.shape
  layer = _Linear(time, batch, units, a.dtype, True, {**BLOCKS, **(blocks or {})}, interpret)
  return _linear_states(layer, a, b, h0)[0]


def _run_linear(recurrence: Recurrence, *, blocks: dict, interpret: Optional[bool]):
  from rnn_jax.backends import linear  # pylint: disable=import-outside-toplevel
  a, b = linear.coefficients(recurrence)
  time, batch = a.shape[:2]
  if recurrence.mask is not None:  # a padded step keeps h: a = 1, b = 0
    real = recurrence.mask[..., None]
    a, b = jnp.where(real, a, jnp.ones_like(a)), jnp.where(real, b, jnp.zeros_like(b))
  layer = _Linear(time, batch, a.shape[-1], a.dtype, recurrence.return_sequences, blocks,
                  interpret)
  return _linear_states(layer, a, b, recurrence.initial_state)
