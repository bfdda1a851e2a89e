"""Vanishing and exploding gradients, made visible (the lecture's first half).

  python -m experiments.gradients                # a few minutes on 2 cores
  python -m experiments.gradients --seq_len=200 --epochs=10

1. How far back the gradient reaches: ||dL/dh_t|| against T - t (log scale) for
   SimpleRNN (tanh), SimpleRNN (relu, recurrent kernel --explode_scale x I), LSTM and GRU
   on the adding problem, L the model's MSE on one batch, at initialisation and after
   training each model with the shared `fit`; and the largest singular value of the
   recurrent Jacobian dh_t/dh_{t-1} along the sequence.
2. Gradient clipping: the exploding relu RNN trained by SGD without clipping (the loss
   blows up: the NaN guard stops it, or it ends no better than the mean) and with
   --clip_norm (it trains), on sequences of --clipping_seq_len steps.

Writes <workdir>/gradients.json, gradients.png and .svg (the figure), clipping.png and
.svg, and each training run under <workdir>/<model>/. The seeds are fixed by --seed, so
the figure is the same every run on the same machine. Its runs are kept and resumed as in
every experiment: run it again with --resume (finished runs reused, an interrupted one
continued) or --overwrite (all trained again).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import command, train_flags
from rnn_jax import cells, errors, layers, train
from rnn_jax.io import checkpoints, files
from rnn_jax.analysis import diagnostics
from rnn_jax.data import adding

flags.DEFINE_integer("seq_len", 100, "Sequence length T of the gradient figure.")
flags.DEFINE_integer("units", 32, "Units of each recurrent layer.")
flags.DEFINE_integer("num_train", 10000, "Training + validation sequences.")
flags.DEFINE_float("explode_scale", 1.5, "The figure's relu RNN: recurrent kernel this times I.")
flags.DEFINE_integer("clipping_seq_len", 30, "Sequence length of the clipping runs.")
flags.DEFINE_float("clipping_scale", 1.05, "The clipping runs' relu RNN: recurrent kernel "
                   "this times I.")
flags.DEFINE_float("clipping_learning_rate", 0.05, "SGD's learning rate in the clipping runs.")
flags.DEFINE_integer("clipping_epochs", 10, "Epochs of each clipping run.")
MODELS = ("simple_rnn_tanh", "simple_rnn_relu_exploding", "lstm", "gru")
flags.DEFINE_list("model", list(MODELS), f"Models of the gradient figure, in order, from "
                  f"{list(MODELS)}; each trained one's run goes to <workdir>/<model>.")
flags.DEFINE_list("parts", ["profiles", "clipping"], "What to run: profiles, clipping.")
FLAGS = train_flags.define_flags(epochs=10, batch_size=64, optimizer="adam", learning_rate=1e-2,
                                 validation_split=0.2)
FLAGS.set_default("clip_norm", 1.0)
flags.adopt_module_key_flags(train_flags)  # --help lists the shared training flags too


def _scaled_recurrent_kernel(cell: cells.GatedCell, scale: float) -> cells.GatedCell:
  """`cell` whose recurrent kernel starts as scale * I (a relu RNN's gradients explode
  for scale > 1: Le et al. 2015 start at 1)."""
  def init(key, input_size, units, dtype=jnp.float32):
    params = cell.init(key, input_size, units, dtype)
    params["recurrent_kernel"] = scale * jnp.eye(units, dtype=dtype)
    return params
  return cell._replace(init=init)


def configurations(units: int, scale: float) -> dict:
  return {"simple_rnn_tanh": cells.simple_rnn("tanh"),
          "simple_rnn_relu_exploding": _scaled_recurrent_kernel(cells.simple_rnn("relu"), scale),
          "lstm": cells.lstm(),
          "gru": cells.gru()}


def _check_models(models: list, parts: list) -> None:
  """--model and --parts as one `error:` line each, before any work."""
  unknown = [p for p in parts if p not in ("profiles", "clipping")]
  if unknown or not parts:
    raise errors.UserError(f"--parts: choose from profiles, clipping (got {','.join(parts)!r})")
  if "profiles" in parts:
    train.check_names(models, list(MODELS), "model")


def _model(cell, units):
  return layers.Sequential([layers.RNN(cell, units), layers.Dense(1)])


def gradient_profile(cell, model_params, x, y, units) -> dict:
  """||dL/dh_t||, ||dL/dx_t|| and ||dh_t/dh_{t-1}||_2 for t = 1..T, L the MSE of one batch."""
  dense = model_params[1]
  mse = lambda ys: jnp.mean(jnp.square(ys[:, -1] @ dense["kernel"] + dense["bias"] - y))
  norms = diagnostics.step_gradient_norms(cell, model_params[0], x, units, loss=mse)
  spectral = diagnostics.jacobian_spectral_norms(cell, model_params[0], x, units)
  d_states = np.asarray(norms["d_states"], np.float64)
  return {"d_states": d_states.tolist(),
          "d_inputs": np.asarray(norms["d_inputs"], np.float64).tolist(),
          "jacobian_norm": np.asarray(spectral, np.float64).tolist(),
          "first_to_last": float(d_states[0] / d_states[-1]) if d_states[-1] > 0 else math.inf}


def _options(name: str, root: Path, **changes) -> train.TrainOptions:
  """The run's options; the models of the figure train unclipped (--clip_norm is part 2's).
  --parts is the experiment's, not a run's: each run's recorded flags leave it out."""
  options = train_flags.train_options(FLAGS, experiment="gradients", model_name=name,
                                      workdir=str(root / name))
  return dataclasses.replace(options, flags={k: v for k, v in options.flags.items()
                                             if k != "parts"},
                             **{"clip_norm": None, **changes})


