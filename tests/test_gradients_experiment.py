"""experiments.gradients end to end, small: its JSON tells the story (the full-size run's
numbers are in README's "The gradient story")."""
import json
import subprocess
import sys

import pytest

import training_runs as runs

pytestmark = pytest.mark.e2e


def _run(*flags, tmp_path):
  return subprocess.run([sys.executable, "-m", "experiments.gradients", *flags,
                         f"--workdir={tmp_path}"], cwd=runs.REPO, capture_output=True,
                        text=True, timeout=900, env=runs.environment())


@pytest.mark.slow  # trains four models and two clipping runs: ~1 min
def test_small_run_writes_the_story(tmp_path):
  done = subprocess.run(
      [sys.executable, "-m", "experiments.gradients", "--seq_len=40", "--units=8",
       "--num_train=640", "--epochs=1", "--clipping_epochs=2", f"--workdir={tmp_path}"],
      cwd=runs.REPO, capture_output=True, text=True, timeout=900, env=runs.environment())
  assert done.returncode == 0, done.stderr[-2000:]
  report = json.loads((tmp_path / "gradients.json").read_text())
  models = report["models"]
  assert set(models) == {"simple_rnn_tanh", "simple_rnn_relu_exploding", "lstm", "gru"}
  for name, entry in models.items():
    assert len(entry["init"]["d_states"]) == 40 == len(entry["init"]["jacobian_norm"])
    assert ("trained" in entry) == (name != "simple_rnn_relu_exploding")
  assert models["simple_rnn_relu_exploding"]["init"]["first_to_last"] >= 1e3
  assert models["simple_rnn_tanh"]["init"]["first_to_last"] < 1
  clipping = report["clipping"]
  assert clipping["unclipped"]["outcome"] == "diverged"
  assert "NaN" in clipping["unclipped"]["message"] or "nan" in clipping["unclipped"]["message"]
  assert clipping["clipped"]["outcome"] == "trained"
  for name in ("gradients", "clipping"):
    assert (tmp_path / f"{name}.png").is_file() and (tmp_path / f"{name}.svg").is_file()
  assert "| simple_rnn_tanh |" in done.stdout


@pytest.mark.slow  # trains a GRU: ~40 s
def test_model_picks_the_figure_s_models_in_order(tmp_path):
  done = _run("--model=gru,simple_rnn_relu_exploding", "--parts=profiles", "--seq_len=12",
              "--units=4", "--num_train=128", "--epochs=1", tmp_path=tmp_path)
  assert done.returncode == 0, done.stderr[-2000:]
  models = json.loads((tmp_path / "gradients.json").read_text())["models"]
  assert list(models) == ["gru", "simple_rnn_relu_exploding"]
  assert (tmp_path / "gru" / "results.json").is_file() and not (tmp_path / "lstm").exists()


@pytest.mark.parametrize("flag,message", [
    ("--model=gru,rnn", "--model: unknown ['rnn']; choose from ['simple_rnn_tanh', "),
    ("--model=", "--model: give at least one model, from ['simple_rnn_tanh', "),
    ("--model=lstm,lstm", "--model=lstm,lstm: 'lstm' is listed twice"),
    ("--parts=profile", "--parts: choose from profiles, clipping"),
    # issue 26: the clipping runs' learning rate and the scales were not checked.
    ("--clipping_learning_rate=-0.05", "--clipping_learning_rate must be positive, got -0.05"),
    ("--explode_scale=nan", "--explode_scale must be positive, got nan"),
    ("--clipping_scale=0", "--clipping_scale must be positive, got 0.0")])
def test_bad_models_are_one_line_before_any_work(tmp_path, flag, message):
  done = _run(flag, tmp_path=tmp_path)
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
  assert message in lines[0]
  assert not any(tmp_path.iterdir())


def test_an_overflowing_scale_is_one_line_and_writes_no_nan(tmp_path):
  """issue 26: a huge --explode_scale wrote NaN into gradients.json (not JSON); now it is
  refused, naming the flag, before any model trains."""
  done = _run("--explode_scale=1e30", "--seq_len=12", "--units=4", "--num_train=64",
              tmp_path=tmp_path)
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
  assert lines[0].startswith("error: --explode_scale=1e+30: simple_rnn_relu_exploding's "
                             "gradients at initialisation overflow float32")
  assert not any(tmp_path.iterdir())


def _tree_hash(directory):
  import hashlib
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.mark.slow  # trains three models and two clipping runs, three times: ~2 min
def test_runs_are_kept_and_resumed_like_every_experiments(tmp_path):
  """The same resume semantics as the other experiments (train.plan_runs): a second run is
  refused without --resume or --overwrite and changes nothing; --resume reuses the
  finished runs (the diverged one stays diverged) and writes the same story."""
  def gradients(*flags):
    return subprocess.run(
        [sys.executable, "-m", "experiments.gradients", "--seq_len=12", "--units=4",
         "--num_train=160", "--epochs=1", "--clipping_epochs=2", "--parts=profiles,clipping",
         f"--workdir={tmp_path}", *flags],
        cwd=runs.REPO, capture_output=True, text=True, timeout=900, env=runs.environment())
  first = gradients()
  assert first.returncode == 0, first.stderr[-2000:]
  story = json.loads((tmp_path / "gradients.json").read_text())
  runs_before = {d.name: _tree_hash(d) for d in tmp_path.iterdir() if d.is_dir()}
  refused = gradients()
  assert refused.returncode == 2
  assert [l for l in refused.stderr.splitlines() if l.strip()][-1].endswith(
      "pass --overwrite to replace it or choose another --workdir"), refused.stderr
  changed = gradients("--resume", "--units=8")
  assert changed.returncode == 2 and "--units=4 (now --units=8)" in changed.stderr
  resumed = gradients("--resume")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "finished earlier with the same flags" in resumed.stdout
  assert {d.name: _tree_hash(d) for d in tmp_path.iterdir() if d.is_dir()} == runs_before
  again = json.loads((tmp_path / "gradients.json").read_text())
  assert again["models"] == story["models"]
  assert again["clipping"]["clipped"] == story["clipping"]["clipped"]
