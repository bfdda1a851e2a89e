"""Several processes (hosts) as one program, through `jax.distributed`.

Every process runs the same command with the same flags but its own --process_id:

  python -m experiments.adding_problem --coordinator_address=host0:1234 \
      --num_processes=2 --process_id=0     # on host 0 (and --process_id=1 on host 1)

`initialize` joins them before any computation; then `jax.devices()` lists the devices
of all processes and a `Mesh` over them spans every host. Data: every process builds
the same global batch from the same seed and `put` hands each of its devices its slice
(rows [p*B/P, (p+1)*B/P) of a batch of B rows on P equal processes), so no process
needs the others' data. Only the primary process (0) writes files; checkpoints are
written by all processes together through orbax (rnn_jax.checkpoints).
"""
from __future__ import annotations

from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from rnn_jax.errors import UserError


def initialize(coordinator_address: Optional[str], num_processes: Optional[int],
               process_id: Optional[int]) -> None:
  """Joins the other processes (once) when `num_processes` > 1; a no-op for one process."""
  if not num_processes or num_processes == 1 or jax.distributed.is_initialized():
    return
  if not coordinator_address:
    raise UserError(f"--num_processes={num_processes} needs --coordinator_address=host:port "
                    "(the address of process 0)")
  if process_id is None or not 0 <= process_id < num_processes:
    raise UserError(f"--process_id must be in [0, {num_processes}) with "
                    f"--num_processes={num_processes}, got {process_id!r}")
  # CPU devices of different processes talk through gloo (the default has no collectives);
  # the option only concerns the CPU backend, so it is harmless on GPU and TPU.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  except Exception as e:  # pylint: disable=broad-except
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    raise UserError(f"--coordinator_address={coordinator_address}: cannot join "
                    f"{num_processes} processes as process {process_id}: {first_line}") from None


def is_primary() -> bool:
  """True in the process that writes results, plots and checkpoint markers (process 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process got here (nothing to wait for in a single process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def put(arrays, sharding: jax.sharding.Sharding):
  """Host arrays, the same in every process, as global arrays laid out by `sharding`.

  Each process transfers only the slices its own devices hold.
  """
  if jax.process_count() == 1:
    return jax.device_put(arrays, sharding)
  return jax.tree.map(
      lambda a: jax.make_array_from_callback(np.shape(a), sharding,
                                             lambda index: np.asarray(a)[index]), arrays)


def replica_sharding(mesh: jax.sharding.Mesh, num_seeds: int) -> jax.sharding.NamedSharding:
  """Per-replica state (params, optimizer state, metric totals) of `--num_seeds` replicas:
  split over the mesh's 'seed' axis on its leading replica axis; one seed's is replicated."""
  spec = jax.sharding.PartitionSpec("seed") if num_seeds > 1 else jax.sharding.PartitionSpec()
  return jax.sharding.NamedSharding(mesh, spec)


def mesh_devices(num_devices: Optional[int]) -> list:
  """The first `num_devices` local devices of every process (default: all of them)."""
  per_process = {}
  for device in sorted(jax.devices(), key=lambda d: (d.process_index, d.id)):
    per_process.setdefault(device.process_index, []).append(device)
  local = len(jax.local_devices())
  num_devices = num_devices or local
  if num_devices > local:
    raise UserError(f"--num_devices={num_devices} but only {local} local device(s) exist")
  return [d for devices in per_process.values() for d in devices[:num_devices]]


# ---------------------------------------------------------------- sums over 'data' shards

def adds_by_copies(mesh: jax.sharding.Mesh) -> bool:
  """Whether per-device partial sums over the mesh's 'data' axis are added by copying
  them between devices (`rotated_shards`) rather than by an XLA all-reduce.

  True for several CPU devices of one process. XLA's in-process CPU collectives
  deadlock there: jaxlib 0.10's CPU client runs the collectives of every device on one
  thread pool sized by the cores, and a train loop that dispatches steps ahead, as
  `fit` does, stalls in an all-reduce's rendezvous within a few hundred steps (2
  devices on 2 cores, measured; an abort after 40 s). Copies between CPU devices are
  memcpys and need no rendezvous. GPUs, TPUs and several processes keep the all-reduce.
  """
  return (jax.process_count() == 1 and mesh.shape.get("data", 1) > 1
          and mesh.devices.flat[0].platform == "cpu")


def rotated_shards(partials, mesh: jax.sharding.Mesh) -> list:
  """The other devices' shards of `partials`, copied: one pytree per k = 1 .. n-1 (n the
  size of the mesh's 'data' axis) in which each device holds the shard of the device k
  places further along 'data' (in its own 'seed' row).

  `partials` holds per-device values stacked on a leading axis split over 'data' (each
  shard <[1, ...]>); adding a device's own shard and its shards of these gives every
  device the sum over 'data'. The copies are dispatched asynchronously.
  """
  grid = mesh.devices  # [seed, data]
  rows, n = grid.shape[0], grid.shape[1]

  def rotate(array, k):
    shard_of = {shard.device: shard.data for shard in array.addressable_shards}
    pieces = [jax.device_put(shard_of[grid[s, (d + k) % n]], grid[s, d])
              for s in range(rows) for d in range(n)]
    return jax.make_array_from_single_device_arrays(array.shape, array.sharding, pieces)

  return [jax.tree.map(lambda a, k=k: rotate(a, k), partials) for k in range(1, n)]