def _clipping_options(root: Path) -> dict[str, train.TrainOptions]:
  return {f"clipping_{name}": _options(f"clipping_{name}", root, clip_norm=clip,
                                       optimizer="sgd",
                                       learning_rate=FLAGS.clipping_learning_rate,
                                       epochs=FLAGS.clipping_epochs)
          for name, clip in [("unclipped", None), ("clipped", FLAGS.clip_norm)]}


def plan(root: Path) -> dict[str, train.ModelRun]:
  """Every training run of the experiment, checked before any trains, as every experiment
  does (train.plan_runs): with --resume, finished runs are reused and an interrupted one
  continues; without --resume or --overwrite, an earlier run is refused, not replaced."""
  options = {}
  if "profiles" in FLAGS.parts:
    options.update({name: _options(name, root) for name in FLAGS.model
                    if name != "simple_rnn_relu_exploding"})
  if "clipping" in FLAGS.parts:
    options.update(_clipping_options(root))
  # Each run records --model as its own name (as in every experiment), so a resume may
  # list other models.
  return {run.name: run for run in train.plan_runs(options, list_flag="model")}


def _trained(model, run: train.ModelRun, data, sample_x):
  """(params, results) of a run: trained now, or a finished run's best checkpoint."""
  if not run.finished:
    fitted = train.fit(model, data, loss="mse", options=run.options)
    return fitted.params, fitted.results
  like = {"params": model.init(jax.random.key(0), sample_x)}
  restored = checkpoints.restore(Path(run.options.workdir) / "checkpoints" / "best", like)
  if restored is None:
    raise errors.UserError(f"{run.options.workdir}: finished, but its best checkpoint is "
                           "missing or corrupt; pass --overwrite to train it again")
  print(f"--- {run.name}: finished earlier with the same flags, reusing "
        f"{Path(run.options.workdir) / 'results.json'}", flush=True)
  return restored[1]["params"], run.results


def clipping_runs(root: Path, runs: dict) -> dict:
  """The exploding relu RNN by SGD, without and with --clip_norm."""
  data = adding.batches(seq_len=FLAGS.clipping_seq_len, num_train=FLAGS.num_train,
                        num_test=500, validation_split=0.2, batch_size=FLAGS.batch_size,
                        seed=FLAGS.seed)
  cell = _scaled_recurrent_kernel(cells.simple_rnn("relu"), FLAGS.clipping_scale)
  results = {}
  for name, clip in [("unclipped", None), ("clipped", FLAGS.clip_norm)]:
    run = runs[f"clipping_{name}"]
    print(f"--- clipping demo: relu RNN, {name}", flush=True)
    try:
      fitted = (run.results if run.finished else
                train.fit(_model(cell, FLAGS.units), data, loss="mse",
                          options=run.options).results)
      history = fitted["history"]
      results[name] = {"outcome": "trained", "test_mse": fitted["test"]["loss"],
                       "history": history}
    except train.Diverged as e:
      results[name] = {"outcome": "diverged", "message": str(e)}
    results[name]["clip_norm"] = clip
  results["mean_predictor_mse"] = adding.CONSTANT_PREDICTION_MSE
  return results


def check_flags() -> None:
  """This experiment's own flags, as one `error:` line each, before any work: the sizes,
  the clipping runs' learning rate by the rule of every learning rate (train.options),
  and the recurrent kernels' scales."""
  for name in ("seq_len", "units", "num_train", "clipping_seq_len", "clipping_epochs"):
    if FLAGS[name].value < 2:
      raise errors.UserError(f"--{name} must be at least 2, got {FLAGS[name].value}")
  problem = train.options.first_problem({"learning_rate": FLAGS.clipping_learning_rate})
  if problem is not None:
    raise errors.UserError(f"--clipping_learning_rate must be {problem[1]}, got "
                           f"{FLAGS.clipping_learning_rate!r}")
  for name in ("explode_scale", "clipping_scale"):
    value = FLAGS[name].value
    if not (math.isfinite(value) and value > 0):
      raise errors.UserError(f"--{name} must be positive, got {value!r}")
  _check_models(FLAGS.model, FLAGS.parts)


