"""The one training loop every experiment shares: `fit`, `evaluate`, flags and results.

  FLAGS = train.define_flags(epochs=10, batch_size=128)      # shared absl flags
  options = train.TrainOptions.from_flags(FLAGS, experiment="imdb", model_name="lstm")
  result = train.fit(model, batches, loss="bce_logits", metrics=("accuracy",), options=options)

`fit` trains a `model` (init(key, sample_x), apply(params, x, *, training, key)) on a
`rnn_jax.data.batches.Batches` with a Keras optimizer (rnn_jax.optim), data-parallel over
a `jax.sharding.Mesh` of `--num_devices` local devices (one device is a mesh of one; each
device differentiates its rows and the gradients are added once per step, see
`_make_train_step`). On a CPU, where XLA runs one device's program on one core,
`TrainOptions.from_flags` makes one CPU device per core (`cpu_devices_per_core`). It
checkpoints after every epoch (rnn_jax.checkpoints), so that `--resume` after a crash, a
SIGKILL or a Ctrl-C ends with the same results as an uninterrupted run, and writes
`<workdir>/results.json`, `<workdir>/history.png` and a progress line per epoch.

Randomness: the model is initialised with `key(seed)`; the dropout key of step `s`
(0-based) of epoch `e` (1-based) is `fold_in(fold_in(key(seed), e), s)`; the batches of
epoch `e` are `batches.train(seed, e)`. Nothing else is random, so a run is a function
of its flags.

Many seeds: `--num_seeds=N` trains N independent replicas in one compiled program, replica
`r` exactly as a run with `--seed=seed+r` (its own initialisation, dropout keys and batch
order; the same data, validation and test batches). Parameters, optimizer state and
accumulators get a leading replica axis and the train step is `jax.vmap`ped inside the
jitted, sharded step; with N = 1 nothing is vmapped. The mesh is ('seed', 'data'): the
replicas are spread over the devices first (gcd(N, devices) of them, in one process; no
communication between replicas), the rest split each batch <[N, batch, ...]> on its
second axis.
results.json then holds every replica's results under "replicas", their "mean" and "std"
(sample standard deviation, ddof=1), and at the top level the mean history, val and test
over replicas, with "best_epoch" the list of the replicas' best epochs.

Several hosts: --num_processes > 1 joins the processes through `jax.distributed`
(rnn_jax.distributed) when the options are made from the flags; the mesh then spans the
devices of every process, each process feeds its own rows of each global batch, and
process 0 alone takes the workdir's lock and writes results.json and the plots.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import itertools
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np
import optax
from absl import flags
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rnn_jax import checkpoints, distributed, optim, plots, recurrent
from rnn_jax import metrics as metrics_lib
from rnn_jax.errors import UserError

LOSSES, METRICS, evaluate = metrics_lib.LOSSES, metrics_lib.METRICS, metrics_lib.evaluate
# Flags that may differ between a run and its resumption.
_RESUMABLE_FLAGS = ("resume", "overwrite", "epochs", "workdir", "num_devices",
                    "coordinator_address", "num_processes", "process_id")
# Flags of these packages are not the experiment's: not recorded in results.json.
_LIBRARY_MODULES = ("absl", "orbax", "jax", "jaxlib", "flax", "etils", "keras", "tensorflow")


# ----------------------------------------------------------------------------- flags

def define_flags(**defaults) -> flags.FlagValues:
  """Registers the shared training flags (once) and sets the experiment's defaults."""
  if "num_devices" not in flags.FLAGS:
    flags.DEFINE_string("workdir", None,
                        "Output directory (default runs/<experiment>/<model>).")
    flags.DEFINE_integer("seed", 0, "Seed of the initialisation, dropout and shuffling.")
    flags.DEFINE_integer("epochs", 10, "Number of epochs.")
    flags.DEFINE_integer("batch_size", 32, "Global batch size (over all devices).")
    flags.DEFINE_integer("steps_per_epoch", None, "Training steps per epoch (default: the data's).")
    flags.DEFINE_integer("validation_steps", None, "Validation steps (default: the data's).")
    flags.DEFINE_float("validation_split", 0.2, "Fraction of array data held out for validation.")
    flags.DEFINE_enum("optimizer", "rmsprop", optim.OPTIMIZERS, "Optimizer, with Keras's defaults.")
    flags.DEFINE_float("learning_rate", 1e-3, "Learning rate.")
    flags.DEFINE_float("clip_norm", None, "Clip gradients to this global norm.")
    flags.DEFINE_bool("resume", False, "Continue from the workdir's latest checkpoint.")
    flags.DEFINE_bool("overwrite", False, "Replace a finished or interrupted run in the workdir.")
    flags.DEFINE_integer("num_devices", None, "Devices per process (default: all local "
                         "ones); --num_seeds replicas are spread over them first, the "
                         "rest split each batch.")
    flags.DEFINE_integer("num_seeds", 1, "Train this many replicas at once, replica r as "
                         "--seed=seed+r would (vmapped in one program).")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for "
                        "--num_processes > 1 (jax.distributed).")
    flags.DEFINE_integer("num_processes", 1, "Processes (hosts) training together.")
    flags.DEFINE_integer("process_id", 0, "This process's index in [0, --num_processes).")
  for name, value in defaults.items():
    if name not in flags.FLAGS:
      raise ValueError(f"define_flags: no flag named {name!r}")
    flags.FLAGS.set_default(name, value)
  return flags.FLAGS


