"""`fit`: the one training loop every experiment shares.

It trains a model (init(key, sample_x), apply(params, x, *, training, key)) on a
`rnn_jax.data.batches.Batches` with a Keras optimizer (rnn_jax.train.optim), data-parallel over
the placement's mesh, and checkpoints after every epoch, so that a resumed run after a
crash, a SIGKILL or a Ctrl-C ends with the same results as an uninterrupted one. It
writes `<workdir>/results.json`, `<workdir>/history.png` and a progress line per epoch.

Many seeds: `num_seeds=N` trains N independent replicas in one compiled program, replica
`r` exactly as a run with `seed+r` (its own initialisation, dropout keys and batch
order; the same data, validation and test batches). results.json then holds every
replica's results under "replicas", their "mean" and "std", and at the top level the mean
history, val and test over replicas, with "best_epoch" the list of the replicas' best.

Several processes: only the primary process takes the workdir's lock and writes
results.json and the plots; all of them write checkpoints together (rnn_jax.io.checkpoints).
"""
from __future__ import annotations

import contextlib
import itertools
import math
import time
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import distributed, layers, precision
from rnn_jax.io import checkpoints
from rnn_jax.train import optim
from rnn_jax.analysis import plots
from rnn_jax.train import metrics as metrics_lib
from rnn_jax.errors import UserError
from rnn_jax.train import progress as progress_lib
from rnn_jax.train import provenance
from rnn_jax.train import results as results_lib
from rnn_jax.train import rundir
from rnn_jax.io import run_files as run_files
from rnn_jax.train.options import RESUMABLE_FLAGS, TrainOptions
from rnn_jax.train.placement import Placement, put
from rnn_jax.train.step import (TrainState, init_params, init_state, make_eval_step,
                                make_train_step, new_totals, run_eval)


class FitResult(NamedTuple):
  results: dict  # as written to results.json
  params: Any    # the best checkpoint's parameters


def train_batches(batches, seeds: Sequence[int], epoch: int):
  """The epoch's batches: replica r's from `batches.train(seeds[r], epoch)`, stacked
  <[num_seeds, batch, ...]> (as they are for a single seed)."""
  if len(seeds) == 1:
    return batches.train(seeds[0], epoch)
  return (tuple(np.stack(parts) for parts in zip(*step))
          for step in zip(*(batches.train(seed, epoch) for seed in seeds)))


def check_model(model, compute_dtype: Optional[str] = None) -> None:
  """Every recurrent layer's `implementation` computes it (`layers.RNN.backend`: the cell,
  the platform, the dtype, its dropout), or a `ValueError` naming the layer: found before
  a run writes anything, not while tracing."""
  for where, layer in layers.recurrent_layers(model):
    try:
      layer.backend(compute_dtype)
    except ValueError as e:
      name = layer._name  # pylint: disable=protected-access
      raise ValueError(f"{where} ({name}): {e}") from None


def check_learning_rates(options: TrainOptions, steps_per_epoch: int) -> None:
  """The learning rate of every step of the run is finite and not negative (and not 0 at
  every step): a schedule of the options or a function given as `learning_rate`; else a
  `ValueError` naming the first bad step."""
  rate = optim.schedule(options.lr_schedule, options.learning_rate,
                        total_steps=options.epochs * steps_per_epoch,
                        warmup_steps=options.warmup_steps, steps_per_epoch=steps_per_epoch,
                        decay_rate=options.lr_decay_rate)
  if not callable(rate):
    return  # a number: TrainOptions checked it
  steps = np.arange(options.epochs * steps_per_epoch)
  try:
    rates = np.asarray(jax.vmap(rate)(jnp.asarray(steps, jnp.int32)), np.float64)
  except Exception:  # pylint: disable=broad-except  # a function vmap cannot batch: a sample
    steps = np.unique(np.linspace(0, len(steps) - 1, 64).astype(int))
    rates = np.asarray([float(rate(int(step))) for step in steps], np.float64)
  rates = np.broadcast_to(rates, steps.shape)
  bad = np.flatnonzero(~np.isfinite(rates) | (rates < 0))
  if len(bad) or not np.any(rates > 0):
    step = int(steps[bad[0]]) if len(bad) else 0
    raise ValueError(
        f"TrainOptions: the learning rate at step {step} (epoch {step // steps_per_epoch + 1}) "
        f"is {float(rate(step)):g}; every step's must be finite and at least 0, and some "
        f"positive (learning_rate={options.learning_rate!r}, lr_schedule={options.lr_schedule!r})")