def _check_finite(name: str, profile: dict) -> None:
  """An initial profile that overflows float32 (a huge --explode_scale) is refused, naming
  the flag, before any model trains: gradients.json holds numbers, not NaN."""
  values = [*profile["d_states"], *profile["d_inputs"], *profile["jacobian_norm"]]
  if not all(math.isfinite(v) for v in values):
    flag = (f"--explode_scale={FLAGS.explode_scale}" if name == "simple_rnn_relu_exploding"
            else f"--seq_len={FLAGS.seq_len}")
    raise errors.UserError(f"{flag}: {name}'s gradients at initialisation overflow float32 "
                           "(inf or NaN in ||dL/dh_t||); choose a smaller value")


def _json_numbers(value):
  """`value` with every non-finite float as None: gradients.json stays JSON."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _json_numbers(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_numbers(v) for v in value]
  return value


def main(argv):
  del argv
  check_flags()
  train_flags.set_up(FLAGS)
  root = Path(FLAGS.workdir or os.path.join("runs", "gradients"))
  train.check_workdir(root)
  runs = plan(root)
  data = adding.batches(seq_len=FLAGS.seq_len, num_train=FLAGS.num_train, num_test=500,
                        validation_split=0.2, batch_size=FLAGS.batch_size, seed=FLAGS.seed)
  x, y, _ = next(iter(data.test()))
  x, y = jnp.asarray(x), jnp.asarray(y)
  report = {"seq_len": FLAGS.seq_len, "units": FLAGS.units, "seed": FLAGS.seed,
            "explode_scale": FLAGS.explode_scale, "models": {}}
  cells_by_name = configurations(FLAGS.units, FLAGS.explode_scale)
  profiled = ({name: cells_by_name[name] for name in FLAGS.model}
              if "profiles" in FLAGS.parts else {})
  initial = {}  # every model's profile at initialisation, checked before any trains
  for name, cell in profiled.items():
    initial[name] = gradient_profile(cell, _model(cell, FLAGS.units).init(
        jax.random.key(FLAGS.seed), x), x, y, FLAGS.units)
    _check_finite(name, initial[name])
  for name, cell in profiled.items():
    model = _model(cell, FLAGS.units)
    entry = {"init": initial[name]}
    print(f"--- {name}: at init ||dL/dh_1|| / ||dL/dh_T|| = "
          f"{entry['init']['first_to_last']:.3g}", flush=True)
    if name != "simple_rnn_relu_exploding":  # it cannot train unclipped: see part 2
      params, results = _trained(model, runs[name], data, x)
      # On the host first: fit's params are replicated over its CPU devices, where an XLA
      # program over both would all-reduce (and can deadlock, see rnn_jax.train.placement).
      trained_params = jax.device_get(params)
      entry["trained"] = gradient_profile(cell, trained_params, x, y, FLAGS.units)
      entry["trained"]["test_mse"] = results["test"]["loss"]
      print(f"--- {name}: trained, ||dL/dh_1|| / ||dL/dh_T|| = "
            f"{entry['trained']['first_to_last']:.3g}", flush=True)
    report["models"][name] = entry
  if "clipping" in FLAGS.parts:
    report["clipping"] = clipping_runs(root, runs)
  files.make_dirs(root)
  files.write_atomic(root / "gradients.json",
                     json.dumps(_json_numbers(report), indent=2, allow_nan=False) + "\n")
  from rnn_jax.analysis import plots  # pylint: disable=import-outside-toplevel
  if report["models"]:
    plots.gradient_profiles(report, root / "gradients")
  if "clipping" in report:
    plots.clipping(report["clipping"], root / "clipping")
  print(_table(report))
  print(f"\nwrote {root / 'gradients.json'}, {root / 'gradients.png'}, {root / 'clipping.png'}")


def _table(report: dict) -> str:
  lines = [f"\n| model (T={report['seq_len']}) | ||dL/dh_1|| / ||dL/dh_T||, init | trained | "
           "test MSE |", "|---|---|---|---|"]
  for name, entry in report["models"].items():
    trained = entry.get("trained")
    lines.append(f"| {name} | {entry['init']['first_to_last']:.3g} | "
                 + (f"{trained['first_to_last']:.3g} | {trained['test_mse']:.4f} |" if trained
                    else "not trained (explodes) | - |"))
  if "clipping" not in report:
    return "\n".join(lines)
  clipping = report["clipping"]
  lines.append(f"\nClipping (relu RNN, SGD; predicting the mean: MSE "
               f"{clipping['mean_predictor_mse']:.3f}):")
  for name in ("unclipped", "clipped"):
    run = clipping[name]
    lines.append(f"  {name}: " + (f"test MSE {run['test_mse']:.4f}" if run["outcome"] ==
                                  "trained" else f"diverged: {run['message']}"))
  return "\n".join(lines)


if __name__ == "__main__":
  command.run(main)
