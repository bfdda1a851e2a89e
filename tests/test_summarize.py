"""experiments.summarize on hand-made results files of the three kinds of experiment."""
import json

import pytest

from experiments import summarize
from rnn_jax.errors import UserError


def write(root, name, experiment, model, val, test=None, best_epoch=(3,), loss=None):
  path = root / name / "results.json"
  path.parent.mkdir(parents=True)
  config = {"config": {"loss": loss}} if loss else {}
  path.write_text(json.dumps({
      "experiment": experiment, "model": model, "best_epoch": list(best_epoch),
      "val": val, "test": test, "seconds": 12.3, "history": [], **config}))


def forecast(mae, std=8.0):
  return {"loss": mae, "mae": mae, "mae_degC": mae * std}


def test_each_experiment_has_its_own_metrics_and_the_run_path(tmp_path):
  write(tmp_path, "jena/gru", "jena_forecast", "gru", forecast(0.25), forecast(0.26))
  write(tmp_path, "jena/naive", "jena_forecast", "naive", forecast(0.29), best_epoch=())
  write(tmp_path, "imdb/lstm", "imdb_sentiment", "lstm", {"loss": 0.31, "accuracy": 0.881},
        {"loss": 0.33, "accuracy": 0.874}, loss="bce_logits")
  write(tmp_path, "add/gru", "adding_problem", "gru", {"loss": 5.06e-5}, {"loss": 6e-5})
  write(tmp_path, "add_again/gru", "adding_problem", "gru", {"loss": 1e-4}, {"loss": 2e-4})
  text = summarize.table(summarize.load_results(tmp_path))
  sections = {part.split("\n", 1)[0]: part for part in text.split("## ")[1:]}
  assert list(sections) == ["adding_problem", "imdb_sentiment", "jena_forecast"]
  add, imdb, jena = (sections[k].splitlines() for k in sections)
  assert add[2] == ("| model | best epoch | val MSE | test MSE | seconds | run |")
  assert add[4:6] == ["| gru | 3 | 5.06e-05 | 6e-05 | 12 | add/gru |",
                      "| gru | 3 | 0.0001 | 0.0002 | 12 | add_again/gru |"]
  assert imdb[2] == ("| model | best epoch | val accuracy | val loss (BCE) | test accuracy | "
                     "test loss (BCE) | seconds | run |")
  assert imdb[4] == "| lstm | 3 | 0.881 | 0.31 | 0.874 | 0.33 | 12 | imdb/lstm |"
  assert jena[2] == ("| model | best epoch | val MAE (normalized) | val MAE (degC) | "
                     "test MAE (normalized) | test MAE (degC) | seconds | run |")
  assert jena[4] == "| naive | - | 0.29 | 2.32 | - | - | 12 | jena/naive |"  # baseline first
  assert jena[5] == "| gru | 3 | 0.25 | 2 | 0.26 | 2.08 | 12 | jena/gru |"
  assert "MAE" not in sections["adding_problem"] and "MAE" not in sections["imdb_sentiment"]


def test_one_chart_per_experiment_naming_its_metric(tmp_path, monkeypatch):
  drawn = []
  monkeypatch.setattr(summarize.forecast_plots, "compare_bars",
                      lambda names, values, path, **kw: drawn.append((path.name, names, kw)))
  write(tmp_path, "a/naive", "jena_forecast", "naive", forecast(0.29))
  write(tmp_path, "a/gru", "jena_forecast", "gru", forecast(0.25))
  write(tmp_path, "b/lstm", "imdb_sentiment", "lstm", {"loss": 0.3, "accuracy": 0.88},
        loss="bce_logits")
  write(tmp_path, "c/gru", "adding_problem", "gru", {"loss": 1e-4})
  paths = summarize.charts(summarize.load_results(tmp_path), tmp_path)
  assert [p.name for p in paths] == ["val_mse_adding_problem.png",
                                     "val_accuracy_imdb_sentiment.png",
                                     "val_mae_jena_forecast.png"]
  labels = {name: kw["ylabel"] for name, _, kw in drawn}
  assert labels == {"val_mse_adding_problem.png": "validation MSE",
                    "val_accuracy_imdb_sentiment.png": "validation accuracy",
                    "val_mae_jena_forecast.png": "validation MAE (degC)"}
  jena = next(d for d in drawn if d[0] == "val_mae_jena_forecast.png")
  assert jena[1] == ["gru"] and jena[2]["baseline"] == pytest.approx(0.29 * 8)


def test_charts_are_written_as_png_and_svg(tmp_path):
  write(tmp_path, "gru", "adding_problem", "gru", {"loss": 1e-4})
  (path,) = summarize.charts(summarize.load_results(tmp_path), tmp_path)
  assert path.name == "val_mse.png" and path.stat().st_size > 0
  assert path.with_suffix(".svg").read_text().lstrip().startswith("<?xml")


def test_older_results_with_a_number_as_best_epoch(tmp_path):
  write(tmp_path, "gru", "adding_problem", "gru", {"loss": 1e-4})
  found = summarize.load_results(tmp_path)
  found[0]["best_epoch"] = 7
  assert "| gru | 7 | 0.0001 |" in summarize.table(found)


def test_a_broken_results_file_is_a_user_error(tmp_path):
  (tmp_path / "x").mkdir()
  (tmp_path / "x" / "results.json").write_text("{not json")
  with pytest.raises(UserError, match="results.json: not a results file"):
    summarize.load_results(tmp_path)


def test_an_unknown_experiment_without_metrics_gets_a_table_and_no_chart(tmp_path):
  """issue 26: a results.json of an experiment of your own with no val or test metrics was
  an IndexError in the charts."""
  write(tmp_path, "mine/rnn", "my_experiment", "rnn", None)
  runs = summarize.load_results(tmp_path)
  assert "| rnn | 3 | 12 | mine/rnn |" in summarize.table(runs)
  assert summarize.charts(runs, tmp_path) == []
