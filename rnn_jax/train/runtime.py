"""Process-wide set-up that a program chooses before JAX's first computation.

A program that wants one CPU device per core calls `cpu_devices_per_core` before
computing, and `keep_freed_memory` to keep the C allocator's freed memory; processes
join through `rnn_jax.distributed.initialize`. `fit` calls none of them (the
experiments do, in `experiments.train_flags.set_up`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import sys

import jax

# At most this many CPU devices: each step copies every device's gradient to every other
# (placement.rotated_shards), n(n - 1) copies dispatched by the host, and 8 rows per
# device of a batch of 64 are already few. (A bound by reasoning: only 2 devices have been
# timed; docs/performance.md, "Several CPU devices in one process".)
MAX_CPU_DEVICES = 8


# glibc's mallopt parameters, and what keep_freed_memory sets them to.
_M_TOP_PAD, _M_MMAP_THRESHOLD = -2, -3
_MMAP_THRESHOLD = 256 << 20
_TOP_PAD = 64 << 20


def keep_freed_memory() -> bool:
  """Lets the C allocator keep freed memory for reuse instead of returning it to the OS
  after every train step. Returns whether it changed anything (glibc on Linux only).

  XLA's CPU runtime allocates each execution's temporaries as one block, tens of MB for a
  whole sequence's arrays (minLSTM on IMDB: 500 steps x 64 rows x 32 units per array).
  Above glibc's mmap threshold (at most 32 MB) each step maps fresh pages and faults
  every one of them in, which can take as long as the step's arithmetic
  (docs/performance.md, "The allocator", has the numbers). Blocks below 256 MB now come
  from the heap, which keeps 64 MB spare at its top. The cost is memory: a process keeps
  its peak heap rather than returning it.
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (musl has no mallopt)
    return False
  return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and mallopt(_M_TOP_PAD, _TOP_PAD))


def cpu_devices_per_core(num_seeds: int, batch_size: int) -> int:
  """On a CPU, one device per core for training; returns the number of devices made.

  XLA runs a CPU device's program on one core, so a run on JAX's single CPU device
  leaves the other cores idle. Here the mesh gets one device per core, up to
  `MAX_CPU_DEVICES` (`cpu_device_count`): the `num_seeds` replicas spread over them
  first, and the rest split each batch. Made as jax's CPU devices
  (`jax_num_cpu_devices`), only before JAX's first computation and when XLA_FLAGS does
  not already set the number of CPU devices; GPU and TPU backends are untouched.
  Returns 0 where it changed nothing.
  """
  devices = cpu_device_count(num_seeds, batch_size, min(os.cpu_count() or 1, MAX_CPU_DEVICES))
  if devices < 2 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return 0
  try:
    jax.config.update("jax_num_cpu_devices", devices)
  except RuntimeError:  # JAX has computed already: keep its devices
    return 0
  return devices


def cpu_device_count(num_seeds: int, batch_size: int, cores: int) -> int:
  """The most devices, at most `cores`, that a mesh can use (see `placement.Placement`):
  gcd(num_seeds, d) along 'seed' and a 'data' axis that divides `batch_size`."""
  return max(d for d in range(1, max(cores, 1) + 1)
             if batch_size % (d // math.gcd(max(num_seeds, 1), d)) == 0)