def _check_flags(values: Mapping[str, Any]) -> None:
  """One-line UserError for the first bad shared flag value."""
  def need(ok: bool, name: str, what: str):
    if not ok:
      raise UserError(f"--{name} must be {what}, got {values[name]!r}")
  positive_int = lambda v: isinstance(v, int) and v >= 1
  need(positive_int(values["epochs"]), "epochs", "a positive integer")
  need(positive_int(values["batch_size"]), "batch_size", "a positive integer")
  for name in ("steps_per_epoch", "validation_steps", "num_devices"):
    need(values[name] is None or positive_int(values[name]), name, "a positive integer")
  for name in ("num_seeds", "num_processes"):
    need(positive_int(values.get(name, 1)), name, "a positive integer")
  need(0.0 <= values["validation_split"] < 1.0, "validation_split", "in [0, 1)")
  need(math.isfinite(values["learning_rate"]) and values["learning_rate"] > 0,
       "learning_rate", "positive")
  need(values["clip_norm"] is None or (math.isfinite(values["clip_norm"])
                                       and values["clip_norm"] > 0), "clip_norm", "positive")


@dataclasses.dataclass(frozen=True)
class TrainOptions:
  """Everything `fit` needs to know besides the model and the data."""
  experiment: str
  model_name: str
  workdir: str
  seed: int = 0
  epochs: int = 10
  optimizer: str = "rmsprop"
  learning_rate: float = 1e-3
  clip_norm: Optional[float] = None
  resume: bool = False
  overwrite: bool = False
  num_devices: Optional[int] = None  # per process
  num_seeds: int = 1
  flags: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # recorded in results.json
  steps_per_epoch: Optional[int] = None   # None: the data's own
  validation_steps: Optional[int] = None  # None: the data's own

  @classmethod
  def from_flags(cls, flag_values: flags.FlagValues, *, experiment: str, model_name: str,
                 workdir: Optional[str] = None) -> "TrainOptions":
    """Options from parsed flags; bad values raise a one-line `UserError`.

    `workdir` overrides --workdir (e.g. one subdirectory per model of a comparison);
    by default it is --workdir, or runs/<experiment>/<model_name>. With
    --num_processes > 1 this also joins the other processes (once; before any computation).
    """
    recorded = {f.name: f.value for module, module_flags in
                flag_values.flags_by_module_dict().items()
                if module.split(".")[0] not in _LIBRARY_MODULES for f in module_flags}
    values = {name: flag_values[name].value for name in flag_values}
    _check_flags(values)
    distributed.initialize(values["coordinator_address"], values["num_processes"],
                           values["process_id"])
    if values["num_processes"] == 1:
      cpu_devices_per_core(values["num_seeds"], values["batch_size"])
    return cls(
        experiment=experiment, model_name=model_name,
        workdir=workdir or values["workdir"] or os.path.join("runs", experiment, model_name),
        seed=values["seed"], epochs=values["epochs"], optimizer=values["optimizer"],
        learning_rate=values["learning_rate"], clip_norm=values["clip_norm"],
        resume=values["resume"], overwrite=values["overwrite"],
        num_devices=values["num_devices"], num_seeds=values["num_seeds"], flags=recorded,
        steps_per_epoch=values["steps_per_epoch"],
        validation_steps=values["validation_steps"])


