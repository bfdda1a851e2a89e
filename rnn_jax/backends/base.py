"""What the unroll hands a backend (`Recurrence`), and what a backend declares (`Backend`).

`rnn_jax.recurrent.unroll` writes Keras's semantics once: it checks its arguments, puts
the inputs in the normal form below and hands it to one backend, which computes the
recurrence and nothing else:

  state_t = step(state_{t-1}, x_t) at a real step, state_{t-1} at a padded one,
  ys_t = output(state_t), for t = 1..time, from state_0 = initial_state.

The unroll then turns (ys, state_time) into Keras's outputs (zeros before a sequence's
first real step, `zero_output_for_mask`, `return_sequences`, `go_backwards`' order).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from rnn_jax.cells.base import Gates, Linear

Array = jax.Array

# What a recurrence may ask of a backend beyond running its cell (`Backend.features`).
FEATURES = frozenset({"mask", "input_dropout", "recurrent_dropout"})


class Embedded(NamedTuple):
  """Inputs given as rows of a table, not yet looked up: inputs[..., t] = table[ids[..., t]].

  What an `Embedding` hands a recurrent layer (see `layers.Sequential`): a backend may then
  project the table through the cell's input kernel once, instead of every token at every
  step. The same values as `jnp.take(table, ids, axis=0)`.
  """
  table: Array  # <float32>[vocab, features]
  ids: Array    # <int32>[batch, time] (the unroll's normal form: [time, batch])

  @property
  def shape(self):
    return (*self.ids.shape, self.table.shape[-1])

  @property
  def dtype(self):
    return self.table.dtype

  def lookup(self) -> Array:
    return jnp.take(self.table, self.ids, axis=0)


class Recurrence(NamedTuple):
  """The unroll's normal form: one batch of sequences for a backend to compute.

  The state is the cell's carry, or (carry, last output) for a cell that does not declare
  which part of its carry is its output (`output_of`): then a padded step that keeps the
  state also repeats the output. Cells that declare a gate layout or a linear form keep
  their carry as the state.
  """
  cell: Any                        # the cell as the user gave it (its `gates` or `linear`)
  params: Any                      # the cell's parameters
  xs: Any                          # <float>[time, batch, features], or Embedded with ids [time, batch]
  mask: Optional[Array]            # <bool>[time, batch], False at padded steps; or None
  initial_state: Any               # the state before the first step
  step: Callable                   # (params, state, x_t) -> (state, y_t)
  output: Callable                 # state -> y_t <float>[batch, units]
  input_mask: Optional[Array]      # <float>[1 or num_gates, batch, features]: dropout on x_t
  recurrent_mask: Optional[Array]  # <float>[num_gates, batch, units]: dropout on the state
  return_sequences: bool           # whether the unroll reads ys (else only the last state)
  method: str = "deer"             # the Newton method of the "parallel" backend

  @property
  def dtype(self):
    return self.xs.dtype

  def inputs(self) -> Array:
    """xs as vectors <float>[time, batch, features] (an `Embedded`'s rows looked up)."""
    return self.xs.lookup() if isinstance(self.xs, Embedded) else self.xs

  def dropped_inputs(self) -> Array:
    """`inputs()` with the input dropout mask applied, for cells without a gate layout
    (whose one shared mask is input_mask[0])."""
    x = self.inputs()
    return x if self.input_mask is None else x * self.input_mask[0]

  def features(self) -> frozenset:
    used = {"mask": self.mask is not None, "input_dropout": self.input_mask is not None,
            "recurrent_dropout": self.recurrent_mask is not None}
    return frozenset(name for name, on in used.items() if on)


def gates_of(cell) -> Optional[Gates]:
  """The cell's declared gate layout (`cells.Gates`), or None."""
  gates = getattr(cell, "gates", None)
  return gates if isinstance(gates, Gates) else None


def linear_of(cell) -> Optional[Linear]:
  """The cell's declared linear form (`cells.Linear`), or None."""
  linear = getattr(cell, "linear", None)
  return linear if isinstance(linear, Linear) else None


def output_of(cell) -> Optional[Callable]:
  """carry -> y_t where the cell declares it: a gate layout's `output`, a linear cell's
  state itself; None for any other cell."""
  if gates_of(cell) is not None:
    return gates_of(cell).output
  if linear_of(cell) is not None:
    return lambda h: h
  return None


def cell_name(cell) -> str:
  return getattr(cell, "name", type(cell).__name__)


def any_cell(cell) -> Optional[str]:
  """`Backend.cells` for a backend that runs every cell."""
  del cell
  return None


def gated_cells(cell) -> Optional[str]:
  """`Backend.cells` for the gate layouts."""
  if gates_of(cell) is None:
    return (f"it needs a cell that declares its gate layout (cells.Gates); "
            f"{cell_name(cell)} does not")
  return None


def linear_cells(cell) -> Optional[str]:
  """`Backend.cells` for the linear recurrences."""
  if linear_of(cell) is None:
    return f"it needs a cell linear in its state (cells.Linear); {cell_name(cell)} is not"
  return None


@dataclasses.dataclass(frozen=True)
class Backend:
  """One way of computing a `Recurrence`, and what it can compute.

  A backend gives `run(recurrence) -> (ys <[time, batch, units]> or None without
  return_sequences, final state)`, or a `loop_body(recurrence) -> backends.loop.LoopBody`
  (one step of a `lax.scan`, so that recurrences of one length share one loop, as a
  Bidirectional layer's two directions do). `cells`, `platforms`, `dtypes` and `features`
  say what it computes; the registry (`rnn_jax.backends`) refuses the rest by name.
  """
  name: str
  description: str
  cells: Callable[[Any], Optional[str]] = any_cell  # why it cannot compute a cell, or None
  platforms: Optional[tuple[str, ...]] = None  # JAX platforms ("cpu", "gpu", "tpu"); None: all
  dtypes: Optional[tuple[str, ...]] = None     # input dtypes; None: all
  features: frozenset = FEATURES               # which of FEATURES it computes
  run: Optional[Callable[[Recurrence], tuple]] = None
  loop_body: Optional[Callable[[Recurrence], Any]] = None
  exportable: bool = True  # False: it lowers to a custom call that `jax.export` cannot carry

  def __post_init__(self):
    if (self.run is None) == (self.loop_body is None):
      raise TypeError(f"backend {self.name!r}: give exactly one of run= and loop_body=")
    unknown = set(self.features) - FEATURES
    if unknown:
      raise ValueError(f"backend {self.name!r}: unknown features {sorted(unknown)}; "
                       f"choose from {sorted(FEATURES)}")

  def why_not(self, cell, *, platform: str, dtype=None,
              features: frozenset = frozenset()) -> Optional[str]:
    """None where this backend computes `cell` on `platform` with these inputs, else why
    not, in a sentence."""
    if self.platforms is not None and platform not in self.platforms:
      return f"it runs on {' or '.join(self.platforms)}, not on {platform}"
    if dtype is not None and self.dtypes is not None and jnp.dtype(dtype).name not in self.dtypes:
      return f"it computes {' or '.join(self.dtypes)}, not {jnp.dtype(dtype).name}"
    missing = sorted(set(features) - set(self.features))
    if missing:
      return f"it does not compute {', '.join(f.replace('_', ' ') for f in missing)}"
    return self.cells(cell)
