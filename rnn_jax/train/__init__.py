"""Training, as a package of small modules:

  options    `TrainOptions` and the rules its settings must meet
  runtime    what a program may set up before JAX computes: one CPU device per core,
             the allocator told to keep freed memory
  placement  the mesh, the shardings, and how the devices' gradients are added
  step       `TrainState`, the pure train step over it, the evaluation step
  loop       `Run`: a run's state as the loop and the callbacks see it
  callbacks  `Callback`, the hooks of `fit`'s loop, and the built-ins: resume, checkpoints,
             the NaN guard, early stopping, results.json
  progress   the progress bar, compile time and epoch lines while a run trains (a callback)
  logs       TensorBoard event files and metrics.csv (a callback)
  rundir     the run directory: lock, reuse rules, checkpoint writes, signals
  results    results.json and progress lines
  provenance versions, commit, devices, times and the architecture, for results.json
  checks     what `fit` refuses before it touches the workdir
  runs       an experiment's models planned and checked before any trains (resume as a whole)
  metrics    losses and metrics, summed on the device
  optim      Keras's optimizers and the learning-rate schedules
  fit        `fit`, the short loop over the step that calls the callbacks

  options = train.TrainOptions(experiment="imdb", model_name="lstm", workdir="runs/imdb/lstm",
                               epochs=10)
  result = train.fit(model, batches, loss="bce_logits", metrics=("accuracy",), options=options)
  result = train.fit(..., callbacks=[MyCallback()])  # a train.Callback, after the built-ins

The experiments' command-line flags, and how they become `TrainOptions`, are theirs
(experiments/train_flags.py).
"""
from rnn_jax.train import options, provenance
from rnn_jax.train.callbacks import (Callback, Checkpoints, EarlyStopping, NanGuard, Resume,
                                     WriteResults)
from rnn_jax.train.fit import FitResult, check_model, default_callbacks, fit, train_batches
from rnn_jax.train.logs import MetricLogs
from rnn_jax.train.loop import Run
from rnn_jax.train.options import RESUMABLE_FLAGS, TrainOptions
from rnn_jax.train.placement import Placement, put
from rnn_jax.train.progress import ProgressBar
from rnn_jax.train.results import write_results
from rnn_jax.train.rundir import Diverged, Interrupted
from rnn_jax.train.runs import ModelRun, check_models, check_names, check_workdir
from rnn_jax.train.runs import plan as plan_runs
from rnn_jax.train.runtime import (MAX_CPU_DEVICES, cpu_device_count, cpu_devices_per_core,
                                  keep_freed_memory)
from rnn_jax.train.step import (TrainState, evaluate, init_params, init_state, make_eval_step,
                                make_train_step, run_eval)
