"""`fit`: the one training loop every experiment shares.

It trains a model (init(key, sample_x), apply(params, x, *, training, key)) on a
`rnn_jax.data.batches.Batches` with a Keras optimizer (rnn_jax.train.optim), data-parallel over
the placement's mesh, and checkpoints after every epoch, so that a resumed run after a
crash, a SIGKILL or a Ctrl-C ends with the same results as an uninterrupted one. It
writes `<workdir>/results.json`, `<workdir>/history.png` and a progress line per epoch.

The loop itself only trains, validates and tests (`loop.Run`); everything else is a
callback (`rnn_jax.train.callbacks`): resuming, checkpoints, the NaN guard, early
stopping, the progress bar and lines, TensorBoard and metrics.csv, results.json. A
caller adds its own, or replaces the built-ins (`default_callbacks()`).

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
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Sequence

from rnn_jax import distributed, precision
from rnn_jax.train import optim
from rnn_jax.train import metrics as metrics_lib
from rnn_jax.errors import UserError
from rnn_jax.train import callbacks as callbacks_lib
from rnn_jax.train import provenance, rundir
from rnn_jax.io import run_files
from rnn_jax.train.callbacks import Callback, Callbacks
from rnn_jax.train.checks import check_batches, check_learning_rates, check_model
from rnn_jax.train.logs import MetricLogs
from rnn_jax.train.loop import Run, train_batches
from rnn_jax.train.options import TrainOptions
from rnn_jax.train.placement import Placement, put
from rnn_jax.train.progress import ProgressBar
from rnn_jax.train.results import say
from rnn_jax.train.step import init_params, init_state, make_eval_step, make_train_step

__all__ = ["FitResult", "check_model", "default_callbacks", "fit", "train_batches"]


class FitResult(NamedTuple):
  results: dict  # as written to results.json
  params: Any    # the best checkpoint's parameters


def default_callbacks() -> list[Callback]:
  """What `fit` does besides training, in this order (fresh instances; see
  `rnn_jax.train.callbacks`). Pass a changed list as `fit(callbacks=..., defaults=False)`
  to drop, replace or reorder one."""
  return [callbacks_lib.Resume(), callbacks_lib.NanGuard(), callbacks_lib.Checkpoints(),
          ProgressBar(), MetricLogs(), callbacks_lib.EarlyStopping(),
          callbacks_lib.WriteResults()]


def fit(model, batches, *, loss: metrics_lib.LossOrMetric,
        metrics: Sequence[metrics_lib.LossOrMetric] = (), options: TrainOptions,
        target_unit: Optional[tuple[str, float]] = None,
        extra_results: Optional[Mapping[str, Any]] = None,
        model_config: Optional[Mapping[str, Any]] = None,
        optimizer: Any = None,
        preprocessing: Optional[Mapping[str, Any]] = None,
        callbacks: Sequence[Callback] = (), defaults: bool = True) -> FitResult:
  """Trains `model` on `batches`, checkpointing every epoch; see the module docstring.

  The loop calls the callbacks' hooks (`Callback`) at the run's start and end, each
  epoch's start and end, after every step and after an epoch's last step, and on a stop.
  A stop (`run.stop(reason)` in a hook) ends the run as early stopping does: the best
  params are tested and results.json is written, with "stopped": {"reason", "epochs"
  (whole epochs trained: the history), "steps" (train steps in all)}; the run is finished
  (a resume refuses or reuses it).
  Asked for in an epoch's last step or at its end, the stop comes after that epoch;
  earlier in an epoch, right after that step, and the unfinished epoch is dropped (not
  validated, not in the history, its params never the best; the latest checkpoint stays
  the last whole epoch's). At the last epoch's end it changes nothing. Ctrl-C instead
  saves a checkpoint (mid-epoch: at that step) and raises `Interrupted`, for --resume.

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
    callbacks: `Callback`s called after the built-in ones (`default_callbacks()`), in order.
    defaults: False: `callbacks` is the whole list (start from `default_callbacks()` to
      drop, replace or reorder a built-in).

  Returns:
    FitResult(results, params) with the best epoch's (lowest validation loss; training
    loss without validation data) params; with num_seeds > 1 stacked over replicas,
    each replica's from its own best epoch.
  """
  metrics_lib.check_names(loss, metrics)
  # Everything that could not run is refused before the workdir is made or touched.
  hooks = Callbacks([*(default_callbacks() if defaults else ()), *callbacks])
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
  check_batches(batches, seeds[0], steps_per_epoch, val_steps, placement)
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
    if distributed.is_primary():
      run_files.write_run_files(workdir, model, sample_xs[0], options, preprocessing, say)
    model = precision.with_compute_dtype(model, options.compute_dtype)
    optimizer = _make_optimizer(optimizer, options, steps_per_epoch)
    train_step = make_train_step(model, optimizer, loss, metrics, placement,
                                 clip_norm=options.clip_norm)
    eval_step = make_eval_step(lambda p, x: model.apply(p, x, training=False), loss, metrics,
                               placement)
    state = init_state(init_params(model, sample_xs, seeds), optimizer, placement, seeds,
                       loss, metrics)
    run = Run(options=options, workdir=workdir, placement=placement, batches=batches,
              loss=loss, metrics=tuple(metrics), target_unit=target_unit,
              steps_per_epoch=steps_per_epoch, val_steps=val_steps, state=state,
              eval_step=eval_step, sigint=sigint)
    return _train(run, hooks, train_step, {"config": effective, **(extra_results or {})})


def _train(run: Run, hooks: Callbacks, train_step, extra_results: dict) -> FitResult:
  """The loop: epochs of train steps, the callbacks' hooks at their points, and a stop
  looked for before the first epoch, after every step and after every epoch."""
  hooks.on_run_start(run)
  while run.epochs_done < run.options.epochs and run.stop_reason is None:
    batches = run.start_epoch()
    hooks.on_epoch_start(run)
    if not _train_steps(run, hooks, train_step, batches):
      break  # stopped mid-epoch: the epoch is left unfinished
    hooks.on_steps_end(run)
    run.end_epoch()  # validation, history, best params
    hooks.on_epoch_end(run)
    if run.stopping:
      break
  if run.stopping and run.epochs_done < run.options.epochs:
    hooks.on_stop(run)
    if run.interrupted:  # Ctrl-C: ends unfinished, for --resume
      raise run.interruption()
  run.finish(extra_results)  # the test of the best params, results.json's content
  hooks.on_run_end(run)
  return FitResult(run.results, run.best_params)


def _train_steps(run: Run, hooks: Callbacks, train_step, batches) -> bool:
  """Dispatches the epoch's steps (the device runs behind, the host does not wait);
  False when a stop came before its last step."""
  for batch in batches:
    run.state = train_step(run.state, run.epoch_value, *put(batch, run.placement.batches))
    run.step += 1
    if run.clock.compile_seconds is None:  # the session's first step traced and compiled
      run.clock.compiled()
    hooks.on_step(run, run.step, run.state.totals)
    if run.stopping and run.step < run.steps_per_epoch:
      return False
  return True


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
