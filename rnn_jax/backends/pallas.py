"""The "pallas" backend: the whole sequence in one kernel per block of batch rows, for the
gate layouts (`cells.Gates`: SimpleRNN, LSTM, GRU, a user's gated cell) and the linear
recurrences (`cells.Linear`: minGRU, minLSTM). Opt-in: implementation="pallas".

A `lax.scan` on an accelerator launches a few kernels per step and reads the recurrent
weights from memory every time; at the experiments' sizes (tens of units) the step's
latency, not its arithmetic, bounds a training step. Here, as in cuDNN's persistent
kernels (Diamos et al. 2016), one kernel runs every step and holds the weights on chip:

  gated   The input projection x_t @ kernel + bias of every step is one matmul before the
          kernel (XLA). The kernel loads what the step reads of the parameters once (the
          per-gate recurrent kernels, a recurrent bias: `gate_blocks.split_step`), then
          loops over time: the cell's own `recurrence`, its matmuls per gate against the
          held weights, Keras's per-gate recurrent dropout, and the mask (a padded step
          keeps the state), all inside. Any cell that declares `Gates` runs without kernel
          code of its own: the kernel evaluates the cell's step on per-gate blocks
          (`gate_blocks.evaluate`).
  linear  h_t = a_t * h_{t-1} + b_t, a_t and b_t from one matmul before the kernel (a
          padded step: a = 1, b = 0), then a sequential loop over time per block of
          batch rows and of units, as recurrentgemma's `jax/pallas.py`; no log space.

The backward pass of each is a second kernel running time in reverse (`jax.custom_vjp`).
Memory kept per step for it: the state after each step, that is h (an LSTM: h and c; the
linear recurrence: h), <[time, batch, state width]>; the gates are recomputed from the
state before the step and the kept input projection. The parameters' gradient is summed
per batch block inside the kernel and over the blocks after it.

Where it runs: on GPU by Triton, on TPU by Mosaic, elsewhere (CPU) in Pallas's interpret
mode, the same kernels as plain JAX: slow, for checking (`lax.platform_dependent` picks the
kernel at lowering, so `jax.export` for "cuda" or "tpu" works from a CPU). Triton takes
only power-of-two shapes: a layer whose units (or rows of its block) are not a power of two
of at least 16, or a cell step it cannot take whole, runs on GPU as "fused" (gated) or a
`lax.scan` of the recurrence (linear) instead. Block sizes: `BLOCKS`, per platform.
docs/performance.md has the estimate of what it gains, and the measurements once made.
The kernels: `pallas_gated.py` and `pallas_linear.py`; what they share, `pallas_common.py`.
"""
from __future__ import annotations

import functools
from typing import Optional

from rnn_jax.backends.base import FEATURES, Backend, Recurrence, cell_name, gates_of, linear_of
from rnn_jax.backends.pallas_common import BLOCKS, Blocks
from rnn_jax.backends.pallas_gated import _run_gated
from rnn_jax.backends.pallas_linear import _run_linear, linear_recurrence

__all__ = ["BLOCKS", "PALLAS", "Blocks", "backend", "linear_recurrence"]


def _cells(cell) -> Optional[str]:
  if gates_of(cell) is None and linear_of(cell) is None:
    return (f"it needs a cell that declares its gate layout (cells.Gates) or a linear form "
            f"(cells.Linear); {cell_name(cell)} declares neither")
  return None


def _run(recurrence: Recurrence, *, blocks: dict, interpret: Optional[bool]):
  if gates_of(recurrence.cell) is not None:
    return _run_gated(recurrence, blocks=blocks, interpret=interpret)
  return _run_linear(recurrence, blocks=blocks, interpret=interpret)


def backend(name: str = "pallas", *, interpret: Optional[bool] = None,
            platforms: Optional[tuple] = None, blocks: Optional[dict] = None) -> Backend:
  """The Pallas backend. `interpret`: None runs the kernels compiled on GPU (Triton) and
  TPU (Mosaic) and interpreted elsewhere; True interprets them everywhere; False never
  (then only "gpu" and "tpu" are its platforms). `blocks` replaces entries of `BLOCKS`
  (keys "gpu", "tpu", "interpret"), e.g. to run the TPU's cut in interpret mode."""
  if platforms is None and interpret is False:
    platforms = ("gpu", "tpu")
  run = functools.partial(_run, blocks={**BLOCKS, **(blocks or {})}, interpret=interpret)
  return Backend(name, "the whole sequence in one Pallas kernel per block of rows, weights "
                 "held on chip (Triton on GPU, Mosaic on TPU, interpreted elsewhere; opt-in)",
                 cells=_cells, platforms=platforms, dtypes=("float32",), features=FEATURES,
                 run=run, exportable=False)


PALLAS = backend()
