"""A run's options: the shared absl flags and `TrainOptions`, built without side effects."""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Mapping, Optional

from absl import flags

from rnn_jax import backends
from rnn_jax.train import optim
from rnn_jax.precision import COMPUTE_DTYPES
from rnn_jax.errors import UserError

# Flags that may differ between a run and its resumption.
RESUMABLE_FLAGS = ("resume", "overwrite", "epochs", "workdir", "num_devices", "implementation",
                   "coordinator_address", "num_processes", "process_id", "log_every_steps")
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


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value) -> bool:
  return _is_int(value) and value >= 1


def _optional(ok):
  return lambda value: value is None or ok(value)


def _positive_number(value) -> bool:
  return _is_number(value) and math.isfinite(value) and value > 0


# (setting, test, what it must be): the one list of rules behind `TrainOptions` and the
# flags (`check_flags`); a setting is named as the flag and the field are, in this order.
_RULES = (
    ("epochs", _positive_int, "a positive integer"),
    ("batch_size", _positive_int, "a positive integer"),
    ("steps_per_epoch", _optional(_positive_int), "a positive integer"),
    ("validation_steps", _optional(_positive_int), "a positive integer"),
    ("num_devices", _optional(_positive_int), "a positive integer"),
    ("num_seeds", _positive_int, "a positive integer"),
    ("num_processes", _positive_int, "a positive integer"),
    ("log_every_steps", lambda v: _is_int(v) and v >= 0, "0 or more"),
    ("validation_split", lambda v: _is_number(v) and 0.0 <= v < 1.0, "in [0, 1)"),
    # A number, or (TrainOptions only) an optax schedule, checked by `fit` over its steps.
    ("learning_rate", lambda v: callable(v) or _positive_number(v), "positive"),
    ("clip_norm", _optional(_positive_number), "positive"),
    ("warmup_steps", lambda v: _is_int(v) and v >= 0, "at least 0"),
    ("lr_decay_rate", lambda v: _is_number(v) and 0.0 < v <= 1.0, "in (0, 1]"),
    ("early_stopping_patience", _optional(_positive_int), "a positive integer"),
    ("optimizer", lambda v: v in optim.OPTIMIZERS, f"one of {', '.join(optim.OPTIMIZERS)}"),
    ("lr_schedule", lambda v: v in optim.SCHEDULES, f"one of {', '.join(optim.SCHEDULES)}"),
    ("compute_dtype", lambda v: v in COMPUTE_DTYPES, f"one of {', '.join(COMPUTE_DTYPES)}"),
)


def _seed_rule(values: Mapping[str, Any]) -> tuple[str, Callable, str]:
  """Seeds are 31-bit, and so is the last replica's (seed + num_seeds - 1)."""
  num_seeds = values.get("num_seeds", 1)
  last = 2**31 - num_seeds
  return ("seed", lambda v: _is_int(v) and 0 <= v <= last,
          f"in [0, {last}]" + (" (seed + num_seeds - 1 is a seed too)"
                               if num_seeds > 1 else ""))


def first_problem(values: Mapping[str, Any]) -> Optional[tuple[str, str]]:
  """(setting, what it must be) of the first bad shared training setting in `values`
  (keyed by flag name; absent settings are not checked), or None."""
  sizes, rates = _RULES[:8], _RULES[8:]  # the seed's range depends on num_seeds
  for name, ok, what in sizes:
    if name in values and not ok(values[name]):
      return name, what
  for name, ok, what in (_seed_rule(values), *rates):
    if name in values and not ok(values[name]):
      return name, what
  return None


def check_flags(values: Mapping[str, Any]) -> None:
  """One-line UserError for the first bad shared flag value (the rules of `TrainOptions`)."""
  problem = first_problem(values)
  if problem is not None:
    name, what = problem
    raise UserError(f"--{name} must be {what}, got {values[name]!r}")


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
  log_every_steps: int = 50               # the loss to TensorBoard every this many steps
  lr_schedule: str = "constant"           # optim.SCHEDULES
  warmup_steps: int = 0
  lr_decay_rate: float = 0.9              # per epoch, for lr_schedule="exponential"
  early_stopping_patience: Optional[int] = None
  compute_dtype: str = "float32"          # "bfloat16": mixed precision (rnn_jax.precision)

  def __post_init__(self):
    """Refuses, when built, what could not train, by the flags' rules (`first_problem`):
    a `ValueError` naming the field, so that no run starts from a bad value."""
    for name in ("experiment", "model_name"):
      if not isinstance(getattr(self, name), str):
        raise ValueError(f"TrainOptions.{name} must be a string, got "
                         f"{getattr(self, name)!r}")
    if not isinstance(self.workdir, (str, os.PathLike)) or not str(self.workdir):
      raise ValueError(f"TrainOptions.workdir must be a directory path, got {self.workdir!r}")
    for name in ("resume", "overwrite"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"TrainOptions.{name} must be True or False, got "
                         f"{getattr(self, name)!r}")
    values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
    problem = first_problem(values)
    if problem is not None:
      name, what = problem
      raise ValueError(f"TrainOptions.{name} must be {what}, got {values[name]!r}")

  @classmethod
  def from_flags(cls, flag_values: flags.FlagValues, *, experiment: str, model_name: str,
                 workdir: Optional[str] = None) -> "TrainOptions":
    """Options from parsed flags; bad values raise a one-line `UserError`.

    `workdir` is the run's own directory; by default <--workdir>/<model_name>, with
    --workdir defaulting to runs/<experiment>. Nothing else happens:
    `runtime.set_up` joins processes and makes devices.
    """
    recorded = {f.name: f.value for module, module_flags in
                flag_values.flags_by_module_dict().items()
                if module.split(".")[0] not in _LIBRARY_MODULES for f in module_flags}
    values = {name: flag_values[name].value for name in flag_values}
    check_flags(values)
    return cls(
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