def _check_batch(batch, where: str, placement: Placement, stacked: bool) -> None:
  """A batch that cannot be split over the mesh's 'data' devices, or whose x, y and weight
  differ in rows, is a `ValueError` naming it (not JAX's `IndivisibleError` mid-run)."""
  axis = 1 if stacked else 0
  rows = {name: np.shape(part)[axis] for name, part in zip(("x", "y", "weight"), batch)}
  if len(set(rows.values())) > 1:
    raise ValueError(f"{where}: x, y and weight have {rows['x']}, {rows['y']} and "
                     f"{rows['weight']} rows; a batch is (x, y, weight) of one length")
  devices = placement.mesh.shape["data"]
  if rows["x"] % devices:
    raise ValueError(
        f"{where} has {rows['x']} rows, which do not split over the {devices} devices of the "
        "mesh: every batch must have batch_size rows (pad a last, smaller batch with "
        "weight-0 rows, as rnn_jax.data.batches does)")


def _check_batches(batches, seed: int, steps_per_epoch: int, val_steps: int,
                   placement: Placement) -> None:
  """The first epoch's training batches, the validation and the test batches checked by
  `_check_batch` before anything is written (their shapes only: one cheap pass)."""
  parts = [(f"batches.train(seed={seed}, epoch=1)", batches.train(seed, 1), steps_per_epoch),
           ("batches.val()", batches.val(), val_steps)]
  if batches.test_steps:
    parts.append(("batches.test()", batches.test(), batches.test_steps))
  for what, iterator, steps in parts:
    for _ in _checked(itertools.islice(iterator, steps), what, placement):
      pass


def _checked(batches, what: str, placement: Placement, stacked: bool = False):
  """`batches` as they come, each checked by `_check_batch`."""
  for i, batch in enumerate(batches):
    _check_batch(batch, f"{what} batch {i + 1}", placement, stacked)
    yield batch