def cpu_devices_per_core(num_seeds: int, batch_size: int) -> int:
  """On a CPU, one device per core for training; returns the number of devices made.

  XLA runs a CPU device's program on one core, so a run on JAX's single CPU device
  leaves the other cores idle. Here the mesh gets one device per core, up to
  `MAX_CPU_DEVICES` (`cpu_device_count`): replicas of --num_seeds spread over them
  first, and the rest split each batch (their gradients added by copies,
  `distributed.adds_by_copies`). Made as jax's CPU devices (`jax_num_cpu_devices`), only before
  JAX's first computation and when XLA_FLAGS does not already set the number of CPU
  devices; GPU and TPU backends are untouched. Returns 0 where it changed nothing.
  """
  devices = cpu_device_count(num_seeds, batch_size, min(os.cpu_count() or 1, MAX_CPU_DEVICES))
  if devices < 2 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return 0
  try:
    jax.config.update("jax_num_cpu_devices", devices)
  except RuntimeError:  # JAX has computed already: keep its devices
    return 0
  return devices


# At most this many CPU devices: each step copies every device's gradient to every other
# (distributed.rotated_shards), n(n - 1) copies dispatched by the host, and 8 rows per
# device of a batch of 64 are already few. (Measured on 2 cores only.)
MAX_CPU_DEVICES = 8


