"""`unroll(cell, params, inputs, ...)`: Keras's semantics of a recurrent layer, written once.

Any cell of the contract (`rnn_jax.cells`) runs through it. `unroll` checks its
arguments, puts the inputs in one normal form (`backends.Recurrence`: time-major inputs, a
[time, batch] mask of real steps, `go_backwards` applied, the initial carry made, the
variational dropout masks drawn once per sequence as Gal & Ghahramani's), hands it to
exactly one backend (`rnn_jax.backends`, chosen by `implementation=`), which computes the
recurrence keeping the state at padded steps, and turns what it returns into Keras's
outputs: a padded step repeats the previous output (before a sequence's first real step,
as Keras 3 does, the output of the initial carry), zeros at every padded step with
`zero_output_for_mask`, every step's output with `return_sequences` (in the order of
processing under `go_backwards`), else the last.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from rnn_jax import backends, parallel
from rnn_jax.backends import Embedded, Recurrence, gates_of, linear_of, output_of

Array = jax.Array

__all__ = ["Embedded", "dropout_mask", "gates_of", "implementations", "linear_of",
           "resolve_implementation", "sequence_dropout_masks", "unroll", "unroll_together"]


def implementations() -> tuple[str, ...]:
  """Every `implementation=` the unroll takes: "auto" and each registered backend."""
  return backends.names()


def resolve_implementation(cell, implementation: backends.Implementation = "auto") -> str:
  """The name of the backend `unroll` uses for `cell` on this platform: `implementation`
  itself (a ValueError saying why where it cannot compute the cell), or for "auto" the
  platform's choice (`backends.AUTO`)."""
  return backends.resolve(cell, implementation).name


def dropout_mask(key: Array, rate: float, shape, dtype=jnp.float32, batch_axis: int = 0,
                 batch_axis_name: Optional[str] = None) -> Array:
  """Inverted-dropout mask: 0 with probability `rate`, else 1 / (1 - rate).

  `shape[batch_axis]` is the batch. With `batch_axis_name` (inside `shard_map`, the batch
  split over that mesh axis) the mask is this shard's rows of the whole batch's mask, so
  that a run's numbers do not depend on how many devices split its batches.
  """
  if batch_axis_name is not None:
    rows = shape[batch_axis]
    whole = (*shape[:batch_axis], rows * jax.lax.axis_size(batch_axis_name),
             *shape[batch_axis + 1:])
    keep = jax.lax.dynamic_slice_in_dim(jax.random.bernoulli(key, 1.0 - rate, whole),
                                        jax.lax.axis_index(batch_axis_name) * rows, rows,
                                        batch_axis)
  else:
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
  return keep.astype(dtype) / jnp.asarray(1.0 - rate, dtype)


def sequence_dropout_masks(num_gates: Optional[int], key: Optional[Array], batch_shape,
                           input_size: int, units: int, dropout: float,
                           recurrent_dropout: float, training: bool, dtype=jnp.float32,
                           batch_axis_name: Optional[str] = None):
  """Masks for one sequence: (input_mask [n, *batch, features], recurrent_mask [G, *batch, units]).

  Keras 3 draws one mask per gate when recurrent dropout is on (implementation=1), and one
  shared input mask otherwise; either is None when its rate is 0 or outside training.
  `num_gates` is the cell's (None for a cell without a gate layout, which takes no
  recurrent dropout).
  """
  use_input = training and 0.0 < dropout < 1.0
  use_recurrent = training and 0.0 < recurrent_dropout < 1.0
  if not (use_input or use_recurrent):
    return None, None
  if key is None:
    raise ValueError("dropout in training needs a PRNG key: pass key=...")
  k_in, k_rec = jax.random.split(key)
  num_masks = num_gates if recurrent_dropout > 0 else 1
  input_mask = recurrent_mask = None
  if use_input:
    input_mask = dropout_mask(k_in, dropout, (num_masks, *batch_shape, input_size), dtype,
                              batch_axis=1, batch_axis_name=batch_axis_name)
  if use_recurrent:
    recurrent_mask = dropout_mask(k_rec, recurrent_dropout, (num_gates, *batch_shape, units),
                                  dtype, batch_axis=1, batch_axis_name=batch_axis_name)
  return input_mask, recurrent_mask


