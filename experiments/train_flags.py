"""The experiments' shared training flags, and how they become `rnn_jax.train.TrainOptions`.

  FLAGS = train_flags.define_flags(epochs=10, batch_size=128)   # at import, with its defaults
  flags.adopt_module_key_flags(train_flags)                     # --help lists them too
  train_flags.set_up(FLAGS)                                     # first thing in main
  options = train_flags.train_options(FLAGS, experiment="imdb", model_name="lstm")

The library takes plain values (`TrainOptions`, `distributed.initialize`,
`runtime.cpu_devices_per_core`); the flags, their help and their one-line errors are here.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional

from absl import flags

from rnn_jax import backends, distributed
from rnn_jax.train import optim
from rnn_jax.errors import UserError
from rnn_jax.precision import COMPUTE_DTYPES
from rnn_jax.train import runtime
from rnn_jax.train.options import TrainOptions, first_problem

# Flags of these packages are not the experiment's: not recorded in results.json.
_LIBRARY_MODULES = ("absl", "orbax", "jax", "jaxlib", "flax", "etils", "keras", "tensorflow")


def define_flags(**defaults) -> flags.FlagValues:
  """Registers the shared training flags (once) and sets the experiment's defaults."""
  if "num_devices" not in flags.FLAGS:
    flags.DEFINE_string("workdir", None, "Parent directory: each model's run goes to "
                        "<workdir>/<model> (default: runs/<experiment>).")
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
    flags.DEFINE_enum("activation", None, ("tanh", "relu", "leaky_relu", "elu", "sigmoid"),
                      "Activation of the recurrent layers (leaky_relu: max(0.1x, x)); "
                      "default: each layer's own (tanh; stacked_gru's second layer relu).")
    flags.DEFINE_bool("reset_after", None, "GRU's reset gate after the recurrent matmul "
                      "(Keras's default, True) or before it (the lecture's formula, False).")
    flags.DEFINE_enum("head", "dense", ("dense", "maxout"), "The output layers: Dense, or "
                      "Maxout (2 pieces, --units wide) then Dense.")
    flags.DEFINE_enum("implementation", "auto", backends.names(),
                      "The backend that computes the recurrent layers' loop "
                      "(rnn_jax.backends): auto picks the platform's choice for each cell; "
                      "native (min_gru's CPU kernel, built with the machine's C++ compiler) "
                      "is only used when named.")
    flags.DEFINE_integer("log_every_steps", 50, "Log the training loss to TensorBoard "
                         "every this many steps (0: only per epoch).")
    _define_model_io_flags()
  for name, value in defaults.items():
    if name not in flags.FLAGS:
      raise ValueError(f"define_flags: no flag named {name!r}")
    flags.FLAGS.set_default(name, value)
  return flags.FLAGS


def _define_model_io_flags() -> None:
  """Learning-rate schedules, early stopping and mixed precision (see `fit`)."""
  flags.DEFINE_enum("lr_schedule", "constant", optim.SCHEDULES, "Learning rate per step: "
                    "constant, cosine decay to 0 at the last step, or exponential "
                    "(times --lr_decay_rate per epoch); after --warmup_steps.")
  flags.DEFINE_integer("warmup_steps", 0, "Linear warm-up of the learning rate from 0 over "
                       "this many steps.")
  flags.DEFINE_float("lr_decay_rate", 0.9, "--lr_schedule=exponential: the factor per epoch.")
  flags.DEFINE_integer("early_stopping_patience", None, "Stop after this many epochs "
                       "without a lower validation loss; the best epoch's parameters are "
                       "kept (default: train every epoch).")
  flags.DEFINE_enum("compute_dtype", "float32", COMPUTE_DTYPES,
                    "Mixed precision: bfloat16 computes in bfloat16 with float32 "
                    "parameters and optimizer state (Keras's mixed_bfloat16).")


def check_values(values: Mapping[str, Any]) -> None:
  """One-line UserError for the first bad shared flag value, by the rules of
  `TrainOptions` (`first_problem`), named as the flag."""
  problem = first_problem(values)
  if problem is not None:
    name, what = problem
    raise UserError(f"--{name} must be {what}, got {values[name]!r}")


def check(flag_values: flags.FlagValues) -> dict:
  """The shared flags' values, checked without side effects (an experiment calls it before
  it reads or tokenizes data): a bad value, or a batch that does not split over
  --num_devices, is a one-line `UserError`."""
  values = {name: flag_values[name].value for name in flag_values}
  check_values(values)
  devices, num_seeds = values["num_devices"], values["num_seeds"]
  # Before JAX makes its devices (a CPU gets as many as the batch splits into, so a batch
  # that does not split over --num_devices would otherwise read as too few devices).
  if (devices and devices <= runtime.MAX_CPU_DEVICES
      and values["batch_size"] % (devices // math.gcd(num_seeds, devices))):
    data_axis = devices // math.gcd(num_seeds, devices)
    shared = f" left to the data by {num_seeds} seeds" if data_axis != devices else ""
    raise UserError(f"--batch_size={values['batch_size']} is not divisible by the {data_axis} "
                    f"devices{shared} of --num_devices={devices}")
  return values


def set_up(flag_values: flags.FlagValues) -> None:
  """Joins the other processes (--num_processes > 1) or, in one process, makes one CPU
  device per core, and lets the allocator keep freed memory; bad shared flags raise a
  one-line `UserError` first (`check`)."""
  values = check(flag_values)
  distributed.initialize(values["coordinator_address"], values["num_processes"],
                         values["process_id"])
  if values["num_processes"] == 1:
    runtime.cpu_devices_per_core(values["num_seeds"], values["batch_size"])
  runtime.keep_freed_memory()


def train_options(flag_values: flags.FlagValues, *, experiment: str, model_name: str,
                  workdir: Optional[str] = None) -> TrainOptions:
  """A run's options from parsed flags; bad values raise a one-line `UserError`.

  `workdir` is the run's own directory; by default <--workdir>/<model_name>, with
  --workdir defaulting to runs/<experiment>. The experiment's flags (all but those of
  `_LIBRARY_MODULES`) are recorded. Nothing else happens: `set_up` joins processes and
  makes devices.
  """
  recorded = {f.name: f.value for module, module_flags in
              flag_values.flags_by_module_dict().items()
              if module.split(".")[0] not in _LIBRARY_MODULES for f in module_flags}
  values = {name: flag_values[name].value for name in flag_values}
  check_values(values)
  return TrainOptions(
      experiment=experiment, model_name=model_name,
      workdir=workdir or os.path.join(values["workdir"] or os.path.join("runs", experiment),
                                      model_name),
      seed=values["seed"], epochs=values["epochs"], optimizer=values["optimizer"],
      learning_rate=values["learning_rate"], clip_norm=values["clip_norm"],
      resume=values["resume"], overwrite=values["overwrite"],
      num_devices=values["num_devices"], num_seeds=values["num_seeds"], flags=recorded,
      steps_per_epoch=values["steps_per_epoch"],
      validation_steps=values["validation_steps"],
      log_every_steps=values.get("log_every_steps", 50),
      lr_schedule=values["lr_schedule"], warmup_steps=values["warmup_steps"],
      lr_decay_rate=values["lr_decay_rate"],
      early_stopping_patience=values["early_stopping_patience"],
      compute_dtype=values["compute_dtype"])
