"""The adding problem: SimpleRNN fails where LSTM and GRU learn long-range dependencies.

  python -m experiments.adding_problem                      # all three models, a few minutes
  python -m experiments.adding_problem --model=gru --seq_len=200

Each model trains with the shared `fit` into <workdir>/<model>/; then a markdown table of
test MSE and a plot of validation MSE per epoch (<workdir>/comparison.png).

The sequences are drawn from --data_seed (default: --seed). With --num_seeds=N every
replica trains on the same sequences, those of --data_seed (default: --seed): replica r
is the run with --seed=seed+r --data_seed=seed.
"""
import functools
import os
import pathlib

from absl import flags

from experiments import command, train_flags, variants
from rnn_jax import errors, layers, train
from rnn_jax.analysis import plots
from rnn_jax.data import adding

RECURRENT = {"simple_rnn": layers.SimpleRNN, "lstm": layers.LSTM, "gru": layers.GRU,
             "min_gru": layers.MinGRU, "min_lstm": layers.MinLSTM}
DEFAULT_MODELS = ["simple_rnn", "lstm", "gru"]


def build_model(name: str, units: int, *, activation=None, reset_after=None,
                head: str = "dense") -> layers.Sequential:
  """<float32>[batch, T, 2] -> the predicted sum <float32>[batch, 1]."""
  options = variants.lecture_options(name, activation, reset_after)
  return layers.Sequential([RECURRENT[name](units, **options), *variants.head(head, units)])


MODELS = {name: functools.partial(build_model, name) for name in RECURRENT}

flags.DEFINE_list("model", DEFAULT_MODELS, f"Models to compare, in order, from {list(MODELS)}.")
flags.DEFINE_integer("seq_len", 100, "Sequence length T.")
flags.DEFINE_integer("units", 32, "Units of each recurrent layer.")
flags.DEFINE_integer("num_train", 10000, "Training + validation sequences.")
flags.DEFINE_integer("num_test", 1000, "Test sequences.")
flags.DEFINE_integer("data_seed", None, "Seed of the sequences (default: --seed).")
FLAGS = train_flags.define_flags(epochs=20, batch_size=64, optimizer="adam", learning_rate=1e-2,
                                 validation_split=0.2)
flags.adopt_module_key_flags(train_flags)  # --help lists the shared training flags too
FLAGS["workdir"].help = "Parent directory: each model's run goes to <workdir>/<model>; " \
    "comparison.png and the table to <workdir> (default: runs/adding_problem)."
FLAGS["steps_per_epoch"].help = "Training steps per epoch (default: one pass over the " \
    "training sequences, 125 batches at the defaults)."


def main(argv):
  del argv
  train.check_names(FLAGS.model, list(MODELS), "model")
  for name in ("seq_len", "units", "num_train", "num_test"):
    if FLAGS[name].value < 2:
      raise errors.UserError(f"--{name} must be at least 2, got {FLAGS[name].value}")
  if FLAGS.data_seed is not None and not 0 <= FLAGS.data_seed < 2**32:
    raise errors.UserError(f"--data_seed must be in [0, 2**32), got {FLAGS.data_seed}")
  train_flags.set_up(FLAGS)
  models = {m: layers.with_implementation(
      MODELS[m](FLAGS.units, activation=FLAGS.activation, reset_after=FLAGS.reset_after,
                head=FLAGS.head), FLAGS.implementation) for m in FLAGS.model}
  train.check_models(models, FLAGS.implementation)  # before any workdir or data
  workdir = FLAGS.workdir or os.path.join("runs", "adding_problem")
  data_seed = FLAGS.seed if FLAGS.data_seed is None else FLAGS.data_seed
  train.check_workdir(pathlib.Path(workdir))
  options = {m: train_flags.train_options(FLAGS, experiment="adding_problem", model_name=m,
                                          workdir=os.path.join(workdir, m))
             for m in FLAGS.model}  # checks the shared flags before anything else
  # Every model checked before any trains (finished, interrupted: the same flags?); each
  # run records --model as its own name, so a resume may list other models.
  runs = train.plan_runs(options, list_flag="model")
  data = adding.batches(seq_len=FLAGS.seq_len, num_train=FLAGS.num_train,
                        num_test=FLAGS.num_test, validation_split=FLAGS.validation_split,
                        batch_size=FLAGS.batch_size,
                        seed=data_seed)
  results = {}
  for run in runs:
    model_name = run.name
    if run.finished:
      print(f"--- {model_name}: finished earlier with the same flags, reusing "
            f"{os.path.join(run.options.workdir, 'results.json')}", flush=True)
      results[model_name] = run.results
      continue
    print(f"--- {model_name}, T={FLAGS.seq_len}", flush=True)
    model = models[model_name]
    results[model_name] = train.fit(
        model, data, loss="mse", options=run.options,
        model_config={"units": FLAGS.units, "seq_len": FLAGS.seq_len,
                      "activation": FLAGS.activation, "reset_after": FLAGS.reset_after,
                      "head": FLAGS.head},
        extra_results={"data": {"seq_len": FLAGS.seq_len, "num_train": FLAGS.num_train,
                                "num_test": FLAGS.num_test, "seed": data_seed}},
        preprocessing={"kind": "arrays"}).results

  print(f"\nAdding problem, T={FLAGS.seq_len} (predicting the mean: MSE "
        f"{adding.CONSTANT_PREDICTION_MSE:.3f})\n\n| model | test MSE | best epoch | seconds |\n"
        "|---|---|---|---|")
  for model_name, r in results.items():
    best = ",".join(map(str, r["best_epoch"]))
    print(f"| {model_name} | {r['test']['loss']:.2e} | {best} | {r['seconds']:.0f} |")
  plots.compare({m: [h["val_loss"] for h in r["history"]] for m, r in results.items()},
                os.path.join(workdir, "comparison.png"), ylabel="Validation MSE",
                title=f"Adding problem, T={FLAGS.seq_len}",
                baseline=adding.CONSTANT_PREDICTION_MSE)
  print(f"\nwrote {os.path.join(workdir, 'comparison.png')}")


if __name__ == "__main__":
  command.run(main)
