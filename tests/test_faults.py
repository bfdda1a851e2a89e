"""Reliability: killed, interrupted or corrupted runs resume to the same results."""
import json
import random
import signal
import subprocess

import pytest

import training_runs as runs

pytestmark = pytest.mark.e2e  # subprocess runs of the experiments: see pyproject.toml


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  done = runs.run(workdir)
  assert done.returncode == 0, done.stderr
  return workdir, runs.comparable(runs.results(workdir))


@pytest.mark.slow  # tens of seconds of subprocess runs: CI stays within 12 minutes
def test_kills_interrupt_and_corruption_resume_to_the_same_results(tmp_path, uninterrupted):
  workdir = tmp_path / "run"
  # SIGKILL while epoch 2's steps are in flight.
  killed = runs.run(workdir, kill_at="step:2:3")
  assert killed.returncode == -signal.SIGKILL
  # Resumes from epoch 1; SIGKILL inside the write of epoch 2's checkpoint.
  killed = runs.run(workdir, "--resume", kill_at="latest:2:0")
  assert killed.returncode == -signal.SIGKILL and "continuing from" in killed.stdout
  # Resumes from epoch 1 again; Ctrl-C in epoch 3 saves a mid-epoch checkpoint and stops.
  interrupted = runs.run(workdir, "--resume", kill_at="step:3:2", signal="INT")
  assert interrupted.returncode == 2
  error = interrupted.stderr.strip().splitlines()[-1]
  assert error.startswith("error: interrupted in epoch 3 at step 2; checkpoint saved")
  assert error.endswith("run again with --resume to continue")
  # Without --resume the unfinished run is refused.
  refused = runs.run(workdir)
  assert refused.returncode == 2 and "unfinished run" in refused.stderr
  # Damage the newest checkpoint: detected, reported in one line, the previous one used.
  latest = workdir / "gru" / "checkpoints" / "latest"
  newest = sorted(p for p in latest.iterdir() if p.is_dir())[-1]
  assert newest.name == "epoch000002-step000002"
  victim = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  victim.write_bytes(victim.read_bytes()[:-7])
  resumed = runs.run(workdir, "--resume")
  assert resumed.returncode == 0, resumed.stderr
  corrupt_lines = [l for l in resumed.stderr.splitlines() if "is corrupt" in l]
  assert len(corrupt_lines) == 1 and newest.name in corrupt_lines[0]
  assert "epoch000002-step000000" in resumed.stdout
  assert runs.comparable(runs.results(workdir)) == uninterrupted[1]


def test_finished_run_is_refused_and_untouched(uninterrupted):
  workdir, _ = uninterrupted
  before = (workdir / "gru" / "results.json").read_bytes()
  again = runs.run(workdir)
  assert again.returncode == 2
  assert again.stderr.strip().splitlines()[-1].startswith("error: ") and "finished run" in again.stderr
  assert (workdir / "gru" / "results.json").read_bytes() == before


def test_bad_flag_is_one_line_naming_it(tmp_path):
  bad = runs.run(tmp_path, "--epochs=0")
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines() == ["error: --epochs must be a positive integer, got 0"]
  assert not (tmp_path / "gru").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["step:1:1", "latest:1:0", "best:1", "epoch:1", "step:2:8",
                                     "latest:3:0", "best:3", "epoch:3", "results"])
