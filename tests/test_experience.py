"""What a user sees of the three experiments run side by side: one flag vocabulary, each
run's provenance, TensorBoard events, and one summary that names every metric."""
import glob
import json
import struct
import subprocess
import sys

import pytest

import training_runs as runs
from test_imdb import many_reviews_archive
from test_jena_forecast import jena_csv

EXPERIMENTS = ("adding_problem", "imdb_sentiment", "jena_forecast")


def _run(module, *flags, tmp_path):
  return subprocess.run([sys.executable, "-m", module, *flags], cwd=runs.REPO,
                        capture_output=True, text=True, timeout=600,
                        env=runs.environment(RNN_JAX_DATA_CACHE=str(tmp_path / "cache")))


def read_events(path):
  """[(tag, step, value)] of a TensorBoard event file (TFRecord framing, Event protos)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  data, at, out = open(path, "rb").read(), 0, []
  while at < len(data):
    (length,) = struct.unpack("<Q", data[at:at + 8])
    event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
    at += 12 + length + 4  # length, its CRC, the record, its CRC
    out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
  return out


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  """Tiny runs of every experiment under one parent, each through its own --workdir."""
  tmp = tmp_path_factory.mktemp("experience")
  archive = many_reviews_archive(tmp / "aclImdb_v1.tar.gz")
  data = jena_csv(tmp / "jena_climate_2009_2016.csv")
  commands = {
      "adding_problem": ["experiments.adding_problem", *runs.TINY[1:], "--model=gru",
                         "--log_every_steps=4"],
      "imdb_sentiment": ["experiments.imdb_sentiment", f"--data_path={archive}",
                         "--model=lstm,gru", "--maxlen=20", "--max_features=30", "--units=4",
                         "--embedding_dim=4", "--batch_size=8", "--epochs=2"],
      # No --steps_per_epoch, --epochs or --dropout: the models' own defaults, recorded.
      "jena_forecast": ["experiments.jena_forecast", f"--data_path={data}",
                        "--model=naive,gru_dropout", "--lookback=12", "--step=2", "--delay=3",
                        "--batch_size=8", "--validation_steps=2", "--units=4",
                        "--train_end=300", "--val_end=450"],
  }
  for name, (module, *flags) in commands.items():
    extra = ["--epochs=1"] if name == "jena_forecast" else []  # gru_dropout's own is 40
    proc = _run(module, *flags, *extra, f"--workdir={tmp / 'runs' / name}", tmp_path=tmp)
    assert proc.returncode == 0, (name, proc.stderr[-3000:])
  return tmp / "runs"


@pytest.mark.slow  # the three experiments at their own defaults: ~4 min
def test_every_experiment_puts_each_model_under_the_workdir(root):
  found = sorted(p.parent.relative_to(root).as_posix() for p in root.rglob("results.json"))
  assert found == ["adding_problem/gru", "imdb_sentiment/gru", "imdb_sentiment/lstm",
                   "jena_forecast/gru_dropout", "jena_forecast/naive"]
  for path in root.rglob("results.json"):
    results = json.loads(path.read_text())
    assert isinstance(results["best_epoch"], list)  # one type, whatever --num_seeds
    assert results["flags"]["model"] == results["model"]


@pytest.mark.slow  # the three experiments at their own defaults: ~4 min
def test_results_say_how_they_were_made(root):
  results = json.loads((root / "jena_forecast" / "gru_dropout" / "results.json").read_text())
  config = results["config"]
  assert results["flags"]["dropout"] is None  # the flag was not given ...
  assert (config["dropout"], config["recurrent_dropout"]) == (0.2, 0.2)  # ... the model's
  (gru, _) = config["architecture"]["layers"]
  assert (gru["cell"]["cell"], gru["dropout"], gru["recurrent_dropout"]) == ("gru", 0.2, 0.2)
  model_json = json.loads((root / "jena_forecast" / "gru_dropout" / "model.json").read_text())
  assert model_json["model"] == config["architecture"]  # one record, not two that differ
  assert model_json["compute_dtype"] == config["compute_dtype"]
  assert config["steps_per_epoch"] == 500 and config["loss"] == "mae"
  assert len(results["history"]) == 1 and config["epochs"] == 1
  provenance = results["provenance"]
  versions = provenance["versions"]
  import jax  # pylint: disable=import-outside-toplevel
  import rnn_jax  # pylint: disable=import-outside-toplevel
  assert versions["jax"] == jax.__version__ and versions["rnn_jax"] == rnn_jax.__version__
  assert versions["jaxlib"] and versions["python"].count(".") == 2
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=runs.REPO, capture_output=True,
                        text=True, check=False).stdout.strip()
  if head:  # a git checkout
    assert provenance["git"]["commit"] == head and isinstance(provenance["git"]["dirty"], bool)
  assert provenance["devices"]["platform"] == "cpu" and provenance["devices"]["local"] >= 1
  assert provenance["devices"]["kind"]
  assert provenance["started"] <= provenance["finished"]
  assert results["compile_seconds"] > 0
  naive = json.loads((root / "jena_forecast" / "naive" / "results.json").read_text())
  assert naive["best_epoch"] == [] and naive["provenance"]["versions"] == versions


@pytest.mark.slow  # the three experiments at their own defaults: ~4 min
def test_tensorboard_and_csv_hold_every_epoch(root):
  run = root / "imdb_sentiment" / "lstm"
  (events,) = glob.glob(str(run / "tensorboard" / "events.out.tfevents.*"))
  scalars = read_events(events)
  history = json.loads((run / "results.json").read_text())["history"]
  for row in history:
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
      (value,) = [v for tag, step, v in scalars if tag == f"epoch/{name}" and step == row["epoch"]]
      assert value == pytest.approx(row[name], rel=1e-6)
  csv_lines = (run / "metrics.csv").read_text().splitlines()
  assert csv_lines[0].split(",")[:3] == ["epoch", "loss", "accuracy"] and len(csv_lines) == 3
  # The loss every --log_every_steps steps: 8 steps an epoch, every 4th, over 3 epochs.
  (events,) = glob.glob(str(root / "adding_problem" / "gru" / "tensorboard" / "*"))
  steps = [step for tag, step, _ in read_events(events) if tag == "step/loss"]
  assert steps == [4, 8, 12, 16, 20, 24]


@pytest.mark.slow  # the three experiments at their own defaults: ~4 min
def test_summarize_names_each_experiment_s_metrics(root, tmp_path):
  proc = _run("experiments.summarize", f"--workdir={root}", tmp_path=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  sections = {part.split("\n", 1)[0]: part for part in proc.stdout.split("## ")[1:]}
  assert list(sections) == list(EXPERIMENTS)
  adding, imdb, jena = (sections[name] for name in EXPERIMENTS)
  assert "| val MSE | test MSE |" in adding and "MAE" not in adding
  assert "| val accuracy | val loss (BCE) |" in imdb and "MAE" not in imdb
  assert "| val MAE (normalized) | val MAE (degC) |" in jena
  for run in ("adding_problem/gru", "imdb_sentiment/lstm", "imdb_sentiment/gru",
              "jena_forecast/naive", "jena_forecast/gru_dropout"):
    assert f"| {run} |" in proc.stdout
  for chart in ("val_mse_adding_problem", "val_accuracy_imdb_sentiment",
                "val_mae_jena_forecast"):
    assert (root / f"{chart}.png").stat().st_size > 0 and (root / f"{chart}.svg").is_file()


@pytest.mark.slow  # three experiment processes: ~40 s
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_help_shows_the_shared_flags(name, tmp_path):
  proc = _run(f"experiments.{name}", "--help", tmp_path=tmp_path)  # absl exits 1 after help
  for flag in ("--epochs", "--batch_size", "--workdir", "--model", "--log_every_steps",
               "--lr_schedule", "--warmup_steps", "--early_stopping_patience", "--compute_dtype"):
    assert flag in proc.stdout, flag
  assert "<workdir>/<model>" in proc.stdout
  assert "--models" not in proc.stdout
