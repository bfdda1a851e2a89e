"""Several processes (hosts) as one program, through `jax.distributed`.

Every process runs the same command with the same flags but its own --process_id:

  python -m experiments.adding_problem --coordinator_address=host0:1234 \
      --num_processes=2 --process_id=0     # on host 0 (and --process_id=1 on host 1)

`initialize` joins them before any computation; then `jax.devices()` lists the devices
of all processes and a `Mesh` over them spans every host. Data: every process builds
the same global batch from the same seed and `rnn_jax.train.placement.put` hands each of
its devices its slice (rows [p*B/P, (p+1)*B/P) of a batch of B rows on P equal
processes), so no process needs the others' data. Only the primary process (0) writes
files; checkpoints are written by all processes together through orbax
(rnn_jax.io.checkpoints).
"""
from __future__ import annotations

from typing import Optional

import jax
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
