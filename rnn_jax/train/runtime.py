"""Runtime set-up before JAX's first computation: join the processes, make the devices.

Each experiment's `main` calls `set_up(FLAGS)` first thing; a library user who wants one
CPU device per core calls `cpu_devices_per_core` before computing. `fit` itself calls
`keep_freed_memory`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import sys

import jax
from absl import flags

from rnn_jax import distributed
from rnn_jax.errors import UserError
from rnn_jax.train.options import check_flags

# At most this many CPU devices: each step copies every device's gradient to every other
# (placement.rotated_shards), n(n - 1) copies dispatched by the host, and 8 rows per
# device of a batch of 64 are already few. (Measured on 2 cores only.)
MAX_CPU_DEVICES = 8


def check(flag_values: flags.FlagValues) -> dict:
  """The shared flags' values, checked without side effects (an experiment calls it before
  it reads or tokenizes data): a bad value, or a batch that does not split over
  --num_devices, is a one-line `UserError`."""
  values = {name: flag_values[name].value for name in flag_values}
  check_flags(values)
  devices, num_seeds = values["num_devices"], values["num_seeds"]
  # Before JAX makes its devices (a CPU gets as many as the batch splits into, so a batch
  # that does not split over --num_devices would otherwise read as too few devices).
  if (devices and devices <= MAX_CPU_DEVICES
      and values["batch_size"] % (devices // math.gcd(num_seeds, devices))):
    data_axis = devices // math.gcd(num_seeds, devices)
    shared = f" left to the data by {num_seeds} seeds" if data_axis != devices else ""
    raise UserError(f"--batch_size={values['batch_size']} is not divisible by the {data_axis} "
                    f"devices{shared} of --num_devices={devices}")
  return values


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
  every one of them in: half of that step's time (docs/performance.md, "the allocator").
  Blocks below 256 MB now come from the heap, which keeps 64 MB spare at its top. The
  cost is memory: a process keeps its peak heap rather than returning it.
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (musl has no mallopt)
    return False
  return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and mallopt(_M_TOP_PAD, _TOP_PAD))


def set_up(flag_values: flags.FlagValues) -> None:
  """Joins the other processes (--num_processes > 1) or, in one process, makes one CPU
  device per core; bad shared flags raise a one-line `UserError` first (`check`)."""
  values = check(flag_values)
  distributed.initialize(values["coordinator_address"], values["num_processes"],
                         values["process_id"])
  if values["num_processes"] == 1:
    cpu_devices_per_core(values["num_seeds"], values["batch_size"])
  keep_freed_memory()


def cpu_devices_per_core(num_seeds: int, batch_size: int) -> int:
  """On a CPU, one device per core for training; returns the number of devices made.

  XLA runs a CPU device's program on one core, so a run on JAX's single CPU device
  leaves the other cores idle. Here the mesh gets one device per core, up to
  `MAX_CPU_DEVICES` (`cpu_device_count`): replicas of --num_seeds spread over them
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
