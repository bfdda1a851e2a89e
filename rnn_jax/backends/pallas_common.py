"""What the Pallas kernels of the "pallas" backend (`backends.pallas`) share: the block
sizes per platform (`BLOCKS`), the plan of a kernel's grid, the choice of compiled or
interpreted kernels at lowering, and the layouts that keep Triton's blocks whole (one
array per gate, rows padded to the block)."""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from rnn_jax.backends import gate_blocks

Array = jax.Array
_HIGHEST = lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class Blocks:
  """How a kernel cuts its arrays: `batch` rows per kernel instance (None: all of them),
  at most `time` steps per block of the sequence (None: the whole sequence in one block;
  otherwise the largest divisor of the length not above it), at most `units` columns per
  block of a linear recurrence (None: all)."""
  batch: Optional[int] = None
  time: Optional[int] = None
  units: Optional[int] = None


# The table per platform (docs/performance.md, "The persistent kernels"). GPU: one Triton
# program per 16 rows (tl.dot's smallest side) over the whole sequence, so that a batch
# spreads over the SMs and a step is the shortest chain of dependent work; Triton keeps a
# program's weights in registers and shared memory. TPU: up to 128 rows (the MXU's side)
# and 8 steps per block of the sequence, so that a backward kernel's blocks (a 32-unit
# LSTM's at 128 rows: about 13 MiB, lanes padded to 128, double-buffered) stay under the
# 16 MiB assumed as Mosaic's default scoped VMEM; the state crosses blocks of steps in the
# output's block, which stays in VMEM while its index does not change. Interpret mode:
# everything at once.
BLOCKS = {
    "gpu": Blocks(batch=16, time=None, units=128),
    "tpu": Blocks(batch=128, time=8, units=512),
    "interpret": Blocks(batch=None, time=None, units=None),
}


def _largest_divisor(n: int, cap: Optional[int]) -> int:
  if cap is None or n <= cap:
    return n
  return max(d for d in range(1, cap + 1) if n % d == 0)


def _power_of_two(n: int) -> bool:
  return n >= 1 and n & (n - 1) == 0


@dataclasses.dataclass(frozen=True)
class _Plan:
  """One platform's cut of one call: padded batch, rows and steps per block."""
  platform: str      # "gpu", "tpu" or "interpret"
  batch: int         # the batch padded to a multiple of `rows`
  rows: int
  time: int
  steps: int         # per block of the sequence
  units: int = 0     # linear: columns per block

  @property
  def grid_batch(self):
    return self.batch // self.rows

  @property
  def grid_time(self):
    return self.time // self.steps


