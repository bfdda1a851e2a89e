"""The one unroll mechanism: every cell, every layer goes through `unroll`.

It does, with Keras's semantics: `lax.scan` over time (time-major inside),
`go_backwards`, masking of padded steps, variational dropout (Gal & Ghahramani: masks
drawn once per sequence), an initial carry, `return_sequences` and XLA's `unroll`; and
its gradient with a hand-written backward pass, `scan_with_recompute`.

Why the loop looks as it does (measured on a 2-core CPU, GRU(32) over [128, 240, 14],
see benchmarks/): at 32 units every step is a handful of small kernels, and the cost is
in how many there are and in how much memory they touch, not in arithmetic.
  * The input projection runs inside the loop, one small matmul per step: hoisting it
    into one [time*batch, features] matmul writes and reads back (and, for the gradient,
    transposes) arrays of megabytes, which on CPU costs more than it saves.
  * The backward pass saves only the carries and recomputes each step (`jax.vjp` of the
    step, inside one reverse scan that also accumulates the parameter gradients), so
    nothing but the carry crosses from the forward to the backward loop. This is ~2x
    faster than autodiff of the scan, which saves every intermediate of every step.
  * Cells do one matmul per gate and parameters enter the loop split per gate (see
    `cells.gate_matmuls`, `_split_gates`): XLA's CPU code for a fusion that reads several
    column slices of one array is several times slower than for separate arrays.
  * Token inputs (`Embedded`: an embedding table and ids) are projected once, as the
    table: the loop gathers each step's projected rows, and the backward pass adds the
    rows' cotangents into the table's gradient. This drops the input matmuls from the
    forward, the recomputation and the backward pass: imdb_lstm's step -28%.
  * `unroll` > 1 helps a single GRU a little but slows the others and compiles longer,
    so it stays 1 by default. Bidirectional layers run both directions in one loop
    (`unroll_together`).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from rnn_jax.cells import Cell, Params

Array = jax.Array


_batch_shard_axis: list[str] = []  # the innermost `batch_shards` axis name, while tracing


@contextlib.contextmanager
def batch_shards(axis_name: str):
  """While tracing, code runs on one shard of a batch split over the mesh axis `axis_name`
  (inside `shard_map`): dropout masks are then drawn for the whole batch and sliced, so
  that every shard gets the rows one device would have drawn for it, and a run's numbers
  do not depend on how many devices split its batches (see `train`)."""
  _batch_shard_axis.append(axis_name)
  try:
    yield
  finally:
    _batch_shard_axis.pop()


def dropout_mask(key: Array, rate: float, shape, dtype=jnp.float32, batch_axis: int = 0) -> Array:
  """Inverted-dropout mask: 0 with probability `rate`, else 1 / (1 - rate).

  `shape[batch_axis]` is the batch: inside `batch_shards`, this shard's rows of the mask
  of the whole batch.
  """
  if _batch_shard_axis:
    axis_name = _batch_shard_axis[-1]
    rows = shape[batch_axis]
    whole = (*shape[:batch_axis], rows * jax.lax.axis_size(axis_name), *shape[batch_axis + 1:])
    keep = jax.lax.dynamic_slice_in_dim(jax.random.bernoulli(key, 1.0 - rate, whole),
                                        jax.lax.axis_index(axis_name) * rows, rows, batch_axis)
  else:
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
  return keep.astype(dtype) / jnp.asarray(1.0 - rate, dtype)


def sequence_dropout_masks(cell: Cell, key: Optional[Array], batch_shape, input_size: int,
                           units: int, dropout: float, recurrent_dropout: float,
                           training: bool, dtype=jnp.float32):
  """Masks for one sequence: (input_mask [n, *batch, features], recurrent_mask [G, *batch, units]).

  Keras 3 draws one mask per gate when recurrent dropout is on (implementation=1), and one
  shared input mask otherwise; either is None when its rate is 0 or outside training.
  """
  use_input = training and 0.0 < dropout < 1.0
  use_recurrent = training and 0.0 < recurrent_dropout < 1.0
  if not (use_input or use_recurrent):
    return None, None
  if key is None:
    raise ValueError("dropout in training needs a PRNG key: pass key=...")
  k_in, k_rec = jax.random.split(key)
  num_masks = cell.num_gates if recurrent_dropout > 0 else 1
  input_mask = recurrent_mask = None
  if use_input:
    input_mask = dropout_mask(k_in, dropout, (num_masks, *batch_shape, input_size), dtype,
                              batch_axis=1)
  if use_recurrent:
    recurrent_mask = dropout_mask(k_rec, recurrent_dropout,
                                  (cell.num_gates, *batch_shape, units), dtype, batch_axis=1)
  return input_mask, recurrent_mask


class Embedded(NamedTuple):
  """Inputs given as rows of a table, not yet looked up: inputs[b, t] = table[ids[b, t]].

  What an `Embedding` hands a recurrent layer (see `layers.Sequential`): `unroll`
  then projects the table through the cell's input kernel once, instead of every
  token at every step. The same values as `jnp.take(table, ids, axis=0)`.
  """
  table: Array  # <float32>[vocab, features]
  ids: Array    # <int32>[batch, time]

  @property
  def shape(self):
    return (*self.ids.shape, self.table.shape[-1])

  @property
  def dtype(self):
    return self.table.dtype

  def lookup(self) -> Array:
    return jnp.take(self.table, self.ids, axis=0)


def unroll(cell: Cell, params: Params, inputs: Array, *,
           initial_carry: Any = None,
           mask: Optional[Array] = None,
           go_backwards: bool = False,
           return_sequences: bool = False,
           zero_output_for_mask: bool = False,
           dropout: float = 0.0,
           recurrent_dropout: float = 0.0,
           training: bool = False,
           key: Optional[Array] = None,
           unroll: int = 1,
           fast: Optional[bool] = None) -> tuple[Array, Any]:
  """Runs `cell` over a batch of sequences.

  Args:
    cell: a `rnn_jax.cells.Cell`.
    params: the cell's parameters.
    inputs: <float32>[batch, time, features], or `Embedded(table, ids)`.
    initial_carry: the cell's carry for the first step; zeros by default.
    mask: <bool>[batch, time], False at padded steps. A masked step carries the state
      through unchanged and repeats the previous output (zeros with
      `zero_output_for_mask`, as Keras's Bidirectional asks of its layers).
    go_backwards: read the sequence from its last step; the sequence output stays in
      the order of processing (reversed), as in Keras.
    return_sequences: return every step's output, not only the last.
    dropout, recurrent_dropout: rates of the variational dropout on the inputs and on
      the recurrent state; active only with `training=True`, and then `key` is needed.
    unroll: how many steps `lax.scan` unrolls per loop iteration.
    fast: differentiate with the hand-written backward pass (`scan_with_recompute`);
      False differentiates the plain `lax.scan` (the reference the tests compare
      against); None (default) picks the faster: the hand-written pass for gated cells
      (LSTM, GRU), autodiff for SimpleRNN, whose one small matmul per step costs more
      to recompute than to save. The values are the same either way.

  Returns:
    (outputs, final_carry): outputs <float32>[batch, time, units] with
    `return_sequences`, else <float32>[batch, units].
  """
  [result] = unroll_together([dict(
      cell=cell, params=params, inputs=inputs, initial_carry=initial_carry, mask=mask,
      go_backwards=go_backwards, return_sequences=return_sequences,
      zero_output_for_mask=zero_output_for_mask, dropout=dropout,
      recurrent_dropout=recurrent_dropout, training=training, key=key)],
      unroll=unroll, fast=fast)
  return result


def unroll_together(calls: Sequence[dict], *, unroll: int = 1,
                    fast: Optional[bool] = None) -> list[tuple[Array, Any]]:
  """[unroll(**kwargs) for kwargs in calls], as one loop over time.

  For independent recurrences over sequences of one length, such as the two directions
  of a Bidirectional layer: one loop instead of two halves the per-step overhead, and
  the two independent chains of small kernels in each step can run on two cores.
  """
  loops = [_loop(**kwargs) for kwargs in calls]
  if fast is None:
    fast = any(kwargs["cell"].num_gates > 1 for kwargs in calls)

  def step(params, carry, xs_t, consts):
    x_t, mask_t = xs_t
    outs = [loop.step(p, c, (x, m), k)
            for loop, p, c, x, m, k in zip(loops, params, carry, x_t, mask_t, consts)]
    return tuple(o[0] for o in outs), tuple(o[1] for o in outs)

  xs = (tuple(loop.xs[0] for loop in loops), tuple(loop.xs[1] for loop in loops))
  tables = tuple(loop.table for loop in loops)
  carry, ys = _scan(step, tuple(loop.params for loop in loops),
                    tuple(loop.carry for loop in loops), xs,
                    tuple(loop.consts for loop in loops),
                    None if all(t is None for t in tables) else tables,
                    fast=fast, unroll=unroll)
  return [loop.finish(c, y) for loop, c, y in zip(loops, carry, ys)]


class _Loop(NamedTuple):
  """What `unroll` scans: step(params, carry, (x_t, mask_t), consts) -> (carry, y_t) over
  xs = (x, mask) time-major, and finish(carry, ys) -> (outputs, final_carry).

  With a `table` (embedded inputs), x holds row ids and the step sees table[x_t]: the
  projected inputs, which it passes to the cell's recurrence as they are.
  """
  step: Callable
  params: Any
  carry: Any
  xs: tuple
  consts: Any
  finish: Callable
  table: Optional[Array] = None


def _loop(cell: Cell, params: Params, inputs, *, initial_carry=None, mask=None,
          go_backwards=False, return_sequences=False, zero_output_for_mask=False,
          dropout=0.0, recurrent_dropout=0.0, training=False, key=None) -> _Loop:
  batch, _, input_size = inputs.shape
  units = params["recurrent_kernel"].shape[0]
  carry = cell.initial_carry(batch, units, inputs.dtype) if initial_carry is None else initial_carry
  dropout_masks = sequence_dropout_masks(
      cell, key, (batch,), input_size, units, dropout, recurrent_dropout, training,
      inputs.dtype)

  table = None
  if isinstance(inputs, Embedded):
    if dropout_masks[0] is None:  # project the table once; the loop gathers its rows
      # table <float32>[vocab + 1, gates*units], xs <int32>[time, batch] its row ids
      table, ids = _table_rows(inputs.table, inputs.ids)
      table = _nan_last_row(cell.project(params, table, one_matmul=True))
      xs = jnp.swapaxes(ids, 0, 1)
    else:  # input dropout masks each sequence's vectors before the projection
      xs = jnp.swapaxes(inputs.lookup(), 0, 1)
  else:
    xs = jnp.swapaxes(inputs, 0, 1)  # [time, batch, features]
  step_mask = None if mask is None else jnp.swapaxes(mask, 0, 1)[..., None].astype(bool)
  if go_backwards:
    xs = xs[::-1]
    step_mask = None if step_mask is None else step_mask[::-1]

  def step(loop_params, carry, xs_t, dropout_masks):
    """(carry, (x_t <float32>[batch, features], mask_t)) -> (carry, y_t or None)."""
    params = _join_gates(loop_params)
    x_t, mask_t = xs_t
    input_mask, recurrent_mask = dropout_masks
    xw_t = x_t if table is not None else cell.project(params, x_t, input_mask)
    new_carry, y = cell.recurrent(params, carry, xw_t, recurrent_mask)
    if mask_t is not None:  # a padded step keeps the carry and repeats the output (or 0)
      new_carry = jax.tree_util.tree_map(lambda n, o: jnp.where(mask_t, n, o), new_carry, carry)
      y = cell.hidden(new_carry)
      if zero_output_for_mask:
        y = jnp.where(mask_t, y, jnp.zeros_like(y))
    return new_carry, (y if return_sequences else None)

  def finish(carry, ys):
    if return_sequences:
      return jnp.swapaxes(ys, 0, 1), carry
    last = cell.hidden(carry)
    if step_mask is not None and zero_output_for_mask:
      last = jnp.where(step_mask[-1], last, jnp.zeros_like(last))
    return last, carry

  return _Loop(step, _split_gates(params, cell.num_gates, units), carry, (xs, step_mask),
               dropout_masks, finish, table)


def _rows(tables, x_t):
  """The step's inputs: x_t itself, or table[x_t] where x_t holds a table's row ids."""
  if tables is None:
    return x_t
  return tuple(x if t is None else jnp.take(t, x, axis=0, mode="clip")
               for t, x in zip(tables, x_t))


def _table_rows(table: Array, ids: Array) -> tuple[Array, Array]:
  """(table with a row appended, ids with out-of-range ids sent to that row).

  Out-of-range ids must come out NaN, as `jnp.take(table, ids, axis=0)`'s do (negative
  ids count from the end): the appended row is zero here and set to NaN after the
  projection (`_nan_last_row`), so that the loop's gathers are in bounds (a gather
  that checks its bounds at every step costs more than the LSTM step's matmuls) and the
  row adds nothing (not NaN) to the kernel's gradient. Appending it to the embedding
  table rather than to the projected one copies a quarter of the bytes.
  """
  rows = table.shape[0]
  ids = jnp.where(ids < 0, ids + rows, ids)
  ids = jnp.where((ids < 0) | (ids >= rows), rows, ids)
  return jnp.concatenate([table, jnp.zeros_like(table[:1])]), ids


def _nan_last_row(table: Array) -> Array:
  return table.at[-1].set(jnp.nan)


def _scan(step, params, carry, xs, consts, tables, *, fast: bool, unroll: int):
  if fast:
    return scan_with_recompute(step, params, carry, xs, consts, tables, unroll=unroll)
  xs = (_rows(tables, xs[0]), xs[1])  # the reference: rows gathered before the loop
  return jax.lax.scan(lambda c, xs_t: step(params, c, xs_t, consts), carry, xs, unroll=unroll)


def _split_gates(params: Params, num_gates: int, units: int):
  """Each parameter fused over gates ([..., G*units]) as a `_Gates` tuple of per-gate arrays.

  Inside the loop `_join_gates` concatenates them again, so the cell sees its usual
  parameters, and XLA reads the cell's per-gate slices as the arrays themselves: no
  slicing of loop-invariant parameters at every step.
  """
  def split(a):
    if num_gates > 1 and a.shape[-1] == num_gates * units:
      return _Gates(jnp.split(a, num_gates, axis=-1))
    return a
  return jax.tree_util.tree_map(split, params)


class _Gates(tuple):
  """One parameter split over gates by `_split_gates`: a tuple of per-gate arrays."""


jax.tree_util.register_pytree_node(_Gates, lambda g: (tuple(g), None), lambda _, xs: _Gates(xs))


def _is_gates(a) -> bool:
  return isinstance(a, _Gates)


def _join_gates(loop_params):
  return jax.tree_util.tree_map(
      lambda a: jnp.concatenate(a, axis=-1) if _is_gates(a) else a, loop_params,
      is_leaf=_is_gates)


def _split_like(joined, loop_params):
  """`_join_gates`'s inverse: split each joined array as the loop's parameters are."""
  return jax.tree_util.tree_map(
      lambda like, a: _Gates(jnp.split(a, len(like), axis=-1)) if _is_gates(like) else a,
      loop_params, joined, is_leaf=_is_gates)


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
  parameter split over gates by `_split_gates` joined, one add rather than one per
  gate). Generic: any cell, any masking, any dropout.

  tables: None, or one entry per element of the tuple x: None where x holds the
  inputs themselves, a table <float32>[rows, ...] where x holds row ids <int32>[time,
  ...]; the step then sees table[x_t], and the backward scan adds each step's
  cotangent rows into the table's gradient (a scatter-add of [batch, ...] per step).
  """

  def loop(params, carry, xs, consts, tables):
    return jax.lax.scan(
        lambda c, xs_t: step(params, c, (_rows(tables, xs_t[0]), xs_t[1]), consts), carry,
        xs, unroll=unroll)

  def fwd(params, carry, xs, consts, tables):
    def body(c, xs_t):
      new_carry, y = step(params, c, (_rows(tables, xs_t[0]), xs_t[1]), consts)
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
                            _rows(tables, x_t))
      d_params_t, d_carry, d_x = step_vjp((d_new_carry, d_y))
      # Per-gate gradients are accumulated joined: one add per parameter, not per gate.
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

  scan = jax.custom_vjp(loop)
  scan.defvjp(fwd, bwd)
  return scan(params, carry, xs, consts, tables)
