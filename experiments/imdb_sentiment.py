"""IMDB sentiment: the lecture's Embedding(10000, 32) -> LSTM(32) -> Dense(1), and its variants.

  python -m experiments.imdb_sentiment --data_path=/path/aclImdb_v1.tar.gz     # the LSTM
  python -m experiments.imdb_sentiment --model=lstm,bidirectional_lstm
  python -m experiments.imdb_sentiment --model=gru --recurrent_dropout=0.2

The reviews are encoded as `keras.datasets.imdb.load_data(num_words=--max_features)` and
`pad_sequences(maxlen=--maxlen)` do (rnn_jax.data.imdb); without --data_path the canonical
archive is downloaded once into the user's cache (or $RNN_JAX_DATA_CACHE). Training is the lecture's
`fit(epochs=10, batch_size=128, validation_split=0.2)` with RMSprop(1e-3), through the
shared `rnn_jax.train.fit`; the model's Dense(1) gives a logit and the loss is binary
cross-entropy on logits, the same function as sigmoid + BCE. The test accuracy is that of
the epoch with the lowest validation loss. Each model's run goes to <workdir>/<model>/
(default runs/imdb_sentiment/<model>/); the reviews are read once for all of them.
"""
import os
import pathlib

from absl import flags

from experiments import command, train_flags, variants
from rnn_jax import errors, layers, train
from rnn_jax.data import imdb

# name -> the recurrent part, given (units, dropout, recurrent_dropout, lecture options).
# reversed_lstm reads each review reversed before padding (REVERSED), as the lecture does.
RECURRENT = {
    "simple_rnn": lambda units, **options: layers.SimpleRNN(units, **options),
    "lstm": lambda units, **options: layers.LSTM(units, **options),
    "gru": lambda units, **options: layers.GRU(units, **options),
    "reversed_lstm": lambda units, **options: layers.LSTM(units, **options),
    "bidirectional_lstm": lambda units, **options: layers.Bidirectional(
        layers.LSTM(units, **options)),
    "min_gru": lambda units, **options: layers.MinGRU(units, **options),
    "min_lstm": lambda units, **options: layers.MinLSTM(units, **options),
}
REVERSED = ("reversed_lstm",)
_KIND = {"reversed_lstm": "lstm", "bidirectional_lstm": "lstm"}  # for the lecture options

flags.DEFINE_list("model", ["lstm"], f"Models to train, in order, from {list(RECURRENT)}: "
                  "the recurrent layer that reads the review.")
flags.DEFINE_string("data_path", None, "A local aclImdb_v1.tar.gz (or Keras's imdb.npz); "
                    "default: download the canonical archive.")
flags.DEFINE_integer("max_features", 10000, "Vocabulary: ids < max_features are kept, "
                     "rarer words become the out-of-vocabulary id 2 (Keras's num_words).")
flags.DEFINE_integer("maxlen", 500, "Reviews are cut (at the front) or padded to this length.")
flags.DEFINE_integer("embedding_dim", 32, "Size of the word vectors.")
flags.DEFINE_integer("units", 32, "Units of the recurrent layer (per direction).")
flags.DEFINE_float("dropout", 0.0, "Dropout on the recurrent layer's inputs.")
flags.DEFINE_float("recurrent_dropout", 0.0, "Dropout on its recurrent state (Gal & Ghahramani).")
flags.DEFINE_bool("mask_zero", False, "Mask the padding (id 0) so the recurrent layer skips it; "
                  "the lecture does not.")
FLAGS = train_flags.define_flags(epochs=10, batch_size=128, validation_split=0.2,
                                 optimizer="rmsprop", learning_rate=1e-3)
flags.adopt_module_key_flags(train_flags)  # --help lists the shared training flags too
FLAGS["workdir"].help = ("Parent directory: each model's run goes to <workdir>/<model> "
                         "(default: runs/imdb_sentiment).")
FLAGS["steps_per_epoch"].help = ("Training steps per epoch (default: one pass over the "
                                 "training reviews, 157 batches at the defaults).")


