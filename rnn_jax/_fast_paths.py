"""The unroll's speed paths: two gate layouts and a backward pass that recomputes.

`rnn_jax.recurrent.unroll` picks one through `resolve_implementation`; each equals the
portable path ("scan": `lax.scan` over the cell's `step`, autodiff) in values and
gradients to 1e-5 (tests/test_implementations.py). Cells never see any of this: a cell
that declares its gate layout (`cells.Gates`) asks for its matmuls through a `matmuls`
function, and the layout decides how they are done. Why each path is as it is, in one
sentence each (the measurements, dated, are in docs/performance.md):

per_gate (the default on CPU). At 32 units a step is a handful of small kernels, and the
cost is in their number and the memory they touch, not in arithmetic.
  * The input projection stays inside the loop, one small matmul per step: hoisting it
    writes and reads back arrays of megabytes, which costs more on CPU than it saves.
  * One matmul per gate, and parameters enter the loop split per gate (`_Gates`): XLA's
    CPU code for a fusion that reads several column slices of one array is several times
    slower than for separate arrays.
  * The per-gate matmuls have a custom derivative (`_split_matmul`) whose transpose is one
    matmul per operand over the gates' joined cotangents.
  * Token inputs (`Embedded`) are projected once, as the table; the loop gathers each
    step's projected rows and the backward pass scatters their cotangents.
  * Gated cells differentiate with `scan_with_recompute`; SimpleRNN, whose one small
    matmul costs more to recompute than to save, with autodiff.

fused (the default on GPU and TPU): what accelerators want, as cuDNN does it: the input
projection hoisted out of the loop as one matmul over all steps, one fused recurrent
matmul per step (a batched one under per-gate recurrent dropout), autodiff.

recompute (any cell): `scan_with_recompute`, which saves only the carries and recomputes
each step in the backward loop (~2x faster than autodiff of the scan on CPU, which saves
every intermediate of every step).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

Array = jax.Array


class LoopBody(NamedTuple):
  """What the unroll scans: step(params, carry, x_t, consts) -> (carry, y_t) over `xs`.

  With a `table`, xs holds row ids and the step sees table[x_t]. `output(carry)` is the
  step's output where the cell declares it (else the unroll keeps y_t itself).
  """
  params: Any
  xs: Array             # <[time, batch, ...]>
  consts: Any           # the sequence's dropout masks
  step: Callable
  output: Optional[Callable] = None
  table: Optional[Array] = None
  recompute: bool = False


def gated_body(implementation: str, gates, params, x: Optional[Array], table=None, ids=None,
               input_mask=None, recurrent_mask=None) -> LoopBody:
  """The loop of a cell with a gate layout (`cells.Gates`): "scan" or "recompute" (plain
  matmuls), "per_gate" or "fused". Inputs: x <[batch, time, features]>, or a `table`
  <[rows, features]> and row `ids` <int32>[batch, time]; masks as `recurrent.unroll`'s."""
  if implementation == "per_gate":
    return _per_gate_body(gates, params, x, table, ids, input_mask, recurrent_mask)
  if table is not None:
    if implementation == "fused" and input_mask is None:  # project the table once
      kernel, bias = gates.input_projection(params)
      x = jnp.take(_affine(table, kernel, bias), ids, axis=0)
      return _fused_body(gates, params, x, None, recurrent_mask)
    x = jnp.take(table, ids, axis=0)
  if implementation == "fused":
    kernel, bias = gates.input_projection(params)
    mask = None if input_mask is None else input_mask[:, :, None]  # over all steps
    return _fused_body(gates, params, _project(x, kernel, bias, mask, gates.num_gates),
                       input_mask, recurrent_mask)

  def step(params, carry, x_t, masks):
    input_mask, recurrent_mask = masks
    kernel, bias = gates.input_projection(params)
    xw_t = _project(x_t, kernel, bias, input_mask, gates.num_gates)
    return gates.recurrence(params, carry, xw_t, _plain_matmuls(recurrent_mask))

  return LoopBody(params, jnp.swapaxes(x, 0, 1), (input_mask, recurrent_mask), step,
                  gates.output, recompute=implementation == "recompute")


