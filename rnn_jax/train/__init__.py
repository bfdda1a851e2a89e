"""Training, as a package of small modules:

  options    the shared absl flags and `TrainOptions` (no side effects)
  runtime    set-up before JAX computes: processes joined, one CPU device per core,
             the allocator told to keep freed memory
  placement  the mesh, the shardings, and how the devices' gradients are added
  step       `TrainState`, the train step over it, the evaluation step
  rundir     the run directory: lock, reuse rules, checkpoint writes, signals
  results    results.json and progress lines
  callbacks  `Callback`, the hooks of `fit`'s loop, and the built-ins: resume, checkpoints,
             the NaN guard, early stopping, results.json
  progress   the progress bar, compile time and epoch lines while a run trains (a callback)
  logs       TensorBoard event files and metrics.csv (a callback)
  provenance versions, commit, devices, times and the architecture, for results.json
  runs       an experiment's models planned and checked before any trains (resume as a whole)
  checks     what `fit` refuses before it touches the workdir
  loop       `Run`: a run's state as the loop and the callbacks see it
  fit        `fit`, the loop that ties them together

  FLAGS = train.define_flags(epochs=10, batch_size=128)
  train.set_up(FLAGS)                                   # first thing in main
  options = train.TrainOptions.from_flags(FLAGS, experiment="imdb", model_name="lstm")
  result = train.fit(model, batches, loss="bce_logits", metrics=("accuracy",), options=options)
  result = train.fit(..., callbacks=[MyCallback()])  # a train.Callback, after the built-ins
"""
from rnn_jax.train import options, provenance
from rnn_jax.train.callbacks import (Callback, Checkpoints, EarlyStopping, NanGuard, Resume,
                                     WriteResults)
from rnn_jax.train.fit import FitResult, check_model, default_callbacks, fit, train_batches
from rnn_jax.train.logs import MetricLogs
from rnn_jax.train.loop import Run
from rnn_jax.train.options import RESUMABLE_FLAGS, TrainOptions, check_flags, define_flags
from rnn_jax.train.placement import Placement, put
from rnn_jax.train.progress import ProgressBar
from rnn_jax.train.results import write_results
from rnn_jax.train.rundir import Diverged, Interrupted
from rnn_jax.train.runs import ModelRun, check_models, check_names, check_workdir
from rnn_jax.train.runs import plan as plan_runs
from rnn_jax.train.runtime import check as check_run_flags
from rnn_jax.train.runtime import (MAX_CPU_DEVICES, cpu_device_count, cpu_devices_per_core,
                                  keep_freed_memory, set_up)
from rnn_jax.train.step import (TrainState, evaluate, init_params, init_state, make_eval_step,
                                make_train_step, run_eval)
