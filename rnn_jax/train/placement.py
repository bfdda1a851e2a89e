"""Where a run's arrays live and how the devices' gradients are added: one home for both.

A run's devices form a ('seed', 'data') mesh: `--num_seeds` replicas spread over 'seed'
(no communication between them), each batch split over 'data'. Each device
differentiates its own rows and the devices' gradients and metric sums are added once
per step, after the backward pass (differentiating the whole batch under a sharding
annotation instead lets XLA add the parameter gradients inside the backward loop, one
all-reduce per time step). How they are added depends on the devices:

  * GPUs, TPUs and several processes: one `psum` over 'data'.
  * Several CPU devices of one process: by copies (`adds_by_copies`), as XLA's
    in-process CPU all-reduce deadlocks under a loop that dispatches ahead.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rnn_jax.errors import UserError


def put(arrays, sharding: jax.sharding.Sharding):
  """Host arrays, the same in every process, as global arrays laid out by `sharding`.

  Each process transfers only the slices its own devices hold.
  """
  if jax.process_count() == 1:
    return jax.device_put(arrays, sharding)
  return jax.tree.map(
      lambda a: jax.make_array_from_callback(np.shape(a), sharding,
                                             lambda index: np.asarray(a)[index]), arrays)


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


@dataclasses.dataclass(frozen=True)
class Placement:
  """A run's mesh and what follows from it: shardings, and how sums over 'data' are made."""
  mesh: Mesh
  num_seeds: int = 1

  @classmethod
  def make(cls, num_devices: Optional[int], batch_size: int, num_seeds: int = 1) -> "Placement":
    """A ('seed', 'data') mesh over the first `num_devices` local devices of every process:
    gcd(num_seeds, devices) along 'seed', the rest along 'data'. With several processes
    'seed' has one device: every process then holds every replica, whose metrics it reads
    on the host."""
    devices = mesh_devices(num_devices)
    seed_axis = math.gcd(num_seeds, len(devices)) if jax.process_count() == 1 else 1
    data_axis = len(devices) // seed_axis
    if batch_size % data_axis:
      where = f" ({jax.process_count()} processes)" if jax.process_count() > 1 else ""
      shared = f" left to the data by {num_seeds} seeds" if seed_axis > 1 else ""
      raise UserError(f"--batch_size={batch_size} is not divisible by the {data_axis} "
                      f"devices{where}{shared} of --num_devices={num_devices or len(devices)}")
    return cls(Mesh(np.array(devices).reshape(seed_axis, data_axis), ("seed", "data")),
               num_seeds)

  @classmethod
  def one_device(cls) -> "Placement":
    return cls(Mesh(np.array(jax.local_devices()[:1]).reshape(1, 1), ("seed", "data")))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def per_replica(self) -> NamedSharding:
    """Per-replica state (params, optimizer state, metric totals): split over 'seed' on its
    leading replica axis; one seed's is replicated."""
    return NamedSharding(self.mesh, PartitionSpec("seed") if self.num_seeds > 1
                         else PartitionSpec())

  @property
  def batches(self) -> NamedSharding:
    """Batches split over 'data' on their batch axis (stacked per seed: over 'seed' first)."""
    return NamedSharding(self.mesh, PartitionSpec(*(["seed"] if self.num_seeds > 1 else []),
                                                  "data"))

  @property
  def rows(self) -> NamedSharding:
    """Evaluation batches (the same for every replica): split over 'data'."""
    return NamedSharding(self.mesh, PartitionSpec("data"))

  @property
  def adds_by_copies(self) -> bool:
    """Whether sums over 'data' are made by copying per-device parts between devices
    (`rotated_shards`) rather than by an XLA all-reduce: on several CPU devices of one
    process. jaxlib 0.10's CPU client runs every device's collectives on one thread pool
    sized by the cores, and a loop that dispatches steps ahead, as `fit` does, stalls in
    an all-reduce's rendezvous within a few hundred steps (docs/performance.md)."""
    return (jax.process_count() == 1 and self.mesh.shape.get("data", 1) > 1
            and self.mesh.devices.flat[0].platform == "cpu")

  # --------------------------------------------------------------------------- train step

  def data_parallel_step(self, parts: Callable, update: Callable, state_spec):
    """The train step (state, epoch, x, y, weight) -> state, the batch split over 'data'.

    parts(params, totals, seeds, epoch, x, y, weight) -> (sums, grads) of one device's rows;
    update(state, sums, grads) -> state from the whole batch's. `state_spec` is the
    state's tree of PartitionSpecs. The state is donated.
    """
    replicas, data = self.per_replica.spec, self.batches.spec
    batch_specs = (data,) * 3
    # check_vma=False: after the sum over 'data' the update is the same on every device of
    # 'data', so its results are replicated over it, which shard_map cannot infer.
    shard_map = functools.partial(jax.shard_map, mesh=self.mesh, check_vma=False)

    if not self.adds_by_copies:
      def step(state, epoch, x, y, weight):
        sums, grads = parts(state.params, state.totals, state.seeds, epoch, x, y, weight)
        if self.mesh.shape["data"] > 1:
          sums, grads = jax.lax.psum((sums, grads), "data")
        return update(state, sums, grads)

      return jax.jit(shard_map(step, in_specs=(state_spec, PartitionSpec()) + batch_specs,
                               out_specs=state_spec), donate_argnums=(0,))

    # Each device's parts travel as one flat vector <float32>[1, size] (a leading axis over
    # 'data'): one copy per pair of devices rather than one per parameter.
    part_spec = PartitionSpec(("seed", "data"))  # every device its own (replicas' parts)
    layout = {}  # the parts' unravel function, set when make_parts is traced

    def flat_parts(*args):
      flat, layout["unravel"] = ravel_pytree(parts(*args))
      return flat[None]

    make_parts = jax.jit(shard_map(
        flat_parts, in_specs=(replicas,) * 3 + (PartitionSpec(),) + batch_specs,
        out_specs=part_spec))
    n = self.mesh.shape["data"]

    def add_in_order(*shards):
      """The sum over 'data' in the same order on every device, so that the replicated
      results are bitwise equal: shards[k] is device (d + k) % n's, put back in place."""
      if n > 2:  # (for two, a + b == b + a exactly)
        stacked = jnp.roll(jnp.concatenate(shards), jax.lax.axis_index("data"), axis=0)
        shards = [stacked[i:i + 1] for i in range(n)]
      return functools.reduce(jnp.add, shards)[0]

    def add_and_update(state, own, *others):
      sums, grads = layout["unravel"](add_in_order(own, *others))
      return update(state, sums, grads)

    add_and_update_jit = jax.jit(
        shard_map(add_and_update, in_specs=(state_spec,) + (part_spec,) * n,
                  out_specs=state_spec), donate_argnums=(0,))

    def step(state, epoch, x, y, weight):
      own = make_parts(state.params, state.totals, state.seeds, epoch, x, y, weight)
      return add_and_update_jit(state, own, *self.rotated_shards(own))

    step.programs = (make_parts, add_and_update_jit)  # for inspection (tests)
    return step

  def rotated_shards(self, partials) -> list:
    """The other devices' shards of `partials`, copied: one pytree per k = 1 .. n-1 (n the
    size of 'data') in which each device holds the shard of the device k places further
    along 'data' (in its own 'seed' row). `partials` holds per-device values stacked on a
    leading axis split over 'data'; the copies are dispatched asynchronously."""
    grid = self.mesh.devices  # [seed, data]
    rows, n = grid.shape[0], grid.shape[1]

    def rotate(array, k):
      shard_of = {shard.device: shard.data for shard in array.addressable_shards}
      pieces = [jax.device_put(shard_of[grid[s, (d + k) % n]], grid[s, d])
                for s in range(rows) for d in range(n)]
      return jax.make_array_from_single_device_arrays(array.shape, array.sharding, pieces)

    return [jax.tree.map(lambda a, k=k: rotate(a, k), partials) for k in range(1, n)]

  # --------------------------------------------------------------------------- evaluation

  def eval_step(self, eval_step: Callable):
    """Jits eval_step(params, totals, x, y, weight) -> totals (totals donated), batches
    split over 'data'. On several CPU devices each device keeps its own totals <[1, ...]>,
    added up on the host by `read_totals` (an all-reduce there can deadlock)."""
    replicas, rows = self.per_replica, self.rows
    if not self.adds_by_copies:
      return jax.jit(eval_step, in_shardings=(replicas, replicas, rows, rows, rows),
                     out_shardings=replicas, donate_argnums=(1,))
    per_device = PartitionSpec("data", *replicas.spec)
    own_rows = lambda p, totals, *batch: jax.tree.map(
        lambda a: a[None], eval_step(p, jax.tree.map(lambda a: a[0], totals), *batch))
    return jax.jit(jax.shard_map(own_rows, mesh=self.mesh, check_vma=False,
                                 in_specs=(replicas.spec, per_device) + (rows.spec,) * 3,
                                 out_specs=per_device), donate_argnums=(1,))

  def put_totals(self, totals):
    """Host totals laid out as `eval_step`'s (one row per device where it adds by copies)."""
    if self.adds_by_copies:
      totals = {k: np.stack([v] * self.mesh.shape["data"]) for k, v in totals.items()}
      return put(totals, NamedSharding(self.mesh, PartitionSpec("data",
                                                                *self.per_replica.spec)))
    return put(totals, self.per_replica)

  def read_totals(self, totals) -> dict:
    """`eval_step`'s totals on the host, added over devices."""
    totals = jax.device_get(totals)
    if self.adds_by_copies:
      totals = {k: np.sum(v, axis=0) for k, v in totals.items()}
    return totals
