"""Scale-out: every experiment on 4 forced host devices, and two processes on loopback,
give the history of one device in one process (within 1e-5 relative, float32)."""
import json
import math
import os
import socket
import subprocess
import sys

import pytest

import training_runs as runs
from test_imdb import REVIEWS, make_archive
from test_jena_forecast import jena_csv

pytestmark = pytest.mark.e2e  # subprocess runs of the experiments: see pyproject.toml

FOUR_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}


def _run(module, *flags, **env):
  return subprocess.run([sys.executable, "-m", module, *flags], cwd=runs.REPO,
                        capture_output=True, text=True, timeout=300,
                        env=runs.environment(**env))


def _assert_same_history(results, reference, rel=1e-5):
  assert len(results["history"]) == len(reference["history"]) > 0
  for row, row_1 in zip(results["history"], reference["history"]):
    assert row.keys() == row_1.keys()
    for key in row_1.keys() - set(runs.TIMINGS):
      assert math.isclose(row[key], row_1[key], rel_tol=rel), (key, row[key], row_1[key])
  as_list = lambda best: best if isinstance(best, list) else [best]  # a replica's: an int
  assert as_list(results["best_epoch"]) == as_list(reference["best_epoch"])
  for part in ("val", "test"):
    for key, value in reference[part].items():
      assert math.isclose(results[part][key], value, rel_tol=rel), (part, key)


def _imdb_flags(tmp_path):
  reviews = {key: [f"{text} number {i}" for i in range(8) for text in texts]
             for key, texts in REVIEWS.items()}
  archive = make_archive(tmp_path / "aclImdb_v1.tar.gz", reviews)
  return ["experiments.imdb_sentiment", f"--data_path={archive}", "--model=lstm",
          "--recurrent_dropout=0.2", "--maxlen=20", "--max_features=30", "--units=4",
          "--embedding_dim=4", "--batch_size=8", "--epochs=2"], "{workdir}/lstm"


def _jena_flags(tmp_path):
  data = jena_csv(tmp_path / "jena_climate_2009_2016.csv")
  return ["experiments.jena_forecast", "--model=gru_dropout", f"--data_path={data}",
          "--lookback=12", "--step=2", "--delay=3", "--batch_size=8", "--steps_per_epoch=3",
          "--validation_steps=2", "--epochs=2", "--units=4", "--train_end=300",
          "--val_end=450"], "{workdir}/gru_dropout"


@pytest.mark.slow  # two experiments twice each: ~75 s (the seeds and processes tests stay)
@pytest.mark.parametrize("flags", [_imdb_flags, _jena_flags], ids=["imdb", "jena"])
def test_experiment_on_four_devices_equals_one(tmp_path, flags):
  (module, *args), results_dir = flags(tmp_path)
  found = {}
  for name, extra, env in [("one", [], {}), ("four", ["--num_devices=4"], FOUR_DEVICES)]:
    workdir = tmp_path / name
    done = _run(module, *args, f"--workdir={workdir}", *extra,
                RNN_JAX_DATA_CACHE=str(tmp_path / "cache"), **env)
    assert done.returncode == 0, done.stderr[-3000:]
    found[name] = json.loads(
        (tmp_path / results_dir.format(workdir=workdir) / "results.json").read_text())
  assert found["four"]["flags"]["num_devices"] == 4
  _assert_same_history(found["four"], found["one"])


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(workdir, *flags):
  """The tiny adding-problem run as two processes on 127.0.0.1, one CPU device each."""
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(
      runs.command(workdir, f"--coordinator_address={address}", "--num_processes=2",
                   f"--process_id={p}", *flags), cwd=runs.REPO, env=runs.environment(),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in range(2)]
  outputs = [proc.communicate(timeout=300) for proc in procs]
  for proc, (_, stderr) in zip(procs, outputs):
    assert proc.returncode == 0, stderr[-3000:]
  return [stdout for stdout, _ in outputs]


@pytest.mark.slow  # tens of seconds of subprocess runs: CI stays within 12 minutes
def test_two_processes_equal_one_and_resume(tmp_path):
  single = tmp_path / "single"
  assert runs.run(single).returncode == 0
  reference = runs.results(single)

  both = tmp_path / "both"
  stdout = _two_processes(both, "--epochs=2")
  assert "Epoch 2/3" not in stdout[0] and "Epoch 2/2" in stdout[0]
  assert "Epoch" not in stdout[1]  # process 0 alone reports and writes
  (both / "gru" / "results.json").unlink()  # as if killed after epoch 2
  stdout = _two_processes(both, "--resume")  # both restore orbax's checkpoint, train epoch 3
  assert "continuing from checkpoint" in stdout[0] and "Epoch 3/3" in stdout[0]
  results = runs.results(both)
  assert results["flags"]["num_processes"] == 2
  _assert_same_history(results, reference)
  assert not list((both / "gru").glob(".*.tmp-*"))


@pytest.mark.slow  # ~40 s: a third combination of the above
def test_two_processes_with_many_seeds(tmp_path):
  _two_processes(tmp_path / "both", "--num_seeds=2", "--epochs=2")
  results = runs.results(tmp_path / "both")
  for seed, replica in zip((0, 1), results["replicas"]):
    alone = tmp_path / f"seed{seed}"
    assert runs.run(alone, f"--seed={seed}", "--data_seed=0", "--epochs=2").returncode == 0
    _assert_same_history(replica, runs.results(alone))