def build_model(name: str, *, max_features: int, embedding_dim: int, units: int,
                dropout: float = 0.0, recurrent_dropout: float = 0.0,
                mask_zero: bool = False, activation=None, reset_after=None,
                head: str = "dense") -> layers.Sequential:
  """ids <int32>[batch, time] -> logits <float32>[batch, 1]."""
  options = variants.lecture_options(_KIND.get(name, name), activation, reset_after)
  return layers.Sequential([
      layers.Embedding(max_features, embedding_dim, mask_zero=mask_zero),
      RECURRENT[name](units, dropout=dropout, recurrent_dropout=recurrent_dropout, **options),
      *variants.head(head, units),
  ])


def _check_flags():
  train.check_names(FLAGS.model, list(RECURRENT), "model")

  def need(ok, name, what):
    if not ok:
      raise errors.UserError(f"--{name} must be {what}, got {FLAGS[name].value!r}")
  need(FLAGS.max_features >= 4, "max_features", "at least 4 (ids 0-2 are padding, start, OOV)")
  for name in ("maxlen", "embedding_dim", "units"):
    need(FLAGS[name].value >= 1, name, "a positive integer")
  for name in ("dropout", "recurrent_dropout"):
    need(0.0 <= FLAGS[name].value < 1.0, name, "in [0, 1)")


def main(argv):
  del argv
  _check_flags()
  train_flags.set_up(FLAGS)
  settings = dict(max_features=FLAGS.max_features, embedding_dim=FLAGS.embedding_dim,
                  units=FLAGS.units, dropout=FLAGS.dropout,
                  recurrent_dropout=FLAGS.recurrent_dropout, mask_zero=FLAGS.mask_zero,
                  activation=FLAGS.activation, reset_after=FLAGS.reset_after, head=FLAGS.head)
  models = {m: layers.with_implementation(build_model(m, **settings), FLAGS.implementation)
            for m in FLAGS.model}
  train.check_models(models, FLAGS.implementation)  # before any workdir or review is read
  root = pathlib.Path(FLAGS.workdir or os.path.join("runs", "imdb_sentiment"))
  train.check_workdir(root)
  options = {m: train_flags.train_options(FLAGS, experiment="imdb_sentiment", model_name=m,
                                          workdir=str(root / m))
             for m in FLAGS.model}
  # Every model's workdir checked (finished, interrupted: the same flags?) before the
  # reviews are read; each run records --model as its own name.
  runs = train.plan_runs(options, list_flag="model")
  for run in runs:
    if run.finished:
      print(f"--- {run.name}: finished earlier with the same flags, reusing "
            f"{os.path.join(run.options.workdir, 'results.json')}", flush=True)
  runs = [run for run in runs if not run.finished]
  if not runs:
    return
  # The reviews, read once per direction the models need (reversed_lstm reads them reversed).
  datasets = {reverse: imdb.load(FLAGS.data_path, num_words=FLAGS.max_features,
                                 maxlen=FLAGS.maxlen, reverse=reverse)
              for reverse in sorted({run.name in REVERSED for run in runs})}
  data = next(iter(datasets.values()))
  batches = imdb.batches(data, batch_size=FLAGS.batch_size,
                         validation_split=FLAGS.validation_split)
  print(f"IMDB: {len(batches.x_train)} reviews for training ({batches.steps_per_epoch} "
        f"batches), {len(batches.x_val)} for validation, {len(data.x_test)} for testing",
        flush=True)
  for run in runs:
    model_name, model_options = run.name, run.options
    print(f"--- {model_name}", flush=True)
    model = models[model_name]
    data = datasets[model_name in REVERSED]
    batches = imdb.batches(data, batch_size=FLAGS.batch_size,
                           validation_split=FLAGS.validation_split)
    train.fit(model, batches, loss="bce_logits", metrics=("accuracy",), options=model_options,
              model_config={**settings, "maxlen": FLAGS.maxlen,
                            "reversed_reviews": model_name in REVERSED},
              preprocessing=imdb.preprocessing(data, num_words=FLAGS.max_features,
                                               maxlen=FLAGS.maxlen,
                                               reverse=model_name in REVERSED),
              extra_results={"data": {"source": FLAGS.data_path or imdb.ACLIMDB_URL,
                                      "train_reviews": len(data.x_train),
                                      "test_reviews": len(data.x_test),
                                      "vocabulary": len(data.words)}})


if __name__ == "__main__":
  command.run(main)