def cpu_device_count(num_seeds: int, batch_size: int, cores: int) -> int:
  """The most devices, at most `cores`, that a mesh can use (see `_mesh`): gcd(num_seeds, d)
  along 'seed' and a 'data' axis that divides `batch_size`."""
  return max(d for d in range(1, max(cores, 1) + 1)
             if batch_size % (d // math.gcd(max(num_seeds, 1), d)) == 0)


# ---------------------------------------------------------------------------- results

def write_results(workdir: os.PathLike, results: Mapping[str, Any]) -> Path:
  """Writes `<workdir>/results.json` atomically; returns its path."""
  path = Path(workdir) / "results.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  checkpoints.write_atomic(path, json.dumps(results, indent=2) + "\n")
  return path


class FitResult(NamedTuple):
  results: dict  # as written to results.json
  params: Any    # the best checkpoint's parameters


class Diverged(UserError):
  """The loss became NaN or infinite."""


class Interrupted(UserError):
  """SIGINT: the run stopped after saving a checkpoint."""


def _kill_point(name: str) -> None:
  """Fault injection for tests: RNN_JAX_TEST_KILL_AT=<name> sends the process SIGKILL
  (or RNN_JAX_TEST_KILL_SIGNAL, e.g. INT) at the named point:

    step:<epoch>:<step>    after dispatching that train step (both 1-based)
    latest:<epoch>:<step>  inside the write of that latest checkpoint, before its commit
    best:<epoch>           inside the write of that best checkpoint, before its commit
    epoch:<epoch>          after that epoch's checkpoints
    results                before writing results.json
  """
  if os.environ.get("RNN_JAX_TEST_KILL_AT") == name:
    signum = getattr(signal, "SIG" + os.environ.get("RNN_JAX_TEST_KILL_SIGNAL", "KILL"))
    os.kill(os.getpid(), signum)


class _StopOnSigint:
  """While active, the first SIGINT only sets `requested` (the loop saves and stops);
  a second one interrupts as usual."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handler(self, signum, frame):
    self.requested = True
    signal.signal(signal.SIGINT, self._previous)
    print("\nSIGINT: stopping after saving a checkpoint (Ctrl-C again to abort)",
          file=sys.stderr, flush=True)

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGINT, self._handler)
    except ValueError:  # not the main thread: leave SIGINT alone
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _lock(workdir: Path):
  """An exclusive lock on the workdir for this process's lifetime (freed even by SIGKILL)."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"--workdir: cannot create {workdir}: {e.strerror or e}") from None
  lock_file = open(workdir / ".lock", "w")  # pylint: disable=consider-using-with
  try:
    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    lock_file.close()
    raise UserError(f"another run is using {workdir} (it holds {workdir / '.lock'})") from None
  return lock_file


def _prepare_workdir(options: TrainOptions) -> Path:
  """Refuses to touch a finished or interrupted run unless --overwrite / --resume."""
  workdir = Path(options.workdir)
  ckpt_dir = workdir / "checkpoints"
  if options.overwrite:
    if distributed.is_primary():
      for name in ("results.json", "history.png"):
        (workdir / name).unlink(missing_ok=True)
      shutil.rmtree(ckpt_dir, ignore_errors=True)
  elif (workdir / "results.json").exists():
    raise UserError(f"{workdir} already holds a finished run ({workdir / 'results.json'}); "
                    "pass --overwrite to replace it or choose another --workdir")
  elif not options.resume and checkpoints.committed(ckpt_dir / "latest"):
    raise UserError(f"{workdir} holds an unfinished run ({ckpt_dir}); pass --resume to "
                    "continue it or --overwrite to start over")
  return workdir


# ----------------------------------------------------------------------------- fit

def _mesh(num_devices: Optional[int], batch_size: int, num_seeds: int = 1) -> Mesh:
  """A ('seed', 'data') mesh over the first `num_devices` local devices of every process:
  gcd(num_seeds, devices) along 'seed', the rest along 'data'. With several processes
  'seed' has one device: every process then holds every replica, whose metrics it reads
  on the host."""
  devices = distributed.mesh_devices(num_devices)
  seed_axis = math.gcd(num_seeds, len(devices)) if jax.process_count() == 1 else 1
  data_axis = len(devices) // seed_axis
  if batch_size % data_axis:
    where = f" ({jax.process_count()} processes)" if jax.process_count() > 1 else ""
    shared = f" left to the data by {num_seeds} seeds" if seed_axis > 1 else ""
    raise UserError(f"--batch_size={batch_size} is not divisible by the {data_axis} "
                    f"devices{where}{shared} of --num_devices={num_devices or len(devices)}")
  return Mesh(np.array(devices).reshape(seed_axis, data_axis), ("seed", "data"))


def _batch_sharding(mesh: Mesh, num_seeds: int) -> NamedSharding:
  """Batches split over 'data' on their batch axis (stacked per seed: over 'seed' first)."""
  return NamedSharding(mesh, PartitionSpec(*(["seed"] if num_seeds > 1 else []), "data"))


def _make_train_step(model, optimizer: optax.GradientTransformation, loss: str,
                     metrics: Sequence[str], mesh: Mesh, num_seeds: int = 1):
  """(params, opt_state, totals, seed, epoch, x, y, weight) -> (params, opt_state, totals).

  One optimizer step on the weighted mean loss of a batch split over 'data': each device
  differentiates the loss summed over its rows, and the devices' gradients and metric
  sums are added once per step, after the backward pass, by one all-reduce or, on several
  CPU devices, by copies between a program that makes the parts and one that adds them
  and updates (`distributed.adds_by_copies`). (Differentiating the whole batch under a
  sharding annotation instead lets XLA's partitioner add the parameter gradients across
  devices inside the backward loop, one all-reduce per time step.) Dropout masks are
  drawn for the whole batch (`recurrent.batch_shards`). `totals` accumulates the epoch's
  weighted sums on the device (so the host never waits for a step), counts the steps
  (the dropout key is fold_in(fold_in(key(seed), epoch), step)) and remembers the first
  step whose loss was not finite. The first three arguments are donated. With num_seeds > 1 everything
  but `epoch` has a leading replica axis, split over 'seed', and the step is vmapped over
  each device's replicas.
  """
  replicas = distributed.replica_sharding(mesh, num_seeds).spec
  data = _batch_sharding(mesh, num_seeds).spec
  batched = (lambda f, *axes: jax.vmap(f, in_axes=axes)) if num_seeds > 1 else (
      lambda f, *axes: f)

  def parts(params, totals, seed, epoch, x, y, weight):
    """This device's rows: (metric sums, gradient of the loss sum)."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), totals["steps"])

    def objective(p, x, y, weight):
      sums = metrics_lib.sums(loss, metrics, model.apply(p, x, training=True, key=key),
                              y, weight)
      return sums["loss"], sums

    with recurrent.batch_shards("data"):
      (_, sums), grads = jax.value_and_grad(objective, has_aux=True)(params, x, y, weight)
    return sums, grads

  def update(params, opt_state, totals, sums, grads):
    """The optimizer step from the whole batch's sums and gradient."""
    count = jnp.maximum(sums["count"], 1.0)
    updates, opt_state = optimizer.update(jax.tree.map(lambda g: g / count, grads),
                                          opt_state, params)
    params = optax.apply_updates(params, updates)
    step = totals["steps"]
    totals = {k: totals[k] + sums[k] if k in sums else totals[k] for k in totals}
    totals["steps"] = step + 1
    totals["first_nonfinite"] = jnp.where(
        (totals["first_nonfinite"] < 0) & ~jnp.isfinite(sums["loss"] / count), step,
        totals["first_nonfinite"])
    return params, opt_state, totals

  parts = batched(parts, 0, 0, 0, None, 0, 0, 0)
  update = batched(update, 0, 0, 0, 0, 0)
  state_specs, batch_specs = (replicas,) * 4 + (PartitionSpec(),), (data,) * 3
  # check_vma=False: after the sum over 'data' the update is the same on every device of
  # 'data', so its results are replicated over it, which shard_map cannot infer.
  shard_map = functools.partial(jax.shard_map, mesh=mesh, check_vma=False)

  if not distributed.adds_by_copies(mesh):
    def train_step(params, opt_state, totals, seed, epoch, x, y, weight):
      sums, grads = parts(params, totals, seed, epoch, x, y, weight)
      if mesh.shape["data"] > 1:
        sums, grads = jax.lax.psum((sums, grads), "data")
      return update(params, opt_state, totals, sums, grads)

    return jax.jit(shard_map(train_step, in_specs=state_specs + batch_specs,
                             out_specs=(replicas,) * 3), donate_argnums=(0, 1, 2))

  # Each device's parts travel as one flat vector <float32>[1, size] (a leading axis over
  # 'data'): one copy per pair of devices rather than one per parameter.
  part_spec = PartitionSpec(("seed", "data"))  # every device its own (replicas' parts)
  make_parts = jax.jit(shard_map(
      lambda *args: ravel_pytree(parts(*args))[0][None],
      in_specs=(replicas,) * 3 + (PartitionSpec(),) + batch_specs, out_specs=part_spec))

  n = mesh.shape["data"]
  sum_names = ("loss", *metrics, "count")  # the keys of metrics_lib.sums

  def add_in_order(*shards):
    """The sum over 'data' in the same order on every device, so that the replicated
    results are bitwise equal: shards[k] is device (d + k) % n's, put back in place."""
    if n > 2:  # (for two, a + b == b + a exactly)
      stacked = jnp.roll(jnp.concatenate(shards), jax.lax.axis_index("data"), axis=0)
      shards = [stacked[i:i + 1] for i in range(n)]
    return functools.reduce(jnp.add, shards)[0]

  def add_and_update(params, opt_state, totals, *all_parts):
    # (sums, grads) have the shapes of (these totals, params): unravel by their layout.
    _, unravel = ravel_pytree(({k: totals[k] for k in sum_names}, params))
    sums, grads = unravel(add_in_order(*all_parts))
    return update(params, opt_state, totals, sums, grads)

  add_and_update = jax.jit(
      shard_map(add_and_update, in_specs=(replicas,) * 3 + (part_spec,) * n,
                out_specs=(replicas,) * 3), donate_argnums=(0, 1, 2))

  def train_step(params, opt_state, totals, seed, epoch, x, y, weight):
    own = make_parts(params, totals, seed, epoch, x, y, weight)
    return add_and_update(params, opt_state, totals, own, *distributed.rotated_shards(own, mesh))

  train_step.programs = (make_parts, add_and_update)  # for inspection (tests)
  return train_step


def _train_batches(batches, seeds: Sequence[int], epoch: int):
  """The epoch's batches: replica r's from `batches.train(seeds[r], epoch)`, stacked
  <[num_seeds, batch, ...]> (as they are for a single seed)."""
  if len(seeds) == 1:
    return batches.train(seeds[0], epoch)
  return (tuple(np.stack(parts) for parts in zip(*step))
          for step in zip(*(batches.train(seed, epoch) for seed in seeds)))


def _init_params(model, batches, seeds: Sequence[int]):
  """Host params: model.init(key(seed), its first batch) per seed (stacked for several)."""
  inits = []
  for seed in seeds:
    sample_x, _, _ = next(iter(batches.train(seed, 1)))
    inits.append(jax.device_get(model.init(jax.random.key(seed), jnp.asarray(sample_x))))
  return inits[0] if len(seeds) == 1 else jax.tree.map(lambda *xs: np.stack(xs), *inits)


def _initial_state(host_params, optimizer: optax.GradientTransformation, mesh: Mesh,
                   seeds: Sequence[int]):
  """(params, opt_state, seed values) of a fresh run, laid out on `mesh` as the train step
  takes them (one replica per seed, stacked when there are several)."""
  num_seeds = len(seeds)
  per_replica = distributed.replica_sharding(mesh, num_seeds)
  params = distributed.put(host_params, per_replica)
  opt_state = jax.jit(jax.vmap(optimizer.init) if num_seeds > 1 else optimizer.init,
                      out_shardings=per_replica)(params)
  seed_values = distributed.put(np.asarray(seeds if num_seeds > 1 else seeds[0], np.int32),
                                per_replica)
  return params, opt_state, seed_values


def _save(directory: Path, name: str, state, meta, *, keep: int, kill_point: str) -> None:
  try:
    checkpoints.save(directory, name, state, meta, keep=keep,
                     before_commit=lambda: _kill_point(kill_point))
  except OSError as e:
    raise UserError(f"cannot write checkpoint {directory / name}: {e.strerror or e}") from None


def fit(model, batches, *, loss: str, metrics: Sequence[str] = (), options: TrainOptions,
        target_unit: Optional[tuple[str, float]] = None,
        extra_results: Optional[Mapping[str, Any]] = None) -> FitResult:
  """Trains `model` on `batches`, checkpointing every epoch; see the module docstring.

  Args:
    model: has init(key, sample_x) -> params and apply(params, x, *, training, key) -> y.
    batches: a `rnn_jax.data.batches.Batches`.
    loss: "mae" | "mse" | "bce_logits" (binary cross-entropy on logits), averaged over
      the real rows (weight 1) of each batch.
    metrics: a subset of ("accuracy", "mae"); accuracy compares logits > 0 with y > 0.5.
    options: `TrainOptions`.
    target_unit: (unit, scale): every "mae" value also gets "mae_<unit>" = mae * scale.
    extra_results: added to results.json.

  Returns:
    FitResult(results, params) with the best epoch's (lowest validation loss; training
    loss without validation data) params; with num_seeds > 1 stacked over replicas,
    each replica's from its own best epoch.
  """
  metrics_lib.check_names(loss, metrics)
  steps_per_epoch = options.steps_per_epoch or batches.steps_per_epoch
  if steps_per_epoch > batches.steps_per_epoch:
    raise UserError(f"--steps_per_epoch={steps_per_epoch} but the data has only "
                    f"{batches.steps_per_epoch} batches per epoch")
  if steps_per_epoch < 1:
    raise UserError("the training data is empty: not one batch for an epoch")
  val_steps = min(options.validation_steps or batches.val_steps, batches.val_steps)
  # One device is a mesh of one: batches split over 'data', replicas over 'seed'.
  mesh = _mesh(options.num_devices, batches.batch_size, options.num_seeds)
  workdir = Path(options.workdir)
  lock = _lock(workdir) if distributed.is_primary() else contextlib.nullcontext()
  with lock, _StopOnSigint() as sigint:
    _prepare_workdir(options)
    distributed.barrier(f"fit-start-{workdir}")
    return _fit(model, batches, loss, tuple(metrics), options, target_unit,
                extra_results or {}, workdir, sigint, mesh, steps_per_epoch, val_steps)


def _fit(model, batches, loss, metrics, options, target_unit, extra_results, workdir, sigint,
         mesh, steps_per_epoch, val_steps):
  ckpt_dir = workdir / "checkpoints"
  num_seeds = options.num_seeds
  seeds = [options.seed + r for r in range(num_seeds)]
  replicated = NamedSharding(mesh, PartitionSpec())
  per_replica = distributed.replica_sharding(mesh, num_seeds)
  data_sharding = _batch_sharding(mesh, num_seeds)
  optimizer = optim.make(options.optimizer, options.learning_rate, options.clip_norm)
  train_step = _make_train_step(model, optimizer, loss, metrics, mesh, num_seeds)
  eval_step = metrics_lib.make_eval_step(lambda p, x: model.apply(p, x, training=False), loss,
                                         metrics, mesh, num_seeds)
  new_totals = lambda: distributed.put(metrics_lib.zero_totals(loss, metrics, num_seeds),
                                       per_replica)
  # Replica r's params if improved[r], else its best ones (one replica: a fresh copy).
  keep_best = jax.jit(
      lambda improved, new, old: jax.tree.map(
          lambda n, o: jnp.where(improved.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
          if num_seeds > 1 else jnp.copy(n), new, old), out_shardings=per_replica)

  params, opt_state, seed_values = _initial_state(_init_params(model, batches, seeds),
                                                  optimizer, mesh, seeds)
  everyone = distributed.put(np.ones([num_seeds], bool), per_replica)
  best_params = keep_best(everyone, params, params)  # own buffers: the step donates `params`
  totals = new_totals()

  # A fresh start, or the latest good checkpoint. `meta` is the checkpoint's JSON part;
  # meta["replicas"][r] holds replica r's history and best epoch.
  config = {k: v for k, v in options.flags.items() if k not in _RESUMABLE_FLAGS}
  meta = {"epoch": 0, "step": 0, "seconds": 0.0, "epoch_seconds": 0.0, "config": config,
          "replicas": [{"history": [], "best_epoch": None, "best_loss": None, "best_val": None}
                       for _ in seeds]}
  if options.resume:
    target = {"params": params, "opt_state": opt_state, "best_params": best_params,
              "totals": totals}
    restored = checkpoints.restore(ckpt_dir / "latest", target)
    if restored is None:
      _print(f"--resume: no checkpoint in {ckpt_dir / 'latest'}; starting fresh")
    else:
      name, state, meta = restored
      _check_same_config(meta["config"], config, workdir)
      params, opt_state = state["params"], state["opt_state"]
      best_params, totals = state["best_params"], state["totals"]
      _print(f"--resume: continuing from checkpoint {ckpt_dir / 'latest' / name}")
  replicas = meta["replicas"]
  seconds_before = meta["seconds"]
  session_start = time.time()

  def save_latest(epoch_done: int, step: int, epoch_seconds: float = 0.0):
    meta.update(epoch=epoch_done, step=step, replicas=replicas, epoch_seconds=epoch_seconds,
                seconds=seconds_before + time.time() - session_start)
    state = {"params": params, "opt_state": opt_state, "best_params": best_params,
             "totals": totals}
    _save(ckpt_dir / "latest", f"epoch{epoch_done:06d}-step{step:06d}", state, meta, keep=2,
          kill_point=f"latest:{epoch_done}:{step}")

  epoch_times = []
  for epoch in range(meta["epoch"] + 1, options.epochs + 1):
    # --- train: dispatch the steps; the device runs behind, the host does not wait
    first_step, step = meta["step"], meta["step"]
    epoch_start = time.time()
    epoch_value = distributed.put(np.int32(epoch), replicated)
    for batch in itertools.islice(_train_batches(batches, seeds, epoch), first_step,
                                  steps_per_epoch):
      params, opt_state, totals = train_step(params, opt_state, totals, seed_values,
                                             epoch_value, *distributed.put(batch, data_sharding))
      step += 1
      _kill_point(f"step:{epoch}:{step}")
      if sigint.requested and step < steps_per_epoch:
        save_latest(epoch - 1, step, meta["epoch_seconds"] + time.time() - epoch_start)
        raise Interrupted(_resume_hint(workdir, f"interrupted in epoch {epoch} at step {step}"))
    if step < steps_per_epoch:
      raise UserError(f"the training data ended after {step} of {steps_per_epoch} "
                      f"batches in epoch {epoch}")
    train_totals = jax.device_get(totals)  # the one wait for the device in an epoch
    train_seconds = time.time() - epoch_start
    rows = metrics_lib.replica_means(train_totals, ("loss", *metrics), num_seeds)
    for r, row in enumerate(rows):
      if not math.isfinite(row["loss"]):
        first = int(np.reshape(train_totals["first_nonfinite"], [-1])[r]) + 1
        raise Diverged(
            f"the loss is {row['loss']}{_of_seed(seeds, r)} in epoch {epoch} (first at step "
            f"{first} of {steps_per_epoch}); stopped, keeping the checkpoint of epoch "
            f"{epoch - 1} in {ckpt_dir}")

    # --- validate, keep the best
    if val_steps:
      vals = metrics_lib.run_eval(eval_step, params, batches.val(), loss, metrics, mesh,
                                  val_steps, num_seeds=num_seeds)
      for row, val in zip(rows, vals):
        row.update({f"val_{k}": v for k, v in val.items()})
    else:  # no validation data: judge by training
      vals = [{k: row[k] for k in ("loss", *metrics)} for row in rows]
    seconds = meta["epoch_seconds"] + time.time() - epoch_start
    improved = []
    for r, (replica, row, val) in enumerate(zip(replicas, rows, vals)):
      if not math.isfinite(val["loss"]):
        raise Diverged(f"the validation loss is {val['loss']}{_of_seed(seeds, r)} after "
                       f"epoch {epoch}; stopped, keeping the checkpoint of epoch {epoch - 1} "
                       f"in {ckpt_dir}")
      row.update(seconds=seconds, steps_per_s=(step - first_step) / max(train_seconds, 1e-9))
      replica["history"].append({"epoch": epoch, **metrics_lib.with_units(row, target_unit)})
      improved.append(replica["best_loss"] is None or val["loss"] < replica["best_loss"])
      if improved[-1]:
        replica.update(best_epoch=epoch, best_loss=val["loss"],
                       best_val=metrics_lib.with_units(val, target_unit))
    if any(improved):
      best_params = keep_best(distributed.put(np.asarray(improved), per_replica), params,
                              best_params)
      _save(ckpt_dir / "best", f"epoch{epoch:06d}", {"params": best_params},
            {"epoch": epoch, "best_epochs": [rep["best_epoch"] for rep in replicas],
             "val": [rep["best_val"] for rep in replicas]}, keep=1, kill_point=f"best:{epoch}")
    totals = new_totals()
    save_latest(epoch, 0)
    _kill_point(f"epoch:{epoch}")

    epoch_times.append(seconds)
    eta = (options.epochs - epoch) * sum(epoch_times) / len(epoch_times)
    _print(_progress_line(_mean_rows([rep["history"][-1] for rep in replicas]),
                          options.epochs, eta, num_seeds))
    if sigint.requested and epoch < options.epochs:
      raise Interrupted(_resume_hint(workdir, f"interrupted after epoch {epoch}"))

  # --- test with the best parameters, write results
  tests = [None] * num_seeds
  if batches.test_steps:
    tests = [metrics_lib.with_units(test, target_unit) for test in metrics_lib.run_eval(
        eval_step, best_params, batches.test(), loss, metrics, mesh, num_seeds=num_seeds)]
  results = {
      "experiment": options.experiment,
      "model": options.model_name,
      "flags": dict(options.flags),
      **_replica_results(replicas, tests, seeds),
      "seconds": seconds_before + time.time() - session_start,
      **extra_results,
  }
  if distributed.is_primary():
    plots.history(results["history"], workdir / "history.png",
                  title=options.model_name + (f", mean of {num_seeds} seeds"
                                              if num_seeds > 1 else ""))
    _kill_point("results")
    write_results(workdir, results)
  test = results["test"]
  _print(f"best epoch {results['best_epoch']}: val {_format_metrics(results['val'])}"
         + (f"; test {_format_metrics(test)}" if test else "")
         + (f" (mean of {num_seeds} seeds)" if num_seeds > 1 else "") + f"; wrote {workdir}")
  return FitResult(results, best_params)


def _replica_results(replicas: Sequence[dict], tests: Sequence[Optional[dict]],
                     seeds: Sequence[int]) -> dict:
  """results.json's history, best_epoch, val and test: the run's own for one seed; for
  several, the means over replicas, plus "replicas", "mean" and "std"."""
  each = [{"seed": seed, "history": rep["history"], "best_epoch": rep["best_epoch"],
           "val": rep["best_val"], "test": test}
          for seed, rep, test in zip(seeds, replicas, tests)]
  if len(seeds) == 1:
    return {k: v for k, v in each[0].items() if k != "seed"}
  summary = lambda reduce: {
      "best_epoch": float(reduce([r["best_epoch"] for r in each])),
      "val": {k: float(reduce([r["val"][k] for r in each])) for k in each[0]["val"]},
      "test": None if tests[0] is None else {
          k: float(reduce([r["test"][k] for r in each])) for k in each[0]["test"]}}
  mean = summary(np.mean)
  std = summary(lambda values: np.std(values, ddof=1))
  history = [_mean_rows(rows) for rows in zip(*(r["history"] for r in each))]
  return {"history": history, "best_epoch": [r["best_epoch"] for r in each],
          "val": mean["val"], "test": mean["test"], "replicas": each, "mean": mean, "std": std}


def _mean_rows(rows: Sequence[Mapping[str, float]]) -> dict:
  """The mean of each entry of history rows (of one epoch, one per replica)."""
  return {k: (rows[0][k] if k == "epoch" else float(np.mean([row[k] for row in rows])))
          for k in rows[0]}


def _of_seed(seeds: Sequence[int], r: int) -> str:
  return f" (replica {r}, seed {seeds[r]})" if len(seeds) > 1 else ""


def _print(line: str) -> None:
  """Progress on stdout, from the primary process only."""
  if distributed.is_primary():
    print(line, flush=True)


def _check_same_config(saved: Mapping, current: Mapping, workdir: Path) -> None:
  for name in sorted(set(saved) | set(current)):
    if saved.get(name) != current.get(name):
      raise UserError(f"--resume: {workdir} was trained with --{name}={saved.get(name)!r}, not "
                      f"{current.get(name)!r}; use the same flags, or --overwrite")


def _resume_hint(workdir: Path, what: str) -> str:
  return f"{what}; checkpoint saved in {workdir / 'checkpoints'}, run again with --resume to continue"


def _format_metrics(values: Optional[Mapping[str, float]]) -> str:
  return " - ".join(f"{k}: {v:.4f}" for k, v in (values or {}).items())


def _progress_line(row: Mapping[str, float], epochs: int, eta: float,
                   num_seeds: int = 1) -> str:
  values = {k: v for k, v in row.items() if k not in ("epoch", "seconds", "steps_per_s")}
  return (f"Epoch {row['epoch']}/{epochs} - {row['seconds']:.1f}s - "
          f"{row['steps_per_s']:.1f} steps/s - ETA {_format_seconds(eta)} - "
          + _format_metrics(values) + (f" (mean of {num_seeds} seeds)" if num_seeds > 1 else ""))