def test_sigkill_at_each_point(tmp_path, uninterrupted, kill_at):
  workdir = tmp_path / "run"
  killed = runs.run(workdir, kill_at=kill_at)
  assert killed.returncode == -signal.SIGKILL
  resumed = runs.run(workdir, "--resume")
  assert resumed.returncode == 0, resumed.stderr
  assert runs.comparable(runs.results(workdir)) == uninterrupted[1]


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_sigkill_at_random_times(tmp_path, uninterrupted, seed):
  """Kill after a random delay, again and again, until a run gets to the end."""
  workdir, rng = tmp_path / "run", random.Random(seed)
  for attempt in range(20):
    flags = ["--resume"] if attempt else []
    process = subprocess.Popen(runs.command(workdir, *flags), cwd=runs.REPO,
                               env=runs.environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
      # Each attempt waits a second longer, so that a slow (loaded) machine still gets
      # past start-up and compilation and the run finishes in the end.
      process.wait(timeout=rng.uniform(3.0, 8.0) + attempt)
    except subprocess.TimeoutExpired:
      process.kill()
    _, stderr = process.communicate()
    if process.returncode == 0:
      break
    assert process.returncode == -signal.SIGKILL, stderr
  else:
    pytest.fail("never finished")
  assert runs.comparable(runs.results(workdir)) == uninterrupted[1]


# --------------------------------------------------------------- resumes of issue #13

def _tree_hash(directory):
  import hashlib
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_resume_with_changed_flags_is_refused_and_the_run_kept(tmp_path):
  """A changed --units (structure) and --optimizer: one line naming both, exit 2, every file
  of the interrupted run byte-identical; with the old flags it then resumes."""
  workdir = tmp_path / "run"
  killed = runs.run(workdir, kill_at="step:2:3")
  assert killed.returncode == -signal.SIGKILL
  before = _tree_hash(workdir)
  refused = runs.run(workdir, "--resume", "--units=8", "--optimizer=rmsprop")
  assert refused.returncode == 2, refused.stderr
  lines = [l for l in refused.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: --resume: "), refused.stderr
  assert "--units=4 (now --units=8)" in lines[0] and "--optimizer=adam (now" in lines[0]
  assert "--overwrite" in lines[0] and "corrupt" not in refused.stderr
  assert _tree_hash(workdir) == before
  fewer = runs.run(workdir, "--resume", "--epochs=0")  # a bad flag, still nothing touched
  assert fewer.returncode == 2 and _tree_hash(workdir) == before


def _forecast_csv(path):
  import numpy as np
  times = np.datetime64("2020-01-01T00:00") + np.arange(200).astype("timedelta64[h]")
  path.write_text("time,a,T\n" + "".join(f"{t},{i % 7},{np.sin(i / 5):.3f}\n"
                                         for i, t in enumerate(times)))
  return path


def _forecast(csv, workdir, *flags, kill_at=None, signal_name="KILL"):
  return subprocess.run(
      [*runs.python_m("experiments.jena_forecast", kill_at, signal_name), f"--data_path={csv}",
       "--target=T", "--time_column=time", "--lookback=12", "--step=2", "--delay=3",
       "--batch_size=8", "--epochs=2", "--steps_per_epoch=3", "--train_end=100",
       "--val_end=150", "--units=4", f"--workdir={workdir}", *flags],
      cwd=runs.REPO, capture_output=True, text=True, timeout=300, env=runs.environment())


@pytest.mark.slow  # tens of seconds of subprocess runs: CI stays within 12 minutes
def test_default_forecast_models_resume_after_ctrl_c_in_the_second(tmp_path):
  """--model=naive,gru (the default), Ctrl-C during gru: --resume keeps naive (finished, same
  flags), continues gru; dropping naive from --model on resume is fine as well."""
  csv = _forecast_csv(tmp_path / "series.csv")
  workdir = tmp_path / "run"
  interrupted = _forecast(csv, workdir, kill_at="step:2:1", signal_name="INT")
  assert interrupted.returncode == 2, interrupted.stderr
  assert "run again with --resume" in interrupted.stderr.strip().splitlines()[-1]
  naive = (workdir / "naive" / "results.json").read_bytes()
  only_gru = _forecast(csv, workdir, "--model=gru", "--resume", kill_at="epoch:2")
  assert only_gru.returncode == -signal.SIGKILL, only_gru.stderr  # killed after epoch 2
  resumed = _forecast(csv, workdir, "--model=naive,gru", "--resume")
  assert resumed.returncode == 0, resumed.stderr
  assert "naive: finished earlier with the same flags" in resumed.stdout
  assert (workdir / "naive" / "results.json").read_bytes() == naive
  gru = json.loads((workdir / "gru" / "results.json").read_text())
  assert [row["epoch"] for row in gru["history"]] == [1, 2]
  assert gru["flags"]["epochs"] == 2 and gru["flags"]["model"] == "gru"
  assert [r["epoch"] for r in gru["resumed"]] == [1, 2]
  finished = _tree_hash(workdir)
  again = _forecast(csv, workdir, "--resume")  # everything finished: reused, untouched
  assert again.returncode == 0, again.stderr
  assert {k: v for k, v in _tree_hash(workdir).items() if k.endswith(("json", "sha256"))} == {
      k: v for k, v in finished.items() if k.endswith(("json", "sha256"))}


# ------------------------------------------- resumes on #16's logs, every experiment alike

def _events(run_dir):
  """[(tag, step)] of every event file under run_dir/tensorboard (all sessions')."""
  import glob
  import struct
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  out = []
  for path in sorted(glob.glob(str(run_dir / "tensorboard" / "events.out.tfevents.*"))):
    data, at = open(path, "rb").read(), 0
    while at < len(data):
      (length,) = struct.unpack("<Q", data[at:at + 8])
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
      at += 12 + length + 4
      out += [(v.tag, event.step) for v in event.summary.value]
  return out


@pytest.mark.slow  # tens of seconds of subprocess runs: CI stays within 12 minutes
@pytest.mark.parametrize("kill_at", ["step:2:5", "epoch:3"])
def test_resume_logs_every_epoch_and_step_once(tmp_path, kill_at):
  """SIGKILL mid-epoch (step losses logged past the checkpoint) or after the last epoch's
  checkpoint but before its logs: after --resume, TensorBoard holds each epoch's scalars
  and each step's loss exactly once, and metrics.csv one row per epoch."""
  workdir = tmp_path / "run"
  killed = runs.run(workdir, "--log_every_steps=1", kill_at=kill_at)
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  resumed = runs.run(workdir, "--log_every_steps=1", "--resume")
  assert resumed.returncode == 0, resumed.stderr
  events = _events(workdir / "gru")
  assert len(events) == len(set(events)), "a scalar logged twice"
  assert sorted(step for tag, step in events if tag == "epoch/loss") == [1, 2, 3]
  steps = sorted(step for tag, step in events if tag == "step/loss")
  assert steps == list(range(steps[0], steps[-1] + 1)) and steps[-1] == 24  # 3 x 8 steps
  rows = (workdir / "gru" / "metrics.csv").read_text().splitlines()
  assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3"]
  assert len(list((workdir / "gru" / "tensorboard").glob("events.out.tfevents.*"))) <= 2


@pytest.mark.slow  # tens of seconds of subprocess runs: CI stays within 12 minutes
def test_multi_model_adding_problem_resumes_as_a_whole(tmp_path):
  """--model=gru,lstm killed during lstm; a resume keeps gru byte for byte and continues
  lstm; --model=lstm alone resumes it too; gru,gru is refused before anything trains."""
  workdir = tmp_path / "run"
  flags = ["--model=gru,lstm", "--epochs=2"]
  # Kill points name no model: gru is trained first on its own, then the pair is resumed
  # and killed in lstm's second epoch (gru reused: it trains no step).
  assert runs.run(workdir, "--model=gru", "--epochs=2").returncode == 0
  killed = runs.run(workdir, *flags, "--resume", kill_at="step:2:3")
  assert killed.returncode == -signal.SIGKILL
  assert (workdir / "gru" / "results.json").exists()
  assert not (workdir / "lstm" / "results.json").exists()
  gru = _tree_hash(workdir / "gru")
  twice = runs.run(workdir, "--model=lstm,lstm", "--epochs=2", "--resume")
  assert twice.returncode == 2 and "'lstm' is listed twice" in twice.stderr
  only = runs.run(workdir, "--model=lstm", "--epochs=2", "--resume")  # gru dropped: fine
  assert only.returncode == 0 and "continuing from" in only.stdout, only.stderr
  lstm_files = _tree_hash(workdir / "lstm")
  resumed = runs.run(workdir, *flags, "--resume")  # both finished: reused, untouched
  assert resumed.returncode == 0, resumed.stderr
  assert "gru: finished earlier with the same flags" in resumed.stdout
  assert "lstm: finished earlier with the same flags" in resumed.stdout
  assert _tree_hash(workdir / "gru") == gru and _tree_hash(workdir / "lstm") == lstm_files
  lstm = json.loads((workdir / "lstm" / "results.json").read_text())
  assert [row["epoch"] for row in lstm["history"]] == [1, 2]
  assert lstm["flags"]["model"] == "lstm" and lstm["config"]["epochs"] == 2


@pytest.mark.slow  # tens of seconds of subprocess runs: CI stays within 12 minutes
def test_finished_run_with_other_epochs_is_refused_and_kept(tmp_path):
  """results.json never misdescribes a run: a finished run is not re-labelled by a resume
  with other --epochs, and a checkpoint of more epochs than --epochs is refused."""
  workdir = tmp_path / "run"
  assert runs.run(workdir).returncode == 0  # --epochs=3
  before = _tree_hash(workdir)
  for epochs in ("2", "4"):
    refused = runs.run(workdir, "--resume", f"--epochs={epochs}")
    assert refused.returncode == 2, refused.stderr
    lines = [l for l in refused.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "finished with --epochs=3" in lines[0], refused.stderr
  assert _tree_hash(workdir) == before
  killed_dir = tmp_path / "killed"
  assert runs.run(killed_dir, kill_at="epoch:3").returncode == -signal.SIGKILL
  before = _tree_hash(killed_dir)
  fewer = runs.run(killed_dir, "--resume", "--epochs=2")
  assert fewer.returncode == 2 and "has trained 3 epochs already" in fewer.stderr
  assert _tree_hash(killed_dir) == before
  done = runs.run(killed_dir, "--resume")
  assert done.returncode == 0
  results = runs.results(killed_dir)
  assert results["flags"]["epochs"] == 3 == len(results["history"])


@pytest.mark.slow  # tens of seconds of subprocess runs: CI stays within 12 minutes
def test_ctrl_c_while_starting_exits_130_with_one_line(tmp_path):
  """SIGINT at any point before training (imports, flags, reading data) is one line, 130."""
  import time
  for delay in (0.3, 1.5):
    proc = subprocess.Popen(runs.command(tmp_path / f"run{delay}"), cwd=runs.REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=runs.environment())
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if "compiled the train step" in out or "interrupted in epoch" in err:
      continue  # it was training already: the first Ctrl-C saves a checkpoint (above)
    assert proc.returncode == 130, (delay, err)
    lines = [l for l in err.splitlines() if l.strip()]
    assert lines == ["error: interrupted (Ctrl-C)"], (delay, err)
    assert "Traceback" not in err


@pytest.mark.slow  # tens of seconds of subprocess runs: CI stays within 12 minutes
def test_ctrl_c_while_tokenizing_imdb_exits_130_and_leaves_nothing(tmp_path):
  """SIGINT during IMDB's tokenization (before any training): one line, exit 130, no
  workdir and no partial cache file. (Once in four runs under xdist on 2026-12-01 the
  child ignored the signal and finished with exit 0; the cause is not found yet.)"""
  from test_imdb import make_archive  # pylint: disable=import-outside-toplevel
  archive = make_archive(tmp_path / "aclImdb_v1.tar.gz")
  cache = tmp_path / "cache"
  done = subprocess.run(
      [*runs.python_m("experiments.imdb_sentiment", "tokenize", "INT"),
       f"--data_path={archive}", "--model=lstm,gru", "--maxlen=20", "--max_features=30",
       "--units=4", "--embedding_dim=4", "--batch_size=8", "--epochs=1",
       f"--workdir={tmp_path / 'run'}"],
      cwd=runs.REPO, capture_output=True, text=True, timeout=300,
      env=runs.environment(RNN_JAX_DATA_CACHE=str(cache)))
  assert done.returncode == 130, done.stderr
  assert [l for l in done.stderr.splitlines() if l.strip()] == ["error: interrupted (Ctrl-C)"]
  assert not (tmp_path / "run").exists()
  assert not [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else True