def fit(model, batches, *, loss: metrics_lib.LossOrMetric,
        metrics: Sequence[metrics_lib.LossOrMetric] = (), options: TrainOptions,
        target_unit: Optional[tuple[str, float]] = None,
        extra_results: Optional[Mapping[str, Any]] = None,
        model_config: Optional[Mapping[str, Any]] = None,
        optimizer: Any = None,
        preprocessing: Optional[Mapping[str, Any]] = None) -> FitResult:
  """Trains `model` on `batches`, checkpointing every epoch; see the module docstring.

  Args:
    model: has init(key, sample_x) -> params and apply(params, x, *, training, key) -> y.
    batches: a `rnn_jax.data.batches.Batches`.
    loss: "mae" | "mse" | "bce_logits" (binary cross-entropy on logits) |
      "sparse_categorical_crossentropy" (on logits, integer labels), or a function
      (predictions, targets) -> <float>[batch] loss per example; averaged over the real
      rows (weight 1) of each batch.
    metrics: names from ("accuracy", "mae") or functions like `loss` (named by their
      __name__); accuracy compares logits > 0 with y > 0.5, or the argmax of several
      classes' scores with integer labels. All are summed on the device.
    options: `TrainOptions` (schedule, early stopping and compute dtype included).
    target_unit: (unit, scale): every "mae" value also gets "mae_<unit>" = mae * scale.
    extra_results: added to results.json.
    model_config: the experiment's resolved model settings (e.g. dropout rates), added to
      results.json's "config" beside the training settings and the architecture (the
      same as model.json's when the model can be written as data).
    optimizer: an `optax.GradientTransformation` used as it is (its own learning rate or
      schedule; `options.clip_norm` still applies), or a name of `rnn_jax.train.optim`;
      default `options.optimizer` with `options.learning_rate` and `options.lr_schedule`.
    preprocessing: written to <workdir>/preprocessing.json, what `rnn_jax.load` needs
      to turn raw inputs into the model's (see `rnn_jax.io.predictor`). The model's
      architecture goes to <workdir>/model.json when it is made of rnn_jax layers and
      registered cells (otherwise a note says why not).

  Returns:
    FitResult(results, params) with the best epoch's (lowest validation loss; training
    loss without validation data) params; with num_seeds > 1 stacked over replicas,
    each replica's from its own best epoch.
  """
  metrics_lib.check_names(loss, metrics)
  # Everything that could not run is refused before the workdir is made or touched.
  if not isinstance(options, TrainOptions):
    raise TypeError(f"fit: options must be a TrainOptions, got {type(options).__name__}")
  check_model(model, options.compute_dtype)
  steps_per_epoch = options.steps_per_epoch or batches.steps_per_epoch
  if steps_per_epoch > batches.steps_per_epoch:
    raise UserError(f"--steps_per_epoch={steps_per_epoch} but the data has only "
                    f"{batches.steps_per_epoch} batches per epoch")
  if steps_per_epoch < 1:
    raise UserError("the training data is empty: not one batch for an epoch")
  if optimizer is None or isinstance(optimizer, str):
    check_learning_rates(options, steps_per_epoch)
  val_steps = min(options.validation_steps or batches.val_steps, batches.val_steps)
  placement = Placement.make(options.num_devices, batches.batch_size, options.num_seeds)
  seeds = [options.seed + r for r in range(options.num_seeds)]
  sample_xs = [next(iter(batches.train(seed, 1)))[0] for seed in seeds]
  _check_batches(batches, seeds[0], steps_per_epoch, val_steps, placement)
  workdir = Path(options.workdir)
  lock = rundir.lock(workdir) if distributed.is_primary() else contextlib.nullcontext()
  with lock, rundir.StopOnSigint() as sigint:
    rundir.prepare(workdir, resume=options.resume, overwrite=options.overwrite)
    if options.resume:  # before any array is read: another configuration is refused
      rundir.check_resume(workdir, rundir.config_of(options.flags), options.epochs)
    distributed.barrier(f"fit-start-{workdir}")
    effective = {"loss": metrics_lib.name_of(loss),
                 "metrics": [metrics_lib.name_of(m) for m in metrics],
                 "epochs": options.epochs, "steps_per_epoch": steps_per_epoch,
                 "validation_steps": val_steps, "batch_size": batches.batch_size,
                 **_optimizer_config(optimizer, options),
                 "early_stopping_patience": options.early_stopping_patience,
                 "compute_dtype": options.compute_dtype,
                 "seed": options.seed, "num_seeds": options.num_seeds,
                 "mesh": dict(placement.mesh.shape), **(model_config or {}),
                 "architecture": provenance.architecture(model),
                 "backends": provenance.backends(model, options.compute_dtype)}
    return _fit(model, batches, loss, tuple(metrics), options, target_unit,
                {"config": effective, **(extra_results or {})}, workdir, sigint, placement,
                steps_per_epoch, val_steps, sample_xs, optimizer, preprocessing)


def _optimizer_config(optimizer, options: TrainOptions) -> dict:
  """results.json's record of the optimizer: a name and the schedule of the options, or a
  note that the caller's own optax transformation (with its own schedule) was used."""
  if optimizer is not None and not isinstance(optimizer, str):
    return {"optimizer": f"{type(optimizer).__module__}.{type(optimizer).__name__} "
                         "(the caller's, with its own learning rate)",
            "clip_norm": options.clip_norm}
  rate = options.learning_rate
  if callable(rate):  # a schedule function: recorded by name (results.json is JSON)
    name = getattr(rate, "__qualname__", type(rate).__name__)
    rate = f"{getattr(rate, '__module__', '')}.{name}"
  return {"optimizer": optimizer or options.optimizer, "learning_rate": rate,
          "lr_schedule": options.lr_schedule, "warmup_steps": options.warmup_steps,
          **({"lr_decay_rate": options.lr_decay_rate}
             if options.lr_schedule == "exponential" else {}),
          "clip_norm": options.clip_norm}