# ----------------------------------------------------------------------------- plain

def _affine(x, kernel, bias):
  return x @ kernel if bias is None else x @ kernel + bias


def _project(x, kernel, bias, mask, num_gates):
  """x @ kernel + bias with the input dropout mask (None, shared [1, ...] or per gate [G, ...])."""
  if mask is None:
    return _affine(x, kernel, bias)
  if mask.shape[0] == 1:
    return _affine(x * mask[0], kernel, bias)
  xw = jnp.concatenate([(x * m) @ k for m, k in zip(mask, jnp.split(kernel, num_gates, -1))],
                       axis=-1)
  return xw if bias is None else xw + bias


def _gates_of(v, kernel, mask, first_gate):
  """(number of gates in `kernel`, their masks) for a recurrent kernel <[units, n*units]>."""
  n = kernel.shape[-1] // v.shape[-1]
  if mask is None or mask.shape[0] == 1:
    return n, mask
  return n, mask[first_gate:first_gate + n]


def _matmuls(mask, per_gate_masks):
  """A `Matmuls`: one v @ kernel split per gate where every gate sees the same input (no
  mask, or one shared), else per_gate_masks(v, kernel, masks, n) with one mask per gate."""
  def matmuls(v, kernel, first_gate=0):
    n, mask_ = _gates_of(v, kernel, mask, first_gate)
    if mask_ is None:
      return jnp.split(v @ kernel, n, axis=-1)
    if mask_.shape[0] == 1:
      return jnp.split((v * mask_[0]) @ kernel, n, axis=-1)
    return per_gate_masks(v, kernel, mask_, n)
  return matmuls


def _plain_matmuls(mask):
  """The reference `Matmuls`: gate g's input masked by mask[g], one matmul per gate."""
  return _matmuls(mask, lambda v, kernel, masks, n: [
      (v * m) @ k for m, k in zip(masks, jnp.split(kernel, n, axis=-1))])


# ----------------------------------------------------------------------------- fused

def _fused_body(gates, params, xw, input_mask, recurrent_mask) -> LoopBody:
  """xw <[batch, time, G*units]>: the inputs projected before the loop."""
  del input_mask  # applied in the projection

  def step(params, carry, xw_t, recurrent_mask):
    return gates.recurrence(params, carry, xw_t, _fused_matmuls(recurrent_mask))

  return LoopBody(params, jnp.swapaxes(xw, 0, 1), recurrent_mask, step, gates.output)


def _fused_matmuls(mask):
  """One matmul for all gates; per-gate masks make it one batched matmul over the gates."""
  return _matmuls(mask, lambda v, kernel, masks, n: list(jnp.einsum(
      "g...u,ugk->g...k", v * masks, kernel.reshape(kernel.shape[0], n, -1))))


# ----------------------------------------------------------------------------- per gate