def _plan(platform: str, blocks: Blocks, batch: int, time: int, units: int = 0) -> _Plan:
  rows = blocks.batch
  if rows is None or batch <= rows and platform != "gpu":
    rows = batch
  padded = -(-batch // rows) * rows
  column = units if blocks.units is None or units <= blocks.units or units % blocks.units \
      else blocks.units
  return _Plan(platform, padded, rows, time, _largest_divisor(time, blocks.time), column)


def _compiler_params(platform: str, semantics: tuple):
  # Imported when used, so that `import rnn_jax` does not import Pallas.
  # pylint: disable=import-outside-toplevel
  if platform == "gpu":
    from jax.experimental.pallas import triton as pltriton
    return pltriton.CompilerParams(num_warps=4, num_stages=1)
  if platform == "tpu":
    from jax.experimental.pallas import tpu as pltpu
    return pltpu.CompilerParams(dimension_semantics=semantics)
  return None


def _pallas_call(kernel, plan: _Plan, grid, in_specs, out_specs, out_shape, name, semantics):
  return pl.pallas_call(kernel, out_shape=out_shape, grid=grid, in_specs=in_specs,
                        out_specs=out_specs, interpret=plan.platform == "interpret",
                        compiler_params=_compiler_params(plan.platform, semantics),
                        name=name)


def _on_platforms(branches: dict, args, interpret: Optional[bool]):
  """branches[p](*args) for the platform p the computation is lowered for: "gpu" on CUDA
  and ROCm, "tpu", else "interpret" (or "interpret" everywhere with interpret=True)."""
  if interpret:
    return branches["interpret"](*args)
  if interpret is False:
    return lax.platform_dependent(*args, cuda=branches["gpu"], rocm=branches["gpu"],
                                  default=branches["tpu"])
  return lax.platform_dependent(*args, cuda=branches["gpu"], rocm=branches["gpu"],
                                tpu=branches["tpu"], default=branches["interpret"])


# ----------------------------------------------------------------------------- layouts
# An array crossing a kernel's boundary whose last axis is k > 1 blocks of `units` is laid
# out gate-major, <[k, ..., units]>, so that the kernel reads each gate's block as a whole
# array (`gate_blocks.Blocked` inside).

def _blocks_in(shape, units: int) -> int:
  width = shape[-1] if shape else 0
  return width // units if units and width > units and width % units == 0 else 1


def _to_layout(x: Array, k: int) -> Array:
  if k == 1:
    return x
  return jnp.moveaxis(x.reshape(*x.shape[:-1], k, x.shape[-1] // k), -2, 0)


def _from_layout(x: Array, k: int) -> Array:
  if k == 1:
    return x
  x = jnp.moveaxis(x, 0, -2)
  return x.reshape(*x.shape[:-2], k * x.shape[-1])


def _load(ref, k: int, index=()):
  """The value at ref[index] (whole, or `Blocked` along its last axis)."""
  if k == 1:
    return ref[index] if index else ref[...]
  blocks = [ref[(g, *index)] for g in range(k)]
  return gate_blocks.Blocked(blocks, blocks[0].ndim - 1)


def _flat(value, k: int, stats: gate_blocks.Stats) -> list:
  """The value as k arrays, its blocks along its last axis (k = 1: the whole array)."""
  if k == 1:
    return [gate_blocks.whole(value, stats)]
  shape = value.shape
  return gate_blocks.blocks_of(value, len(shape) - 1, [shape[-1] // k] * k, stats)


def _store(ref, k: int, index, parts: list):
  if k == 1:
    ref[index if index else ...] = parts[0]
    return
  for g, part in enumerate(parts):
    ref[(g, *index)] = part


def _pad_rows(x: Array, axis: int, rows: int, value=0.0) -> Array:
  extra = rows - x.shape[axis]
  if extra == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)


def _full_spec(shape):
  """The whole array in every grid step (the weights)."""
  zeros = (0,) * len(shape)
  return pl.BlockSpec(tuple(shape), lambda *_: zeros)


def _rows_axis(k: int, time_major: bool) -> int:
  """The batch axis of a laid-out array: [k?, time?, batch, ...]."""
  return (1 if k > 1 else 0) + (1 if time_major else 0)


def _pad_layout(x: Array, k: int, time_major: bool, rows: int, value=0.0) -> Array:
  return _pad_rows(_to_layout(x, k), _rows_axis(k, time_major), rows, value)


def _unpad_layout(x: Array, k: int, time_major: bool, batch: int) -> Array:
  return _from_layout(lax.slice_in_dim(x, 0, batch, axis=_rows_axis(k, time_major)), k)


def _spec(k: int, width: int, rows: int, steps: Optional[int] = None, reverse: int = 0):
  """The BlockSpec of a [k?, time?, batch, width/k] array on the grid (b, c): row block b,
  step block c (counted from the end with `reverse` = the number of step blocks)."""
  def time_block(c):
    return reverse - 1 - c if reverse else c
  lead = (k,) if k > 1 else ()
  zero = (0,) if k > 1 else ()
  if steps is None:
    return pl.BlockSpec((*lead, rows, width // k), lambda b, c: (*zero, b, 0))
  return pl.BlockSpec((*lead, steps, rows, width // k),
                      lambda b, c: (*zero, time_block(c), b, 0))