def _make_optimizer(optimizer, options: TrainOptions, steps_per_epoch: int):
  if optimizer is not None and not isinstance(optimizer, str):
    return optim.make(optimizer, options.learning_rate, options.clip_norm)
  learning_rate = optim.schedule(
      options.lr_schedule, options.learning_rate, total_steps=options.epochs * steps_per_epoch,
      warmup_steps=options.warmup_steps, steps_per_epoch=steps_per_epoch,
      decay_rate=options.lr_decay_rate)
  return optim.make(optimizer or options.optimizer, learning_rate, options.clip_norm)


def _fit(model, batches, loss, metrics, options, target_unit, extra_results, workdir, sigint,
         placement: Placement, steps_per_epoch, val_steps, sample_xs, optimizer=None,
         preprocessing=None):
  ckpt_dir = workdir / "checkpoints"
  num_seeds = options.num_seeds
  seeds = [options.seed + r for r in range(num_seeds)]
  per_replica = placement.per_replica
  if distributed.is_primary():
    run_files.write_run_files(workdir, model, sample_xs[0], options, preprocessing, _print)
  model = precision.with_compute_dtype(model, options.compute_dtype)
  optimizer = _make_optimizer(optimizer, options, steps_per_epoch)
  metric_names = [metrics_lib.name_of(m) for m in metrics]
  train_step = make_train_step(model, optimizer, loss, metrics, placement,
                               clip_norm=options.clip_norm)
  eval_step = make_eval_step(lambda p, x: model.apply(p, x, training=False), loss, metrics,
                             placement)
  # Replica r's params if improved[r], else its best ones (one replica: a fresh copy).
  keep_best = jax.jit(
      lambda improved, new, old: jax.tree.map(
          lambda n, o: jnp.where(improved.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
          if num_seeds > 1 else jnp.copy(n), new, old), out_shardings=per_replica)

  state = init_state(init_params(model, sample_xs, seeds), optimizer, placement, seeds,
                     loss, metrics)
  everyone = put(np.ones([num_seeds], bool), per_replica)
  best_params = keep_best(everyone, state.params, state.params)  # own buffers: donation

  # A fresh start, or the latest good checkpoint. `meta` is the checkpoint's JSON part;
  # meta["replicas"][r] holds replica r's history and best epoch.
  config = rundir.config_of(options.flags)
  session_flags = {k: v for k, v in options.flags.items()
                   if k in RESUMABLE_FLAGS and k not in ("resume", "overwrite", "workdir")}
  meta = {"epoch": 0, "step": 0, "seconds": 0.0, "epoch_seconds": 0.0, "config": config,
          "started": provenance.now(),
          "session_flags": session_flags, "resumed": [],
          "replicas": [{"history": [], "best_epoch": None, "best_loss": None, "best_val": None}
                       for _ in seeds]}
  if options.resume:
    target = {"params": state.params, "opt_state": state.opt_state,
              "best_params": best_params, "totals": state.totals}
    restored = checkpoints.restore(ckpt_dir / "latest", target)
    if restored is None:
      _print(f"--resume: no checkpoint in {ckpt_dir / 'latest'}; starting fresh")
    else:
      name, saved, meta = restored
      rundir.check_same_config(meta["config"], config, workdir)
      # The flags that may change on a resume are recorded where they changed.
      before = meta.get("session_flags", {})
      changed = {k: v for k, v in session_flags.items() if before.get(k, v) != v}
      meta["resumed"] = [*meta.get("resumed", []),
                         {"epoch": meta["epoch"], "step": meta["step"], "changed": changed}]
      meta["session_flags"] = session_flags
      state = TrainState(saved["params"], saved["opt_state"], saved["totals"], state.seeds)
      best_params = saved["best_params"]
      _print(f"--resume: continuing from checkpoint {ckpt_dir / 'latest' / name}")
  replicas = meta["replicas"]
  seconds_before = meta["seconds"]
  session_start = time.time()
  monitor = progress_lib.Monitor(  # the bar, the epoch lines, TensorBoard and metrics.csv
      workdir, epochs=options.epochs, steps_per_epoch=steps_per_epoch, seeds=seeds,
      log_every_steps=options.log_every_steps, fresh=meta["epoch"] == meta["step"] == 0,
      resumed=(meta["epoch"], meta["epoch"] * steps_per_epoch + meta["step"],
               [rep["history"] for rep in replicas]))

  def save_latest(epoch_done: int, step: int, epoch_seconds: float = 0.0):
    meta.update(epoch=epoch_done, step=step, replicas=replicas, epoch_seconds=epoch_seconds,
                seconds=seconds_before + time.time() - session_start)
    saved = {"params": state.params, "opt_state": state.opt_state,
             "best_params": best_params, "totals": state.totals}
    rundir.save(ckpt_dir / "latest", f"epoch{epoch_done:06d}-step{step:06d}", saved, meta,
                keep=2, kill_at=f"latest:{epoch_done}:{step}")

  patience = options.early_stopping_patience
  stopped_epoch = None
  stops = lambda epoch: bool(patience) and epoch < options.epochs and all(
      epoch - replica["best_epoch"] >= patience for replica in replicas)
  first_epoch = meta["epoch"] + 1
  if meta["epoch"] and stops(meta["epoch"]):  # resumed after stopping early
    stopped_epoch, first_epoch = meta["epoch"], options.epochs + 1
  for epoch in range(first_epoch, options.epochs + 1):
    # --- train: dispatch the steps; the device runs behind, the host does not wait
    first_step, step = meta["step"], meta["step"]
    epoch_start = time.time()
    monitor.start_epoch(epoch, first_step)
    epoch_value = put(np.int32(epoch), placement.replicated)
    for batch in itertools.islice(_checked(train_batches(batches, seeds, epoch),
                                           f"epoch {epoch}'s training", placement,
                                           stacked=num_seeds > 1), first_step, steps_per_epoch):
      state = train_step(state, epoch_value, *put(batch, placement.batches))
      step += 1
      monitor.step(step, state.totals)
      rundir.kill_point(f"step:{epoch}:{step}")
      if sigint.requested and step < steps_per_epoch:
        save_latest(epoch - 1, step, meta["epoch_seconds"] + time.time() - epoch_start)
        raise rundir.Interrupted(rundir.resume_hint(
            workdir, f"interrupted in epoch {epoch} at step {step}"))
    if step < steps_per_epoch:
      raise UserError(f"the training data ended after {step} of {steps_per_epoch} "
                      f"batches in epoch {epoch}")
    train_totals = jax.device_get(state.totals)  # the one wait for the device in an epoch
    timed_steps, train_seconds = monitor.end_steps(step)  # without the compiling step
    rows = metrics_lib.replica_means(train_totals, ("loss", *metric_names), num_seeds)
    for row, gradients in zip(rows, metrics_lib.step_means(train_totals, num_seeds)):
      row.update(gradients)
    for r, row in enumerate(rows):
      if not math.isfinite(row["loss"]):
        first = int(np.reshape(train_totals["first_nonfinite"], [-1])[r]) + 1
        raise rundir.Diverged(
            f"the loss is {row['loss']}{_of_seed(seeds, r)} in epoch {epoch} (first at step "
            f"{first} of {steps_per_epoch}); stopped, keeping the checkpoint of epoch "
            f"{epoch - 1} in {ckpt_dir}")

    # --- validate, keep the best
    if val_steps:
      vals = run_eval(eval_step, state.params, batches.val(), loss, metrics, placement,
                      val_steps)
      for row, val in zip(rows, vals):
        row.update({f"val_{k}": v for k, v in val.items()})
    else:  # no validation data: judge by training
      vals = [{k: row[k] for k in ("loss", *metric_names)} for row in rows]
    seconds = meta["epoch_seconds"] + time.time() - epoch_start
    improved = []
    for r, (replica, row, val) in enumerate(zip(replicas, rows, vals)):
      if not math.isfinite(val["loss"]):
        raise rundir.Diverged(
            f"the validation loss is {val['loss']}{_of_seed(seeds, r)} after epoch {epoch}; "
            f"stopped, keeping the checkpoint of epoch {epoch - 1} in {ckpt_dir}")
      row.update(seconds=seconds, steps_per_s=timed_steps / max(train_seconds, 1e-9))
      replica["history"].append({"epoch": epoch, **metrics_lib.with_units(row, target_unit)})
      improved.append(replica["best_loss"] is None or val["loss"] < replica["best_loss"])
      if improved[-1]:
        replica.update(best_epoch=epoch, best_loss=val["loss"],
                       best_val=metrics_lib.with_units(val, target_unit))
    if any(improved):
      best_params = keep_best(put(np.asarray(improved), per_replica), state.params,
                              best_params)
      rundir.save(ckpt_dir / "best", f"epoch{epoch:06d}", {"params": best_params},
                  {"epoch": epoch, "best_epochs": [rep["best_epoch"] for rep in replicas],
                   "val": [rep["best_val"] for rep in replicas]}, keep=1,
                  kill_at=f"best:{epoch}")
    state = state._replace(totals=new_totals(placement, loss, metrics))
    save_latest(epoch, 0)
    rundir.kill_point(f"epoch:{epoch}")

    monitor.end_epoch([rep["history"][-1] for rep in replicas],
                      [rep["history"] for rep in replicas], seconds)
    if sigint.requested and epoch < options.epochs:
      raise rundir.Interrupted(rundir.resume_hint(workdir, f"interrupted after epoch {epoch}"))
    if stops(epoch):
      stopped_epoch = epoch
      _print(f"early stopping after epoch {epoch}: no lower validation loss for {patience} "
             f"epochs; restoring epoch {_best_epochs(replicas)}")
      break

  # --- test with the best parameters, write results
  tests = [None] * num_seeds
  if batches.test_steps:
    tests = [metrics_lib.with_units(test, target_unit) for test in run_eval(
        eval_step, best_params, batches.test(), loss, metrics, placement)]
  results = {
      "experiment": options.experiment,
      "model": options.model_name,
      "flags": dict(options.flags),
      **results_lib.replica_results(replicas, tests, seeds),
      "seconds": seconds_before + time.time() - session_start,
      "compile_seconds": monitor.compile_seconds,
      **({"resumed": meta["resumed"]} if meta.get("resumed") else {}),
      **extra_results,
      "provenance": provenance.environment(meta.get("started")),
  }
  if patience:
    results["early_stopping"] = {"patience": patience, "stopped_epoch": stopped_epoch,
                                 "restored_epoch": _best_epochs(replicas)}
  monitor.close()
  if distributed.is_primary():
    plots.history(results["history"], workdir / "history.png",
                  title=options.model_name + (f", mean of {num_seeds} seeds"
                                              if num_seeds > 1 else ""),
                  loss=metrics_lib.name_of(loss), best_epochs=results["best_epoch"])
    rundir.kill_point("results")
    results_lib.write_results(workdir, results)
  test, best = results["test"], ",".join(map(str, results["best_epoch"]))
  _print(f"best epoch {best}: val {results_lib.format_metrics(results['val'])}"
         + (f"; test {results_lib.format_metrics(test)}" if test else "")
         + (f" (mean of {num_seeds} seeds)" if num_seeds > 1 else "") + f"; wrote {workdir}")
  return FitResult(results, best_params)


def _best_epochs(replicas) -> list:
  """The epochs whose parameters are kept, one per replica (a list, as "best_epoch")."""
  return [replica["best_epoch"] for replica in replicas]


def _of_seed(seeds: Sequence[int], r: int) -> str:
  return f" (replica {r}, seed {seeds[r]})" if len(seeds) > 1 else ""


def _print(line: str) -> None:
  """Progress on stdout, from the primary process only."""
  if distributed.is_primary():
    print(line, flush=True)