@pytest.mark.parametrize("flags, message", [
    (["--num_processes=2"], "--num_processes=2 needs --coordinator_address=host:port"),
    (["--num_processes=2", "--coordinator_address=127.0.0.1:1", "--process_id=2"],
     r"--process_id must be in \[0, 2\)"),
    (["--num_processes=0"], "--num_processes must be a positive integer, got 0"),
])
def test_bad_process_flags_are_one_line(tmp_path, flags, message):
  import re
  done = runs.run(tmp_path, *flags)
  assert done.returncode == 2
  assert re.match("error: " + message, done.stderr.strip().splitlines()[-1])
  assert not (tmp_path / "gru").exists()


@pytest.mark.slow  # tens of seconds of subprocess runs: CI stays within 12 minutes
def test_seeds_spread_over_devices_equal_one_device(tmp_path):
  """--num_seeds=2 on 4 devices (2 along 'seed' x 2 along 'data') equals both replicas
  vmapped on one device."""
  (module, *args), results_dir = _jena_flags(tmp_path)
  found = {}
  for name, devices in [("one", 1), ("four", 4)]:
    workdir = tmp_path / name
    done = _run(module, *args, f"--workdir={workdir}", "--num_seeds=2",
                f"--num_devices={devices}", RNN_JAX_DATA_CACHE=str(tmp_path / "cache"),
                **FOUR_DEVICES)
    assert done.returncode == 0, done.stderr[-3000:]
    found[name] = json.loads(
        (tmp_path / results_dir.format(workdir=workdir) / "results.json").read_text())
  for replica, replica_1 in zip(found["four"]["replicas"], found["one"]["replicas"],
                                strict=True):
    _assert_same_history(replica, replica_1)


@pytest.mark.parametrize("num_seeds, batch_size, cores, devices", [
    (1, 128, 8, 8), (1, 128, 2, 2), (1, 5, 2, 1), (1, 6, 4, 3), (4, 2, 2, 2), (3, 7, 2, 1),
    (6, 4, 4, 4), (6, 1, 4, 3), (8, 1, 16, 8), (5, 128, 1, 1)])
def test_cpu_device_count_fits_the_mesh(num_seeds, batch_size, cores, devices):
  from rnn_jax import train  # pylint: disable=import-outside-toplevel
  assert train.cpu_device_count(num_seeds, batch_size, cores) == devices


def test_one_cpu_device_per_core():
  """`train.cpu_devices_per_core` splits the CPU (before JAX computes); XLA_FLAGS' device
  count, when given, wins."""
  code = ("import jax; from rnn_jax import train; made = train.cpu_devices_per_core(1, 32); "
          "print(made, len(jax.devices()))")
  done = subprocess.run([sys.executable, "-c", code], cwd=runs.REPO, capture_output=True,
                        text=True, timeout=120, env=runs.environment())
  from rnn_jax import train  # pylint: disable=import-outside-toplevel
  devices = train.cpu_device_count(1, 32, min(os.cpu_count() or 1, train.MAX_CPU_DEVICES))
  assert done.stdout.split() == ([str(devices)] * 2 if devices > 1 else ["0", "1"]), done.stderr
  done = subprocess.run([sys.executable, "-c", code], cwd=runs.REPO, capture_output=True,
                        text=True, timeout=120, env=runs.environment(**FOUR_DEVICES))
  assert done.stdout.split() == ["0", "4"], done.stderr


_NO_COLLECTIVES = """
import jax, numpy as np
from rnn_jax import layers, train
from rnn_jax.train import optim
placement = train.Placement.make(None, 8)
assert placement.adds_by_copies and placement.mesh.shape["data"] == 2
model = layers.Sequential([layers.GRU(4, recurrent_dropout=0.2), layers.Dense(1)])
optimizer = optim.make("rmsprop", 1e-3)
step = train.make_train_step(model, optimizer, "mae", ("mae",), placement)
eval_step = train.make_eval_step(model.apply, "mae", ("mae",), placement)
x, y, w = np.ones((8, 5, 3), np.float32), np.ones((8, 1), np.float32), np.ones(8, np.float32)
state = train.init_state(train.init_params(model, [x], [0]), optimizer, placement, [0], "mae",
                         ("mae",))
epoch = jax.device_put(np.int32(1), placement.replicated)
batch = jax.device_put((x, y, w), placement.batches)
make_parts, add_and_update = step.programs
own = make_parts(state.params, state.totals, state.seeds, epoch, *batch)
texts = [make_parts.lower(state.params, state.totals, state.seeds, epoch, *batch).compile().as_text(),
         add_and_update.lower(state, own, own).compile().as_text()]
for _ in range(300):  # dispatched ahead, as fit does
  state = step(state, epoch, *batch)
print(int(state.totals["steps"]), sum(t.count("all-reduce") + t.count("all-gather") for t in texts))
print(train.run_eval(eval_step, state.params, [(x, y, w)] * 3, "mae", ("mae",), placement))
"""


def test_cpu_devices_add_gradients_without_collectives():
  """On several CPU devices of one process the train step's programs hold no XLA
  collective (an all-reduce there deadlocked: Placement.adds_by_copies), and 300
  steps dispatched ahead complete; eval adds per-device totals on the host."""
  done = subprocess.run([sys.executable, "-c", _NO_COLLECTIVES], cwd=runs.REPO,
                        capture_output=True, text=True, timeout=240,
                        env=runs.environment(XLA_FLAGS="--xla_force_host_platform_device_count=2"))
  assert done.returncode == 0, done.stderr[-3000:]
  steps, collectives = done.stdout.split("\n")[0].split()
  assert (steps, collectives) == ("300", "0")
  assert "'loss'" in done.stdout.split("\n")[1]