def unroll(cell, params, inputs, *,
           units: Optional[int] = None,
           initial_carry: Any = None,
           mask: Optional[Array] = None,
           go_backwards: bool = False,
           return_sequences: bool = False,
           zero_output_for_mask: bool = False,
           dropout: float = 0.0,
           recurrent_dropout: float = 0.0,
           training: bool = False,
           key: Optional[Array] = None,
           batch_axis_name: Optional[str] = None,
           unroll: int = 1,
           implementation: backends.Implementation = "auto",
           method: str = "deer") -> tuple[Array, Any]:
  """Runs `cell` over a batch of sequences.

  Args:
    cell: any cell: init, initial_carry and step (`rnn_jax.cells`).
    params: the cell's parameters.
    inputs: <float32>[batch, time, features], or `Embedded(table, ids)`.
    units: the cell's units, for its initial carry (and recurrent dropout); needed unless
      `initial_carry` is given.
    initial_carry: the cell's carry for the first step; `cell.initial_carry` by default.
    mask: <bool>[batch, time], False at padded steps. A padded step carries the state
      through unchanged and repeats the previous output (before the first real step,
      the initial carry's, as in Keras 3; zeros for a cell that does not declare its
      output); zeros at every padded step with `zero_output_for_mask`, as Keras's
      Bidirectional asks of its layers.
    go_backwards: read the sequence from its last step; the sequence output stays in
      the order of processing (reversed), as in Keras.
    return_sequences: return every step's output, not only the last.
    dropout, recurrent_dropout: rates of the variational dropout on the inputs and on
      the recurrent state (the latter for cells with a gate layout: one mask per gate);
      active only with `training=True`, and then `key` is needed.
    batch_axis_name: inside `shard_map`, the mesh axis the batch is split over: dropout
      masks are then this shard's rows of the whole batch's (`dropout_mask`).
    unroll: how many steps a loop backend's `lax.scan` unrolls per iteration.
    implementation: "auto", a registered backend's name (`implementations()`), or a
      `backends.Backend`; every backend computes the same values (to the Newton
      tolerance for "parallel").
    method: the Newton method of implementation="parallel".

  Returns:
    (outputs, final_carry): outputs <float32>[batch, time, units] with
    `return_sequences`, else <float32>[batch, units].
  """
  [result] = unroll_together([dict(
      cell=cell, params=params, inputs=inputs, units=units, initial_carry=initial_carry,
      mask=mask, go_backwards=go_backwards, return_sequences=return_sequences,
      zero_output_for_mask=zero_output_for_mask, dropout=dropout,
      recurrent_dropout=recurrent_dropout, training=training, key=key,
      batch_axis_name=batch_axis_name, implementation=implementation, method=method)],
      unroll=unroll)
  return result


def unroll_together(calls: Sequence[dict], *, unroll: int = 1) -> list[tuple[Array, Any]]:
  """[unroll(**kwargs) for kwargs in calls], with the loop backends' recurrences of one
  length in one loop over time (a Bidirectional layer's two directions): half the
  per-step overhead, and two independent chains of small kernels per step."""
  prepared = [_normal_form(**kwargs) for kwargs in calls]
  by_length: dict[int, list[int]] = {}
  for i, (recurrence, _) in enumerate(prepared):
    by_length.setdefault(_time(recurrence), []).append(i)
  results: list = [None] * len(calls)
  for time, group in by_length.items():
    empty = [i for i in group if time == 0 or _batch(prepared[i][0]) == 0]
    for i in empty:  # no step or no row: nothing for a backend to compute
      results[i] = _nothing_to_compute(*prepared[i], time)
    group = [i for i in group if i not in empty]
    if not group:
      continue
    computed = backends.compute([prepared[i][0] for i in group],
                                [prepared[i][1].backend for i in group], unroll=unroll)
    for i, (ys, state) in zip(group, computed):
      results[i] = _keras_outputs(*prepared[i], ys, state)
  return results


class _Finish(NamedTuple):
  """What `_keras_outputs` needs beside the `Recurrence`."""
  backend: backends.Backend
  keeps_output: bool  # the state is (carry, last output)
  zero_output_for_mask: bool
  output_shape: jax.ShapeDtypeStruct  # y_t's


def _last_output(state):
  return state[1]


def _step_keeping_output(cell_step, params, state, x_t):
  """A cell's step over the state (carry, last output)."""
  carry, y = cell_step(params, state[0], x_t)
  return (carry, y), y


def _time(recurrence: Recurrence) -> int:
  xs = recurrence.xs
  return (xs.ids if isinstance(xs, Embedded) else xs).shape[0]


def _batch(recurrence: Recurrence) -> int:
  xs = recurrence.xs
  return (xs.ids if isinstance(xs, Embedded) else xs).shape[1]