def _per_gate_body(gates, params, x, table, ids, input_mask, recurrent_mask) -> LoopBody:
  num_gates = gates.num_gates
  kernel, _ = gates.input_projection(params)
  loop_params = _split_gates(params, num_gates, kernel.shape[-1] // num_gates)
  projected_table = None
  if table is not None and input_mask is None:
    # table <[rows + 1, G*units]>, xs <int32>[time, batch] its row ids
    table, ids = _table_rows(table, ids)
    projected_table = _nan_last_row(_project_per_gate(gates, params, table, None,
                                                      one_matmul=True))
    xs = jnp.swapaxes(ids, 0, 1)
  else:  # input dropout masks each sequence's vectors before the projection
    xs = jnp.swapaxes(x if table is None else jnp.take(table, ids, axis=0), 0, 1)

  def step(loop_params, carry, x_t, masks):
    params = _join_gates(loop_params)
    input_mask, recurrent_mask = masks
    xw_t = x_t if projected_table is not None else _project_per_gate(gates, params, x_t,
                                                                     input_mask)
    return gates.recurrence(params, carry, xw_t, _per_gate_matmuls(recurrent_mask))

  return LoopBody(loop_params, xs, (input_mask, recurrent_mask), step, gates.output,
                  projected_table, recompute=num_gates > 1)


def _per_gate_matmuls(mask):
  def matmuls(v, kernel, first_gate=0):
    n, mask_ = _gates_of(v, kernel, mask, first_gate)
    if n == 1:
      return [gate_matmul(v, kernel, mask_)]
    return gate_matmuls(v, kernel, mask_, n)
  return matmuls


def gate_matmul(v: Array, kernel: Array, mask: Optional[Array]) -> Array:
  """v @ kernel, with a dropout mask on v: none, shared [1, ..., n] or per gate [G, ..., n]."""
  if mask is None:
    return v @ kernel
  if mask.shape[0] == 1:
    return (v * mask[0]) @ kernel
  return jnp.concatenate(gate_matmuls(v, kernel, mask, mask.shape[0]), axis=-1)


def gate_matmuls(v: Array, kernel: Array, mask: Optional[Array], num_gates: int) -> list:
  """[v @ kernel_g for each gate g]: one <float32>[..., units] per gate, masked as
  `gate_matmul` (gate g sees v * mask[g], as Keras's implementation=1 does)."""
  if mask is None:
    return list(_split_matmul(v, kernel, num_gates))
  if mask.shape[0] == 1:
    return list(_split_matmul(v * mask[0], kernel, num_gates))
  kernels = jnp.split(kernel, num_gates, axis=-1)
  return [(v * m) @ k for m, k in zip(mask, kernels)]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _split_matmul(v: Array, kernel: Array, num_gates: int) -> tuple:
  """(v @ kernel_g for each gate g), with a derivative that is cheaper to transpose: its
  tangent is one matmul per operand, d_v @ kernel + v @ d_kernel, split over gates, so
  that reverse mode computes each gradient as one matmul over the gates' joined
  cotangents [d_1 ... d_G] instead of G small ones."""
  return tuple(v @ k for k in jnp.split(kernel, num_gates, axis=-1))


@_split_matmul.defjvp
def _split_matmul_jvp(num_gates, primals, tangents):
  v, kernel = primals
  d_v, d_kernel = tangents
  outputs = _split_matmul(v, kernel, num_gates)
  d_outputs = tuple(jnp.split(d_v @ kernel + v @ d_kernel, num_gates, axis=-1))
  return outputs, d_outputs


def _project_per_gate(gates, params, x, mask, *, one_matmul=False):
  """x @ kernel + bias <[..., G*units]> as G per-gate matmuls whose bias is added per gate
  before the concatenation, so that XLA takes each slice of it for its operand.
  `one_matmul` (no mask): one matmul, for a projection outside the loop (a 10,000-row
  table: half the time of G matmuls and their concatenation)."""
  kernel, bias = gates.input_projection(params)
  if one_matmul and mask is None:
    return _affine(x, kernel, bias)
  num_gates = gates.num_gates
  projected = gate_matmuls(x, kernel, mask, num_gates)
  if bias is not None:
    projected = [g + b for g, b in zip(projected, jnp.split(bias, num_gates, axis=-1))]
  return jnp.concatenate(projected, axis=-1)


def _table_rows(table: Array, ids: Array) -> tuple[Array, Array]:
  """(table with a zero row appended, ids with out-of-range ids sent to that row).

  Out-of-range ids must come out NaN, as `jnp.take(table, ids, axis=0)`'s do (negative
  ids count from the end): the row is set to NaN after the projection (`_nan_last_row`),
  so that the loop's gathers are in bounds (a bounds-checked gather per step costs more
  than the LSTM step's matmuls) and the row adds nothing to the kernel's gradient.
  """
  rows = table.shape[0]
  ids = jnp.where(ids < 0, ids + rows, ids)
  ids = jnp.where((ids < 0) | (ids >= rows), rows, ids)
  return jnp.concatenate([table, jnp.zeros_like(table[:1])]), ids


def _nan_last_row(table: Array) -> Array:
  return table.at[-1].set(jnp.nan)


class _Gates(tuple):
  """One parameter split over gates by `_split_gates`: a tuple of per-gate arrays."""


jax.tree_util.register_pytree_node(_Gates, lambda g: (tuple(g), None), lambda _, xs: _Gates(xs))


def _is_gates(a) -> bool:
  return isinstance(a, _Gates)


def _split_gates(params, num_gates: int, units: int):
  """Each parameter fused over gates ([..., G*units]) as a `_Gates` of per-gate arrays;
  `_join_gates` concatenates them again inside the loop, where XLA then reads the
  cell's per-gate slices as the arrays themselves."""
  def split(a):
    if num_gates > 1 and a.shape[-1] == num_gates * units:
      return _Gates(jnp.split(a, num_gates, axis=-1))
    return a
  return jax.tree_util.tree_map(split, params)


def _join_gates(loop_params):
  return jax.tree_util.tree_map(
      lambda a: jnp.concatenate(a, axis=-1) if _is_gates(a) else a, loop_params,
      is_leaf=_is_gates)


def _split_like(joined, loop_params):
  """`_join_gates`'s inverse: split each joined array as the loop's parameters are."""
  return jax.tree_util.tree_map(
      lambda like, a: _Gates(jnp.split(a, len(like), axis=-1)) if _is_gates(like) else a,
      loop_params, joined, is_leaf=_is_gates)


# ----------------------------------------------------------------------------- scans

def rows(tables, x_t):
  """The step's inputs: x_t itself, or table[x_t] where x_t holds a table's row ids."""
  if tables is None:
    return x_t
  return tuple(x if t is None else jnp.take(t, x, axis=0, mode="clip")
               for t, x in zip(tables, x_t))


def scan(step, params, carry, xs, consts, tables=None, *, recompute: bool, unroll: int = 1):
  """`lax.scan(lambda c, xs_t: step(params, c, xs_t, consts), carry, xs)` with the steps'
  inputs gathered from `tables`, differentiated by `scan_with_recompute` or autodiff."""
  if recompute:
    return scan_with_recompute(step, params, carry, xs, consts, tables, unroll=unroll)
  xs = (rows(tables, xs[0]), xs[1])  # rows gathered before the loop
  return jax.lax.scan(lambda c, xs_t: step(params, c, xs_t, consts), carry, xs, unroll=unroll)


def _tree_add(a, b):
  return jax.tree_util.tree_map(jnp.add, a, b)


def scan_with_recompute(step, params, carry, xs, consts, tables=None, *, unroll: int = 1):
  """`lax.scan(lambda c, xs_t: step(params, c, xs_t, consts), carry, xs)`, with a
  backward pass that saves only the carries.

  step(params, carry, (x_t, mask_t), consts) -> (carry, y_t or None); xs = (x, mask)
  stacked over time, `mask` (or None) and `consts` (the dropout masks) are not
  differentiated. The backward pass is one reverse scan: at each step `jax.vjp` of
  `step` at the saved carry recomputes the step and gives the cotangents of the
  previous carry, of x_t and of the parameters, which the scan accumulates (a
  parameter split over gates by `_split_gates` joined: one add rather than one per
  gate). Needs only `step`: any cell, any masking, any dropout.

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
      d_params = _tree_add(d_params, _join_gates(d_params_t))
      if tables is not None:  # a table's rows take their cotangents; ids have none
        d_tables = tuple(d if t is None else d.at[x].add(dx, mode="promise_in_bounds")
                         for t, d, x, dx in zip(tables, d_tables, x_t, d_x))
        d_x = tuple(dx if t is None else None for t, dx in zip(tables, d_x))
      return (d_carry, d_params, d_tables), d_x

    zeros = jax.tree_util.tree_map(jnp.zeros_like, (_join_gates(params), tables))
    (d_carry0, d_params, d_tables), d_xs = jax.lax.scan(
        body, (d_carry, *zeros), (carries, xs, d_ys), reverse=True, unroll=unroll)
    return _split_like(d_params, params), d_carry0, (d_xs, None), None, d_tables

  loop_with_recompute = jax.custom_vjp(loop)
  loop_with_recompute.defvjp(fwd, bwd)
  return loop_with_recompute(params, carry, xs, consts, tables)
