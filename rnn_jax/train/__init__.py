"""Training, as a package of small modules:

  options    `TrainOptions` and the rules its settings must meet
  runtime    what a program may set up before JAX computes: one CPU device per core,
             the allocator told to keep freed memory
  placement  the mesh, the shardings, and how the devices' gradients are added
  step       `TrainState`, the train step over it, the evaluation step
  rundir     the run directory: lock, reuse rules, checkpoint writes, signals
  results    results.json and progress lines
  progress   the progress bar, compile time and epoch lines while a run trains
  logs       TensorBoard event files and metrics.csv
  provenance versions, commit, devices, times and the architecture, for results.json
  runs       an experiment's models planned and checked before any trains (resume as a whole)
  fit        `fit`, the loop that ties them together

  options = train.TrainOptions(experiment="imdb", model_name="lstm", workdir="runs/imdb/lstm",
                               epochs=10)
  result = train.fit(model, batches, loss="bce_logits", metrics=("accuracy",), options=options)

The experiments' command-line flags, and how they become `TrainOptions`, are theirs
(experiments/train_flags.py).
"""
from rnn_jax.train import options, provenance
from rnn_jax.train.fit import FitResult, check_model, fit, train_batches
from rnn_jax.train.options import RESUMABLE_FLAGS, TrainOptions
from rnn_jax.train.placement import Placement, put
from rnn_jax.train.results import write_results
from rnn_jax.train.rundir import Diverged, Interrupted
from rnn_jax.train.runs import ModelRun, check_models, check_names, check_workdir
from rnn_jax.train.runs import plan as plan_runs
from rnn_jax.train.runtime import (MAX_CPU_DEVICES, cpu_device_count, cpu_devices_per_core,
                                  keep_freed_memory)
from rnn_jax.train.step import (TrainState, evaluate, init_params, init_state, make_eval_step,
                                make_train_step, run_eval)