def _normal_form(cell, params, inputs, *, units=None, initial_carry=None, mask=None,
                 go_backwards=False, return_sequences=False, zero_output_for_mask=False,
                 dropout=0.0, recurrent_dropout=0.0, training=False, key=None,
                 batch_axis_name=None, implementation="auto", method="deer"):
  """(the call's `Recurrence`, how to finish it): every argument checked once here."""
  if not isinstance(inputs, Embedded):
    inputs = jnp.asarray(inputs)
  if len(inputs.shape) != 3:
    raise ValueError(f"unroll expects inputs [batch, time, features], got shape "
                     f"{tuple(inputs.shape)}")
  batch, time, input_size = inputs.shape
  if mask is not None and tuple(jnp.shape(mask)) != (batch, time):
    raise ValueError(f"unroll: the mask must be [batch, time] = {(batch, time)}, got shape "
                     f"{tuple(jnp.shape(mask))}")
  for name, rate in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
    if not 0.0 <= rate < 1.0:
      raise ValueError(f"unroll: {name} must be in [0, 1), got {rate!r}")
  if method not in parallel.METHODS:
    raise ValueError(f"unroll: method must be one of {parallel.METHODS}, got {method!r}")
  gates = gates_of(cell)
  if recurrent_dropout and gates is None:
    if linear_of(cell) is not None:
      raise ValueError(f"recurrent_dropout: {type(cell).__name__} is linear in its state, "
                       "with no recurrent weights to drop")
    raise ValueError(f"recurrent_dropout needs a cell that declares its gate layout "
                     f"(cells.Gates); {type(cell).__name__} does not")
  dtype = inputs.dtype
  if initial_carry is None:
    if units is None:
      raise ValueError("unroll needs units= (or initial_carry=) to start the cell's carry")
    initial_carry = cell.initial_carry(batch, units, dtype)
  if units is None and gates is not None:
    units = gates.output(initial_carry).shape[-1]
  input_mask, recurrent_mask = sequence_dropout_masks(
      gates and gates.num_gates, key, (batch,), input_size, units, dropout,
      recurrent_dropout, training, dtype, batch_axis_name)

  # A cell that does not say which part of its carry is the output: the state is
  # (carry, last output), so that a padded step that keeps the state repeats the output.
  output, step, state = output_of(cell), cell.step, initial_carry
  keeps_output = output is None
  if keeps_output:
    y = jax.eval_shape(cell.step, params, initial_carry,
                       jax.ShapeDtypeStruct((batch, input_size), dtype))[1]
    state = (initial_carry, jnp.zeros(y.shape, y.dtype))
    output, step = _last_output, functools.partial(_step_keeping_output, cell.step)

  if isinstance(inputs, Embedded):
    xs = Embedded(inputs.table, jnp.swapaxes(inputs.ids, 0, 1))
  else:
    xs = jnp.swapaxes(inputs, 0, 1)
  step_mask = None if mask is None else jnp.swapaxes(mask, 0, 1).astype(bool)
  if go_backwards:
    xs = Embedded(xs.table, xs.ids[::-1]) if isinstance(xs, Embedded) else xs[::-1]
    step_mask = None if step_mask is None else step_mask[::-1]
  recurrence = Recurrence(cell, params, xs, step_mask, state, step, output, input_mask,
                          recurrent_mask, return_sequences, method)
  backend = backends.resolve(cell, implementation, dtype=dtype, features=recurrence.features())
  return recurrence, _Finish(backend, keeps_output, zero_output_for_mask,
                             jax.eval_shape(output, state))


def _keras_outputs(recurrence: Recurrence, finish: _Finish, ys, state):
  """Keras's (outputs, final carry) from a backend's (ys <[time, batch, units]>, state).

  ys_t = output(state_t) is already Keras's output at a padded step, the previous one
  (before a sequence's first real step Keras's "first state", the output of the initial
  carry; zeros for a cell that does not declare its output); `zero_output_for_mask`
  puts zeros at every padded step instead."""
  mask = recurrence.mask
  carry = state[0] if finish.keeps_output else state
  if recurrence.return_sequences:
    if mask is not None and finish.zero_output_for_mask:
      ys = jnp.where(mask[..., None], ys, jnp.zeros_like(ys))
    return jnp.swapaxes(ys, 0, 1), carry
  last = recurrence.output(state)
  if mask is not None and finish.zero_output_for_mask:
    last = jnp.where(mask[-1][:, None], last, jnp.zeros_like(last))
  return last, carry


def _nothing_to_compute(recurrence: Recurrence, finish: _Finish, time: int):
  """Sequences of no step, or a batch of no row: the initial carry, and the outputs of a
  sequence that never had a real step (the initial state's; none with return_sequences
  and no step)."""
  y = finish.output_shape
  state = recurrence.initial_state
  carry = state[0] if finish.keeps_output else state
  if recurrence.return_sequences:
    ys = jnp.broadcast_to(recurrence.output(state)[:, None], (y.shape[0], time, *y.shape[1:]))
    if recurrence.mask is not None and finish.zero_output_for_mask:
      ys = jnp.zeros_like(ys)
    return ys, carry
  return recurrence.output(state), carry
