"""experiments.summarize on hand-made results files."""
import json

import pytest

from experiments import summarize
from rnn_jax.errors import UserError


def write(root, name, experiment, model, val_mae, std=8.0, test=True, best_epoch=3):
  metrics = lambda mae: {"loss": mae, "mae": mae, "mae_degC": mae * std}
  path = root / name / "results.json"
  path.parent.mkdir(parents=True)
  path.write_text(json.dumps({
      "experiment": experiment, "model": model, "best_epoch": best_epoch,
      "val": metrics(val_mae), "test": metrics(val_mae + 0.01) if test else None,
      "seconds": 12.3, "history": []}))


def test_table_has_one_row_per_run_baseline_first(tmp_path):
  write(tmp_path, "gru", "jena_forecast", "gru", 0.25)
  write(tmp_path, "naive", "jena_forecast", "naive", 0.29, best_epoch=None)
  write(tmp_path, "mlp", "jena_forecast", "mlp", 0.31, test=False)
  text = summarize.table(summarize.load_results(tmp_path))
  lines = text.splitlines()
  assert lines[0].startswith("| experiment | model | best epoch | val MAE | val MAE (unit)")
  assert lines[2] == "| jena_forecast | naive | - | 0.2900 | 2.320 degC | 0.3000 | 2.400 degC | 12 |"
  assert lines[3] == "| jena_forecast | gru | 3 | 0.2500 | 2.000 degC | 0.2600 | 2.080 degC | 12 |"
  assert lines[4] == "| jena_forecast | mlp | 3 | 0.3100 | 2.480 degC | - | - | 12 |"


def test_one_chart_per_experiment(tmp_path):
  write(tmp_path, "a/naive", "a", "naive", 0.29)
  write(tmp_path, "a/gru", "a", "gru", 0.25)
  write(tmp_path, "b/gru", "b", "gru", 0.2)
  paths = summarize.charts(summarize.load_results(tmp_path), tmp_path)
  assert [p.name for p in paths] == ["val_mae_a.png", "val_mae_b.png"]
  assert all(p.stat().st_size > 0 for p in paths)


def test_a_broken_results_file_is_a_user_error(tmp_path):
  (tmp_path / "x").mkdir()
  (tmp_path / "x" / "results.json").write_text("{not json")
  with pytest.raises(UserError, match="results.json: not a results file"):
    summarize.load_results(tmp_path)
