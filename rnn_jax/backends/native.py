"""The "native" backend: minGRU's whole layer as a compiled CPU kernel
(`rnn_jax.cpu_kernels`), opt-in (`implementation="native"`; "auto" never picks it).

The kernel walks one batch row at a time, keeping that row's projection, gates and
recurrence in cache, where XLA makes several passes over [time, batch, units] arrays
(docs/performance.md). It is built with the machine's C++ compiler on first use; where it
cannot be built or loaded, `cpu_kernels.load` warns once and the layer is computed by
"linear_scan", the same values to 1e-5.
"""
from __future__ import annotations

import jax.numpy as jnp

from rnn_jax import cpu_kernels
from rnn_jax.backends.base import Backend, Recurrence, cell_name
from rnn_jax.backends.linear import LINEAR_SCAN


def _cells(cell):
  if not cpu_kernels.supports(cell):
    return (f"no native kernel computes {cell_name(cell)} (only "
            f"{', '.join(cpu_kernels.KERNEL_CELLS)})")
  return None


def run(recurrence: Recurrence):
  if not cpu_kernels.load():
    return LINEAR_SCAN.run(recurrence)
  x = jnp.swapaxes(recurrence.dropped_inputs(), 0, 1)  # the kernel is batch first
  mask = None if recurrence.mask is None else jnp.swapaxes(recurrence.mask, 0, 1)
  hs, final = cpu_kernels.min_gru_layer(recurrence.params, x, recurrence.initial_state, mask,
                                        return_sequences=recurrence.return_sequences)
  return (jnp.swapaxes(hs, 0, 1) if recurrence.return_sequences else None), final


NATIVE = Backend("native", "minGRU's whole layer as a compiled CPU kernel (opt-in)",
                 cells=_cells, platforms=("cpu",), dtypes=("float32",),
                 features=frozenset({"mask", "input_dropout"}), run=run, exportable=False)
