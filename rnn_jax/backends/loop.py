"""The loop the step-by-step backends share: one `lax.scan` over time for one or several
recurrences, padded steps keeping the state, outputs read off the state.

A loop backend ("scan", "recompute", "per_gate", "fused", or a user's) gives a `LoopBody`,
its step before masking; `run` does the rest. Recurrences of one length then share one
loop (a Bidirectional layer's directions): half the per-step overhead, and two
independent chains of small kernels per step that can run on two cores.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def _same(tree, *_):
  return tree


class LoopBody(NamedTuple):
  """A loop backend's step: step(params, state, x_t, consts) -> the state after x_t.

  With a `table`, xs holds row ids and the step sees table[x_t]. `recompute` asks for the
  backward pass that saves only the states (`scan_with_recompute`), which adds each
  step's parameter cotangents as `join(d_params)` and hands back `split(summed, params)`
  (a backend whose loop parameters are split per gate adds them joined: one add).
  """
  params: Any            # what the loop differentiates
  xs: Any                # <[time, batch, ...]> the step's inputs, or row ids into `table`
  consts: Any            # not differentiated: the sequence's dropout masks
  step: Callable
  table: Optional[Array] = None
  recompute: bool = False
  join: Callable = _same
  split: Callable = _same


def keep_where(mask_t: Array, new, old):
  """new where mask_t <bool>[batch] is True, else old, leaf by leaf (any leaf rank)."""
  def select(n, o):
    return jnp.where(mask_t.reshape(mask_t.shape + (1,) * (n.ndim - mask_t.ndim)), n, o)
  return jax.tree_util.tree_map(select, new, old)


def run(recurrences: Sequence, bodies: Sequence[LoopBody], *, unroll: int = 1) -> list:
  """[(ys or None, final state)] for each recurrence (`base.Recurrence`), by one loop."""
  def step(params, states, xs_t, consts):
    x_t, mask_t = xs_t
    new_states, ys = [], []
    for recurrence, body, p, s, x, m, k in zip(recurrences, bodies, params, states, x_t,
                                               mask_t, consts):
      new = body.step(p, s, x, k)
      if m is not None:  # a padded step keeps the state
        new = keep_where(m, new, s)
      new_states.append(new)
      ys.append(recurrence.output(new) if recurrence.return_sequences else None)
    return tuple(new_states), tuple(ys)

  xs = (tuple(b.xs for b in bodies), tuple(r.mask for r in recurrences))
  tables = tuple(b.table for b in bodies)
  tables = None if all(t is None for t in tables) else tables
  params = tuple(b.params for b in bodies)
  states = tuple(r.initial_state for r in recurrences)
  consts = tuple(b.consts for b in bodies)
  if any(b.recompute for b in bodies):
    join = lambda ps: tuple(b.join(p) for b, p in zip(bodies, ps))
    split = lambda joined, ps: tuple(b.split(j, p) for b, j, p in zip(bodies, joined, ps))
    states, ys = scan_with_recompute(step, params, states, xs, consts, tables, unroll=unroll,
                                     join=join, split=split)
  else:
    xs = (rows(tables, xs[0]), xs[1])  # rows gathered before the loop
    states, ys = jax.lax.scan(lambda s, xs_t: step(params, s, xs_t, consts), states, xs,
                              unroll=unroll)
  return list(zip(ys, states))


def rows(tables, x_t):
  """The step's inputs: x_t itself, or table[x_t] where x_t holds a table's row ids."""
  if tables is None:
    return x_t
  return tuple(x if t is None else jnp.take(t, x, axis=0, mode="clip")
               for t, x in zip(tables, x_t))


def _tree_add(a, b):
  return jax.tree_util.tree_map(jnp.add, a, b)


def scan_with_recompute(step, params, carry, xs, consts, tables=None, *, unroll: int = 1,
                        join: Callable = _same, split: Callable = _same):
  """`lax.scan(lambda c, xs_t: step(params, c, xs_t, consts), carry, xs)`, with a
  backward pass that saves only the carries (about twice as fast as autodiff of the scan
  on CPU, which saves every intermediate of every step: docs/performance.md).

  step(params, carry, (x_t, mask_t), consts) -> (carry, y_t or None); xs = (x, mask)
  stacked over time, `mask` (or None) and `consts` (the dropout masks) are not
  differentiated. The backward pass is one reverse scan: at each step `jax.vjp` of
  `step` at the saved carry recomputes the step and gives the cotangents of the
  previous carry, of x_t and of the parameters, which the scan accumulates as
  `join(d_params)`, handed back as `split(summed, params)`. Needs only `step`: any cell,
  any masking, any dropout.

  tables: None, or one entry per element of the tuple x: None where x holds the
  inputs themselves, a table <float32>[rows, ...] where x holds row ids <int32>[time,
  ...]; the step then sees table[x_t], and the backward scan adds each step's
  cotangent rows into the table's gradient (a scatter-add of [batch, ...] per step).
  """

  def loop(params, carry, xs, consts, tables):
    return jax.lax.scan(
        lambda c, xs_t: step(params, c, (rows(tables, xs_t[0]), xs_t[1]), consts), carry,
        xs, unroll=unroll)

  def fwd(params, carry, xs, consts, tables):
    def body(c, xs_t):
      new_carry, y = step(params, c, (rows(tables, xs_t[0]), xs_t[1]), consts)
      return new_carry, (y, c)
    carry, (ys, carries) = jax.lax.scan(body, carry, xs, unroll=unroll)
    return (carry, ys), (params, carries, xs, consts, tables)

  def bwd(saved, cotangents):
    params, carries, xs, consts, tables = saved
    d_carry, d_ys = cotangents

    def body(accumulated, inputs):
      d_new_carry, d_params, d_tables = accumulated
      carry, (x_t, mask_t), d_y = inputs
      _, step_vjp = jax.vjp(lambda p, c, x: step(p, c, (x, mask_t), consts), params, carry,
                            rows(tables, x_t))
      d_params_t, d_carry, d_x = step_vjp((d_new_carry, d_y))
      d_params = _tree_add(d_params, join(d_params_t))
      if tables is not None:  # a table's rows take their cotangents; ids have none
        d_tables = tuple(d if t is None else d.at[x].add(dx, mode="promise_in_bounds")
                         for t, d, x, dx in zip(tables, d_tables, x_t, d_x))
        d_x = tuple(dx if t is None else None for t, dx in zip(tables, d_x))
      return (d_carry, d_params, d_tables), d_x

    zeros = jax.tree_util.tree_map(jnp.zeros_like, (join(params), tables))
    (d_carry0, d_params, d_tables), d_xs = jax.lax.scan(
        body, (d_carry, *zeros), (carries, xs, d_ys), reverse=True, unroll=unroll)
    return split(d_params, params), d_carry0, (d_xs, None), None, d_tables

  loop_with_recompute = jax.custom_vjp(loop)
  loop_with_recompute.defvjp(fwd, bwd)
  return loop_with_recompute(params, carry, xs, consts, tables)
