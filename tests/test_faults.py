"""Reliability: killed, interrupted or corrupted runs resume to the same results."""
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
