"""Predictions from a finished run, and its model as a `jax.export` artifact.

  python -m experiments.predict --run=runs/imdb_sentiment/lstm --input=reviews.txt --output=p.csv
  python -m experiments.predict --run=runs/jena_forecast/gru --input=new.csv --output=f.csv
  python -m experiments.predict --run=runs/imdb_sentiment/lstm --export=lstm.jax

--input is, by the run's kind: IMDB, a text file with one review a line (blank lines are
skipped) -> CSV `line,probability_positive`; forecasting, a CSV with the training's
columns -> CSV `row[,time],<target> forecast (<unit>)`, one line per window that has
--lookback rows behind it (rnn_jax.io.predictor); the adding problem, a .npy array of inputs
-> CSV `output_0,...`. --export writes the serialized StableHLO artifact
(rnn_jax.io.export): it takes the preprocessed inputs, any batch size, and needs only jax
and numpy to run.
"""
from __future__ import annotations

import pathlib

import numpy as np
from absl import flags

from experiments import command
from rnn_jax import errors
from rnn_jax.io import files

flags.DEFINE_string("run", None, "A finished run's directory (one model's workdir).")
flags.DEFINE_string("input", None, "Raw inputs: reviews one a line (IMDB), a CSV "
                    "(forecasting) or a .npy array (adding problem).")
flags.DEFINE_string("output", None, "Where to write the predictions (CSV; default stdout).")
flags.DEFINE_string("export", None, "Also write the model as a jax.export artifact here.")
flags.DEFINE_list("platforms", None, "Platforms the artifact is lowered for, e.g. cpu,cuda "
                  "(default: this machine's).")
flags.DEFINE_integer("replica", 0, "Which --num_seeds replica to use.")
FLAGS = flags.FLAGS


def predictions_table(predictor, path: pathlib.Path):
  """The predictions for the raw inputs in `path`, as a DataFrame."""
  import pandas as pd
  if not path.is_file():
    raise errors.UserError(f"--input: {path}: no such file")
  if predictor.kind == "imdb":
    try:
      lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
      raise errors.UserError(f"--input: {path}: not UTF-8 text ({e.reason})") from None
    numbered = [(i, text) for i, text in enumerate(lines, start=1) if text.strip()]
    if not numbered:
      raise errors.UserError(f"--input: {path}: no reviews (one a line)")
    probabilities = predictor.predict([text for _, text in numbered])
    return pd.DataFrame({"line": [i for i, _ in numbered],
                         "probability_positive": probabilities})
  if predictor.kind == "forecast":
    return predictor.forecast_table(path)
  try:
    x = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise errors.UserError(f"--input: {path}: not a .npy array ({e})") from None
  outputs = np.asarray(predictor.predict(x)).reshape(len(x), -1)
  return pd.DataFrame({f"output_{j}": outputs[:, j] for j in range(outputs.shape[1])})


# What jax.export lowers for (`jax.export.export(..., platforms=...)`).
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def _same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
  """Whether two paths name one file (a link or another spelling included)."""
  try:
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
  except OSError:
    return False


def check_flags() -> None:
  """Every flag before the run is loaded or anything written: a one-line UserError."""
  if not FLAGS.run:
    raise errors.UserError("--run is required: a finished run's directory")
  if not FLAGS.input and not FLAGS.export:
    raise errors.UserError("give --input (and --output) to predict, or --export, or both")
  if FLAGS.replica < 0:
    raise errors.UserError(f"--replica must be 0 or more, got {FLAGS.replica}")
  if FLAGS.platforms is not None:
    unknown = [p for p in FLAGS.platforms if p not in PLATFORMS]
    if unknown or not FLAGS.platforms:
      raise errors.UserError(f"--platforms={','.join(FLAGS.platforms)}: choose from "
                             f"{', '.join(PLATFORMS)}")
    if not FLAGS.export:
      raise errors.UserError("--platforms is for --export")
  if FLAGS.output and not FLAGS.input:
    raise errors.UserError("--output needs --input (the predictions of those inputs)")
  run = pathlib.Path(FLAGS.run)
  written = {"--output": FLAGS.output, "--export": FLAGS.export}
  read = {"--input": FLAGS.input}
  for name, target in written.items():
    if not target:
      continue
    for source_name, source in read.items():
      if source and _same_file(pathlib.Path(target), pathlib.Path(source)):
        raise errors.UserError(f"{name}={target} is {source_name}: choose another file, the "
                               "input is never written over")
    if (pathlib.Path(target).is_file()
        and run.resolve() in pathlib.Path(target).resolve().parents):
      raise errors.UserError(f"{name}={target} is a file of --run={run}: choose another file, "
                             "the run's files are never written over")
    if pathlib.Path(target).is_dir():
      raise errors.UserError(f"{name}={target} is a directory: give a file name")
  if FLAGS.output and FLAGS.export and _same_file(pathlib.Path(FLAGS.output),
                                                  pathlib.Path(FLAGS.export)):
    raise errors.UserError(f"--output and --export are one file ({FLAGS.output})")


def main(argv):
  del argv
  check_flags()
  import rnn_jax  # pylint: disable=import-outside-toplevel
  predictor = rnn_jax.load(FLAGS.run, replica=FLAGS.replica)
  if FLAGS.input:
    table = predictions_table(predictor, pathlib.Path(FLAGS.input))
    if FLAGS.output:
      files.write_atomic(FLAGS.output, table.to_csv(index=False))
      print(f"wrote {len(table)} predictions to {FLAGS.output}", flush=True)
    else:
      print(table.to_csv(index=False), end="", flush=True)
  if FLAGS.export:
    from rnn_jax.io import export  # pylint: disable=import-outside-toplevel
    path = export.export(predictor, FLAGS.export, FLAGS.platforms)
    shape = ",".join(["batch", *map(str, predictor.record["input_shape"])])
    print(f"wrote {path}: <{predictor.record['input_dtype']}>[{shape}] -> predictions "
          "(jax.export.deserialize(bytes).call(x))", flush=True)


if __name__ == "__main__":
  command.run(main)
