"""Reliability, in process: a resume never destroys a run, results never misdescribe one,
write failures are one-line errors, the layer API speaks the user's terms (issue #13).

The end-to-end cases (flags, CSVs, summarize, the workdir) are rows of
tests/test_bad_inputs.py; the multi-model resumes of the experiments are in
tests/test_faults.py.
"""
import dataclasses
import errno
import hashlib
import json
import os
import stat
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import command, train_flags
from helpers import sum_batches
from rnn_jax import layers, train
from rnn_jax.io import checkpoints, files
from rnn_jax.analysis import plots
from rnn_jax.data import imdb, timeseries
from rnn_jax.data.batches import ArrayBatches
from rnn_jax.errors import UserError
from rnn_jax.train import rundir, runs


def tree_hash(directory: Path) -> dict:
  """relative path -> sha256 of every file below `directory` (what must not change)."""
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(Path(directory).rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------ fit and resume

def _flags(**changed):
  return {"seed": 0, "units": 4, "optimizer": "adam", "learning_rate": 1e-2, "epochs": 2,
          "resume": False, "overwrite": False, "workdir": None, **changed}


def _options(workdir, units=4, epochs=2, resume=False, **flag_changes):
  flags = _flags(units=units, epochs=epochs, resume=resume, workdir=str(workdir), **flag_changes)
  return train.TrainOptions(experiment="test", model_name="gru", workdir=str(workdir),
                            epochs=epochs, optimizer="adam", learning_rate=1e-2,
                            resume=resume, flags=flags)


def _model(units):
  return layers.Sequential([layers.GRU(units), layers.Dense(1)])


def _data():
  return sum_batches(64, 16)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
  """An unfinished run: 2 epochs of GRU(4) trained, results.json not yet written."""
  workdir = tmp_path_factory.mktemp("interrupted") / "gru"
  train.fit(_model(4), _data(), loss="mse", options=_options(workdir))
  (workdir / "results.json").unlink()
  return workdir


def _copy(src: Path, dst: Path) -> Path:
  import shutil
  shutil.copytree(src, dst)
  return dst


def test_resume_with_changed_flags_is_refused_naming_each_and_keeps_the_run(
    interrupted, tmp_path, capsys):
  workdir = _copy(interrupted, tmp_path / "gru")
  before = tree_hash(workdir)
  options = _options(workdir, units=8, resume=True, optimizer="rmsprop")
  with pytest.raises(UserError) as error:
    train.fit(_model(8), _data(), loss="mse", options=options)
  message = str(error.value)
  assert "\n" not in message
  assert "--units=4 (now --units=8)" in message
  assert "--optimizer=adam (now --optimizer=rmsprop)" in message
  assert "--overwrite" in message and "resume with --optimizer=adam --units=4" in message
  assert "corrupt" not in message + capsys.readouterr().err
  assert tree_hash(workdir) == before


def test_resume_with_fewer_epochs_than_trained_is_refused(interrupted, tmp_path):
  workdir = _copy(interrupted, tmp_path / "gru")
  before = tree_hash(workdir)
  with pytest.raises(UserError, match=r"has trained 2 epochs already, more than --epochs=1"):
    train.fit(_model(4), _data(), loss="mse", options=_options(workdir, epochs=1, resume=True))
  assert tree_hash(workdir) == before


def test_resume_with_more_epochs_records_the_resume(interrupted, tmp_path):
  workdir = _copy(interrupted, tmp_path / "gru")
  results = train.fit(_model(4), _data(), loss="mse",
                      options=_options(workdir, epochs=3, resume=True)).results
  assert [row["epoch"] for row in results["history"]] == [1, 2, 3]
  assert results["flags"]["epochs"] == 3
  assert results["resumed"] == [{"epoch": 2, "step": 0, "changed": {"epochs": 3}}]


def test_intact_checkpoint_of_another_structure_is_a_mismatch_not_corrupt(tmp_path):
  checkpoints.save(tmp_path, "epoch000001", {"w": jnp.ones((3, 2))}, {"epoch": 1})
  before = tree_hash(tmp_path)
  reports = []
  with pytest.raises(checkpoints.Mismatch, match="intact but does not fit"):
    checkpoints.restore(tmp_path, {"w": jnp.ones((4, 2)), "b": jnp.ones(2)},
                        report=reports.append)
  assert reports == [] and tree_hash(tmp_path) == before


def test_read_meta_reads_no_array(tmp_path, monkeypatch):
  checkpoints.save(tmp_path, "epoch000001", {"w": jnp.ones(3)}, {"epoch": 1, "config": {"a": 1}})
  monkeypatch.setattr(ocp.Checkpointer, "restore",
                      lambda *a, **k: pytest.fail("read_meta must not restore arrays"))
  assert checkpoints.read_meta(tmp_path) == ("epoch000001", {"epoch": 1, "config": {"a": 1}})


# -------------------------------------------------------------------- multi-model plans

def _finished(workdir: Path, **flag_changes):
  workdir.mkdir(parents=True)
  trained = {} if workdir.name == "naive" else {"history": [{"epoch": 1}]}  # naive: no epochs
  (workdir / "results.json").write_text(json.dumps({"model": workdir.name, **trained,
                                                    "flags": _flags(model=workdir.name,
                                                                    **flag_changes)}))


def _unfinished(workdir: Path, epoch=1, **flag_changes):
  checkpoints.save(workdir / "checkpoints" / "latest", f"epoch{epoch:06d}-step000000",
                   {"w": jnp.ones(2)}, {"epoch": epoch, "step": 0,
                                        "config": rundir.config_of(_flags(model=workdir.name,
                                                                          **flag_changes))})


def _plan(root, names, **changes):
  options = {n: _options(root / n, resume=True, **changes) for n in names}
  options = {n: o.__class__(**{**o.__dict__, "flags": {**o.flags, "model": names}})
             for n, o in options.items()}
  return runs.plan(options, list_flag="model")


def test_plan_resumes_a_multi_model_run_as_a_whole(tmp_path):
  _finished(tmp_path / "naive")
  _unfinished(tmp_path / "gru")
  planned = _plan(tmp_path, ["naive", "gru", "lstm"])
  assert [r.status for r in planned] == ["finished", "resume", "start"]
  assert planned[0].results["model"] == "naive"
  assert all(r.options.flags["model"] == r.name for r in planned)  # its own, not the list
  # A finished model dropped from the list is left alone.
  assert [r.status for r in _plan(tmp_path, ["gru"])] == ["resume"]


def test_plan_refuses_a_finished_model_of_other_flags(tmp_path):
  _finished(tmp_path / "gru", units=8)
  with pytest.raises(UserError, match=r"finished with other flags: --units=8 \(now --units=4\)"):
    _plan(tmp_path, ["gru"])


def test_plan_refuses_a_finished_model_of_other_epochs(tmp_path):
  _finished(tmp_path / "gru", epochs=3)
  with pytest.raises(UserError, match=r"finished with --epochs=3, not 2"):
    _plan(tmp_path, ["gru"])


def test_plan_refuses_an_interrupted_model_of_other_flags_before_any_trains(tmp_path):
  _finished(tmp_path / "naive")
  _unfinished(tmp_path / "gru", units=8)
  before = tree_hash(tmp_path)
  with pytest.raises(UserError, match=r"was trained with other flags: --units=8"):
    _plan(tmp_path, ["naive", "gru"])
  assert tree_hash(tmp_path) == before


@pytest.mark.parametrize("names, pattern", [
    ([], r"--model: give at least one model"),
    (["gru", "gru"], r"--model=gru,gru: 'gru' is listed twice"),
    (["gru", "cnn"], r"--model: unknown \['cnn'\]"),
])
def test_model_lists_are_checked(names, pattern):
  with pytest.raises(UserError, match=pattern):
    runs.check_names(names, ["naive", "gru"], "model")


def test_workdir_name_too_long_is_one_line(tmp_path):
  with pytest.raises(UserError, match="file name too long"):
    runs.check_workdir(tmp_path / ("x" * 300))


# ----------------------------------------------------------------------- write failures

def _enospc(*args, **kwargs):
  raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_at_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
  checkpoints.save(tmp_path, "epoch000001", {"w": jnp.ones(3)}, {"epoch": 1})
  before = tree_hash(tmp_path)

  def full(self, path, *args, **kwargs):  # what orbax raises when tensorstore runs out
    Path(str(path) + ".orbax-checkpoint-tmp-123").mkdir()
    raise ValueError("RESOURCE_EXHAUSTED: Error writing local file: No space left on device")
  monkeypatch.setattr(ocp.Checkpointer, "save", full)
  with pytest.raises(UserError, match=r"cannot write \S*epoch000002: no space left on device"):
    checkpoints.save(tmp_path, "epoch000002", {"w": jnp.ones(3)}, {"epoch": 2})
  assert tree_hash(tmp_path) == before
  assert sorted(os.listdir(tmp_path)) == ["epoch000001", "epoch000001.sha256"]


def test_full_disk_at_the_commit_marker_keeps_the_previous_one(tmp_path, monkeypatch):
  checkpoints.save(tmp_path, "epoch000001", {"w": jnp.ones(3)}, {"epoch": 1})
  monkeypatch.setattr(files.os, "fsync", _enospc)
  with pytest.raises(UserError, match="no space left on device"):
    checkpoints.save(tmp_path, "epoch000002", {"w": jnp.ones(3)}, {"epoch": 2})
  assert sorted(os.listdir(tmp_path)) == ["epoch000001", "epoch000001.sha256"]


def test_full_disk_at_a_plot_leaves_no_temporary_file(tmp_path, monkeypatch):
  import matplotlib.figure

  def full(self, path, **kwargs):
    Path(path).write_bytes(b"\x89PNG half")
    _enospc()
  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
  with pytest.raises(UserError, match=r"cannot write \S*history\.png: no space left on device"):
    plots.history([{"epoch": 1, "loss": 1.0, "val_loss": 1.0}], tmp_path / "history.png")
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("code, cause", [(errno.EROFS, "read-only file system"),
                                         (errno.ENAMETOOLONG, "file name too long"),
                                         (errno.ENOSPC, "no space left on device")])
def test_results_and_summary_write_errors_are_one_line(tmp_path, monkeypatch, code, cause):
  (tmp_path / "results.json").write_text("old")

  def refuse(*args, **kwargs):
    raise OSError(code, os.strerror(code))
  monkeypatch.setattr(files.os, "replace", refuse)
  with pytest.raises(UserError, match=rf"cannot write \S*results\.json: {cause}$"):
    train.write_results(tmp_path, {"model": "gru"})
  assert os.listdir(tmp_path) == ["results.json"]
  assert (tmp_path / "results.json").read_text() == "old"


def test_full_disk_at_tensorboard_or_metrics_csv_is_one_line(tmp_path, monkeypatch):
  """#16's writers go through rnn_jax.io.files too: no traceback from a writer thread, no
  temporary file, the previous metrics.csv kept."""
  from rnn_jax.train import logs
  run_logs = logs.RunLogs(tmp_path, [0], fresh=True)
  row = {"epoch": 1, "loss": 1.0, "val_loss": 2.0}
  run_logs.epoch(1, [row], [[row]])
  before = (tmp_path / "metrics.csv").read_bytes()
  monkeypatch.setattr(files.os, "replace", _enospc)
  with pytest.raises(UserError, match=r"cannot write \S*metrics\.csv: no space left on device$"):
    run_logs.write_csv([[row, {**row, "epoch": 2}]])
  assert (tmp_path / "metrics.csv").read_bytes() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "tensorboard"]
  monkeypatch.undo()
  monkeypatch.setattr(logs.os, "fsync", _enospc)
  with pytest.raises(UserError, match=r"cannot write \S*events\.out\.tfevents\.\S*: no space"):
    run_logs.epoch(2, [{**row, "epoch": 2}], [[row, {**row, "epoch": 2}]])
  run_logs.close_quietly()


def test_plots_in_every_format_go_through_the_helper(tmp_path, monkeypatch):
  """PNG and its SVG twin (and a PDF through files.save_figure): a failure on the SVG is one
  line naming it, with no temporary file left."""
  import matplotlib.figure
  import matplotlib.pyplot as plt
  fig = plt.figure()
  files.save_figure(fig, tmp_path / "figure.pdf")
  assert (tmp_path / "figure.pdf").read_bytes().startswith(b"%PDF")
  real = matplotlib.figure.Figure.savefig

  def svg_full(self, path, **kwargs):
    if str(path).endswith(".svg"):
      Path(path).write_bytes(b"<svg half")
      _enospc()
    return real(self, path, **kwargs)
  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", svg_full)
  with pytest.raises(UserError, match=r"cannot write \S*history\.svg: no space left on device"):
    plots.history([{"epoch": 1, "loss": 1.0, "val_loss": 1.0}], tmp_path / "history.png")
  assert sorted(os.listdir(tmp_path)) == ["figure.pdf", "history.png"]


def test_downloads_and_extracted_files_follow_the_umask(tmp_path):
  old = os.umask(0o022)
  try:
    fd, name = files.private_temp(tmp_path / "jena.csv")
    os.close(fd)
    assert stat.S_IMODE(os.stat(name).st_mode) == 0o644
  finally:
    os.umask(old)


def test_read_only_lock_is_one_line(tmp_path, monkeypatch):
  def read_only(*args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system")
  monkeypatch.setattr(rundir, "open", read_only, raising=False)
  with pytest.raises(UserError, match=r"cannot write \S*\.lock: read-only file system"):
    rundir.lock(tmp_path)


# ------------------------------------------------------------------------------- inputs

@pytest.mark.parametrize("seed, ok", [(-1, False), (3_000_000_000, False), (0, True),
                                      (2**31 - 1, True)])
def test_seed_range(seed, ok):
  values = {"epochs": 1, "batch_size": 1, "steps_per_epoch": None, "validation_steps": None,
            "num_devices": None, "num_seeds": 1, "num_processes": 1, "validation_split": 0.0,
            "learning_rate": 1e-3, "clip_norm": None, "seed": seed}
  if ok:
    train_flags.check_values(values)
  else:
    with pytest.raises(UserError, match=r"--seed must be in \[0, 2147483647\]"):
      train_flags.check_values(values)


def test_ctrl_c_before_training_is_one_line_exit_130(capsys):
  def main(argv):
    raise KeyboardInterrupt
  with pytest.raises(SystemExit) as exit_:
    command._guarded(main)([])  # pylint: disable=protected-access
  assert exit_.value.code == 130
  assert capsys.readouterr().err.strip().splitlines() == ["error: interrupted (Ctrl-C)"]


def test_imdb_token_cache_follows_the_umask(tmp_path):
  ranked = imdb.Ranked([np.array([1, 2])], np.array([1]), [np.array([3])], np.array([0]),
                       ("a", "b", "c"))
  old = os.umask(0o022)
  try:
    imdb._save_ranked(tmp_path / "ranks.npz", ranked)  # pylint: disable=protected-access
  finally:
    os.umask(old)
  assert stat.S_IMODE((tmp_path / "ranks.npz").stat().st_mode) == 0o644


def _csv(tmp_path, name, lines):
  path = tmp_path / name
  path.write_text("\n".join(lines) + "\n")
  return path


_TIMES = [f"2020-01-01 {h:02d}:00:00" for h in range(24)]


def test_csv_trailing_empty_column_is_dropped(tmp_path):
  path = _csv(tmp_path, "trailing.csv", ["time,a,T,"] + [f"{t},{i},{i % 5}.5," for i, t in
                                                         enumerate(_TIMES)])
  series = timeseries.read_csv(path, timeseries.CsvSpec(target="T", time_column="time",
                                                        fill_missing="interpolate"))
  assert series.columns == ("a", "T") and series.values[3].tolist() == [3.0, 3.5]


def test_csv_semicolons_with_decimal_commas(tmp_path):
  path = _csv(tmp_path, "semi.csv", ["time;a;T"] + [f"{t};{i},25;{i % 5},5" for i, t in
                                                     enumerate(_TIMES)])
  series = timeseries.read_csv(path, timeseries.CsvSpec(target="T", time_column="time",
                                                        separator=";", decimal=","))
  assert series.columns == ("a", "T") and series.values[3].tolist() == [3.25, 3.5]
  with pytest.raises(UserError, match=r"looks ';'-separated: pass --csv_separator=';', and "
                                      r"--decimal=','"):
    timeseries.read_csv(path, timeseries.CsvSpec(target="T", time_column="time"))
  with pytest.raises(UserError, match=r"column 'T': not a number: '0,5' \(a decimal comma\? pass "
                                      r"--decimal=','\)"):
    timeseries.read_csv(path, timeseries.CsvSpec(target="T", time_column="time", separator=";"))


def test_csv_column_that_overflows_normalization_is_named():
  values = np.stack([np.arange(10.0), np.where(np.arange(10) % 2, 1e300, -1e300)], axis=1)
  with pytest.raises(UserError, match=r"column 'huge': values up to 1e\+300 are too large"):
    timeseries.Normalization.fit(values, ("a", "huge"))
  norm = timeseries.Normalization.fit(values[:4] * 1e-290, ("a", "huge"))
  with pytest.raises(UserError, match=r"column 'huge'.*overflow float32"):
    norm.check(values, ("a", "huge"))


# -------------------------------------------------------------------------- layer API

KEY = jax.random.key(0)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bfloat16, jnp.float16])
def test_integer_and_low_precision_inputs_are_cast(dtype):
  gru = layers.GRU(4)
  params, _ = gru.init(KEY, (5, 3))
  x = jnp.arange(30).reshape(2, 5, 3) % 3
  y, _ = gru.apply(params, x.astype(dtype))
  expected, _ = gru.apply(params, x.astype(dtype).astype(jnp.float32))
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, expected, rtol=1e-6)


@pytest.mark.parametrize("call, pattern", [
    (lambda g, p: g.apply(p, jnp.ones((5, 3))),
     r"GRU\(4\): expects inputs \[batch, time, features\], got shape \(5, 3\)"),
    (lambda g, p: g.init(KEY, (3,)), r"GRU\(4\): expects inputs \[batch, time, features\]"),
    (lambda g, p: g.apply(p, jnp.ones((2, 5, 3)), jnp.ones((2, 4), bool)),
     r"GRU\(4\): the mask must be \[batch, time\] = \(2, 5\).*got shape \(2, 4\)"),
    (lambda g, p: g.apply(layers.LSTM(4).init(KEY, (5, 3))[0], jnp.ones((2, 5, 3))),
     r"GRU\(4\) on 3 input features: params .* has shape .*params of another cell or size"),
    (lambda g, p: layers.GRU(0), r"GRU\(0\): units must be a positive integer, got 0"),
    (lambda g, p: layers.LSTM(4, dropout=1.0), r"LSTM\(4\): dropout must be in \[0, 1\)"),
], ids=["2d_input", "2d_init", "mask_shape", "lstm_params", "zero_units", "dropout_1"])
def test_layer_errors_in_the_users_terms(call, pattern):
  gru = layers.GRU(4)
  params, _ = gru.init(KEY, (5, 3))
  with pytest.raises(ValueError, match=pattern):
    call(gru, params)


# ------------------------------------------ issue 26: the objects check their own values

@pytest.mark.parametrize("changes, pattern", [
    ({"early_stopping_patience": 0}, r"early_stopping_patience must be a positive integer, got 0"),
    ({"early_stopping_patience": -1},
     r"early_stopping_patience must be a positive integer, got -1"),
    ({"epochs": 0}, r"epochs must be a positive integer, got 0"),
    ({"lr_schedule": "exponential", "lr_decay_rate": -0.5},
     r"lr_decay_rate must be in \(0, 1\], got -0\.5"),
    ({"learning_rate": -1e-3}, r"learning_rate must be positive, got -0\.001"),
    ({"learning_rate": float("nan")}, r"learning_rate must be positive, got nan"),
    ({"seed": -1}, r"seed must be in \[0, 2147483647\], got -1"),
    ({"warmup_steps": -5}, r"warmup_steps must be at least 0, got -5"),
    ({"optimizer": "sgdm"}, r"optimizer must be one of rmsprop, adam, sgd, got 'sgdm'"),
    ({"compute_dtype": "int8"}, r"compute_dtype must be one of float32, bfloat16, float16"),
    ({"workdir": ""}, r"workdir must be a directory path, got ''"),
], ids=["patience_0", "patience_negative", "epochs_0", "negative_decay", "negative_rate",
        "nan_rate", "seed", "warmup", "optimizer", "compute_dtype", "workdir"])
def test_train_options_refuse_what_cannot_train_when_built(tmp_path, changes, pattern):
  """TrainOptions built in Python get the flags' rules: before, fit ignored patience 0,
  stopped after one epoch with a negative one, trained uphill on a negative decay rate
  and wrote a results.json with an empty history for epochs=0."""
  with pytest.raises(ValueError, match=r"^TrainOptions\." + pattern):
    train.TrainOptions(**{"experiment": "test", "model_name": "gru",
                          "workdir": str(tmp_path / "gru"), **changes})
  assert not (tmp_path / "gru").exists()


def test_flag_checks_are_the_object_checks():
  """One source of truth: the flag's message is the field's, named as the flag."""
  values = {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "validation_split": 0.0,
            "clip_norm": None, "early_stopping_patience": 0}
  with pytest.raises(UserError) as flag_error:
    train_flags.check_values(values)
  with pytest.raises(ValueError) as field_error:
    train.TrainOptions(experiment="t", model_name="m", workdir="w", early_stopping_patience=0)
  assert str(flag_error.value) == "--early_stopping_patience must be a positive integer, got 0"
  assert str(field_error.value) == ("TrainOptions.early_stopping_patience must be a positive "
                                    "integer, got 0")


def test_fit_refuses_a_learning_rate_function_that_goes_negative(tmp_path):
  options = train.TrainOptions(experiment="test", model_name="gru", workdir=str(tmp_path / "gru"),
                               epochs=2, learning_rate=lambda step: 1e-2 - 3e-3 * step)
  with pytest.raises(ValueError, match=r"learning rate at step 4 \(epoch 2\) is -0\.002; every "
                                       r"step's must be finite and at least 0"):
    train.fit(_model(4), _data(), loss="mse", options=options)
  assert not (tmp_path / "gru").exists()
  decaying = lambda step: 1e-2 * 0.5 ** step  # pylint: disable=unnecessary-lambda-assignment
  results = train.fit(_model(4), _data(), loss="mse", options=dataclasses.replace(
      options, epochs=1, learning_rate=decaying)).results
  assert results["config"]["learning_rate"].endswith("<lambda>")


def test_fit_refuses_an_implementation_the_cell_lacks_before_any_directory(tmp_path):
  """`implementation="native"` on a GRU was found while tracing, after the workdir was made."""
  model = layers.Sequential([layers.Bidirectional(layers.GRU(4, implementation="native")),
                             layers.Dense(1)])
  with pytest.raises(ValueError, match=r"model\.layers\[0\]\.forward \(GRU\(4\)\): "
                                       r"implementation='native' cannot compute this gru "
                                       r"layer: no native kernel computes gru"):
    train.fit(model, _data(), loss="mse", options=_options(tmp_path / "gru"))
  assert not (tmp_path / "gru").exists()


_LAST_BATCH_OF_7 = r"""
import sys
import numpy as np
from rnn_jax import layers, train
from rnn_jax.data.batches import ArrayBatches

class ShortLastBatch(ArrayBatches):
  def train(self, seed, epoch):  # the last batch not padded: 7 rows, not 8
    for i, (x, y, w) in enumerate(super().train(seed, epoch)):
      yield (x[:7], y[:7], w[:7]) if i == self.steps_per_epoch - 1 else (x, y, w)

x = np.random.default_rng(0).uniform(size=(40, 5, 2)).astype(np.float32)
data = ShortLastBatch.from_arrays(x, x[:, :, :1].sum(1), validation_split=0.2, batch_size=8)
options = train.TrainOptions(experiment="t", model_name="gru", workdir=sys.argv[1], epochs=1,
                             num_devices=2)
try:
  train.fit(layers.Sequential([layers.GRU(2), layers.Dense(1)]), data, loss="mse",
            options=options)
except ValueError as e:
  print(type(e).__name__, e)
"""


def test_fit_refuses_a_last_batch_that_does_not_split_before_any_directory(tmp_path):
  """On two devices a last batch of 7 rows was JAX's IndivisibleError, mid-epoch."""
  import subprocess
  proc = subprocess.run(
      [sys.executable, "-c", _LAST_BATCH_OF_7, str(tmp_path / "gru")], capture_output=True,
      text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
      env={**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert proc.stdout.strip() == (
      "ValueError batches.train(seed=0, epoch=1) batch 4 has 7 rows, which do not split over "
      "the 2 devices of the mesh: every batch must have batch_size rows (pad a last, smaller "
      "batch with weight-0 rows, as rnn_jax.data.batches does)"), proc.stderr[-2000:]
  assert not (tmp_path / "gru").exists()


# ------------------------------- issue 26: run files with integrity, inputs at the boundary

_WORDS = ("film", "good", "bad", "plot", "acting", "great", "dull", "story")


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory):
  """Two finished one-epoch runs: "arrays" (GRU(4) on <float32>[5, 2]) and "imdb" (an
  Embedding and LSTM(4) on word ids, with preprocessing.json and vocabulary.txt)."""
  root = tmp_path_factory.mktemp("saved_runs")
  train.fit(_model(4), _data(), loss="mse", options=_options(root / "arrays", epochs=1),
            preprocessing={"kind": "arrays"})
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 12, size=(48, 6)).astype(np.int32)
  labels = (ids.sum(axis=1, keepdims=True) > 33).astype(np.float32)
  text_data = ArrayBatches.from_arrays(ids, labels, validation_split=0.25, batch_size=16)
  prep = {"kind": "imdb", "tokenizer": imdb.TOKENIZER_VERSION, "num_words": 12, "maxlen": 6,
          "start_char": 1, "oov_char": 2, "index_from": 3, "padding": "pre",
          "truncating": "pre", "reverse": False, "vocabulary_size": len(_WORDS),
          "vocabulary": list(_WORDS)}
  model = layers.Sequential([layers.Embedding(12, 4), layers.LSTM(4), layers.Dense(1)])
  train.fit(model, text_data, loss="bce_logits", options=_options(root / "imdb", epochs=1),
            preprocessing=prep)
  return root


def _damaged(saved_runs, tmp_path, kind, damage):
  """A copy of the `kind` run with `damage(run_dir)` applied."""
  run = _copy(saved_runs / kind, tmp_path / kind)
  damage(run)
  return run


def _truncate(path: Path):
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


@pytest.mark.parametrize("kind, damage, pattern", [
    ("arrays", lambda run: _truncate(run / "model.json"),
     r"model\.json: not an rnn_jax model file: not valid JSON, truncated or damaged\?"),
    ("arrays", lambda run: (run / "model.json").write_text("[1, 2]"),
     r"model\.json: not an rnn_jax model file: a JSON list, not an object"),
    ("arrays", lambda run: (run / "model.json").write_text(
        (run / "model.json").read_text().replace('"input_dtype": "float32"',
                                                 '"input_dtype": "fp32x"')),
     r"model\.json: not an rnn_jax model file: 'input_dtype' is 'fp32x', not a dtype's name"),
    ("arrays", lambda run: (run / "model.json").write_text(
        (run / "model.json").read_text().replace('"class": "RNN"', '"class": "Conv"')),
     r"model\.json: its architecture \('model'\) cannot be rebuilt: ValueError: model config: "
     r"unknown layer class 'Conv'"),
    ("imdb", lambda run: (run / "preprocessing.json").unlink(),
     r"preprocessing\.json: no such file; the run needs it \(model\.json lists it\)"),
    ("imdb", lambda run: _truncate(run / "preprocessing.json"),
     r"preprocessing\.json: \d+ bytes, but the run wrote \d+ \(truncated or changed since"),
    ("imdb", lambda run: _truncate(run / "vocabulary.txt"),
     r"vocabulary\.txt: \d+ bytes, but the run wrote \d+ \(truncated"),
    ("imdb", lambda run: (run / "vocabulary.txt").write_text(  # two words' ranks swapped
        "".join(w + "\n" for w in ("good", "film", *_WORDS[2:]))),
     r"vocabulary\.txt: its SHA-256 is not the one the run wrote"),
    ("imdb", lambda run: (run / "vocabulary.txt").unlink(),
     r"vocabulary\.txt: no such file; the run needs it"),
], ids=["model_truncated", "model_a_list", "model_bad_field", "model_unknown_layer",
        "preprocessing_missing", "preprocessing_truncated", "vocabulary_truncated",
        "vocabulary_reordered", "vocabulary_missing"])
def test_load_refuses_damaged_run_files_naming_them(saved_runs, tmp_path, kind, damage, pattern):
  """Before, a truncated model.json was a bare JSONDecodeError, a list an AttributeError,
  a missing preprocessing.json made an IMDB run an "arrays" run, and a truncated
  vocabulary.txt silently changed the predictions."""
  import rnn_jax
  run = _damaged(saved_runs, tmp_path, kind, damage)
  before = tree_hash(run)
  with pytest.raises(UserError, match=pattern) as error:
    rnn_jax.load(run)
  assert "\n" not in str(error.value) and str(run) in str(error.value)
  assert tree_hash(run) == before


def test_a_run_of_format_1_loads_and_its_vocabulary_is_counted(saved_runs, tmp_path):
  """Runs written before model.json recorded checksums still load; their vocabulary is
  checked against preprocessing.json's vocabulary_size."""
  import rnn_jax

  def as_format_1(run):
    record = json.loads((run / "model.json").read_text())
    record["format"] = "rnn_jax.model/1"
    del record["files"]
    (run / "model.json").write_text(json.dumps(record))
  run = _damaged(saved_runs, tmp_path, "imdb", as_format_1)
  assert rnn_jax.load(run).predict(["a good film"]).shape == (1,)
  (run / "vocabulary.txt").write_text("film\ngood\n")
  with pytest.raises(UserError, match=r"vocabulary\.txt: 2 words, but preprocessing\.json "
                                      r"records 8"):
    rnn_jax.load(run)


def test_load_refuses_a_replica_the_run_does_not_have(saved_runs):
  import rnn_jax
  with pytest.raises(UserError, match=r"replica=1: \S+ trained 1 replica \(0\.\.0\)"):
    rnn_jax.load(saved_runs / "arrays", replica=1)


@pytest.mark.parametrize("kind, raw, error, pattern", [
    ("imdb", b"a good film", TypeError, r"takes a review \(a string\) or a list of reviews, got "
                                         r"bytes: decode them first"),
    ("imdb", ["a good film", 3], TypeError, r"review 1 is int, not a string"),
    ("imdb", {"text": "good"}, TypeError, r"got dict"),
    ("arrays", ["a", "b"], TypeError, r"takes <float32>\[n, 5, 2\] arrays .*, got values of "
                                      r"dtype <U1 \(strings or objects\?\)"),
    ("arrays", "1,2,3", TypeError, r"takes <float32>\[n, 5, 2\] arrays .*, got str"),
    ("arrays", np.ones((3, 5, 4)), ValueError, r"takes <float32>\[n, 5, 2\] arrays .*, got "
                                               r"shape \(3, 5, 4\)"),
    ("arrays", np.full((2, 5, 2), np.inf), ValueError, r"the input holds inf at index "
                                                       r"\(0, 0, 0\): every value must be finite"),
], ids=["imdb_bytes", "imdb_not_a_string", "imdb_dict", "arrays_strings", "arrays_str",
        "arrays_width", "arrays_inf"])
def test_predict_refuses_inputs_the_run_does_not_take(saved_runs, kind, raw, error, pattern):
  """Before: internal errors (ZeroDivisionError, "could not convert string to float") or
  silently wrong predictions."""
  import rnn_jax
  with pytest.raises(error, match=pattern):
    rnn_jax.load(saved_runs / kind).predict(raw)


@pytest.mark.parametrize("kind, raw, shape", [("imdb", [], (0,)), ("arrays", [], (0, 1)),
                                              ("arrays", np.zeros((0, 5, 2)), (0, 1))])
def test_predict_on_an_empty_batch_is_an_empty_result(saved_runs, kind, raw, shape):
  import rnn_jax
  predictor = rnn_jax.load(saved_runs / kind)
  assert predictor.predict(raw).shape == shape
  assert predictor.preprocess(raw).shape[0] == 0


def test_forecast_dataframe_with_inf_is_refused_as_the_csv_reader_does():
  """The forecasting predictor's DataFrame path, on a Predictor built in memory."""
  import pandas as pd
  from rnn_jax.io import predictor as predictor_lib
  model = layers.Sequential([layers.GRU(2), layers.Dense(1)])
  params = model.init(KEY, jnp.zeros((1, 4, 2)))
  prep = {"kind": "forecast", "columns": ["a", "T"], "target": "T", "target_unit": "degC",
          "mean": [0.0, 0.0], "std": [1.0, 1.0], "lookback": 4, "step": 1, "delay": 0,
          "reverse": False}
  predictor = predictor_lib.Predictor(model, params, prep, record={"input_shape": [4, 2]})
  frame = pd.DataFrame({"a": np.arange(8.0), "T": np.ones(8)})
  assert predictor.predict(frame).shape == (5,)
  assert predictor.predict(frame.iloc[:0]).shape == (0,)
  frame.loc[6, "T"] = np.inf
  with pytest.raises(ValueError, match=r"row 6, column 'T': not a number: inf"):
    predictor.predict(frame)
  with pytest.raises(TypeError, match=r"takes a pandas DataFrame or a CSV path, got bytes"):
    predictor.predict(b"a,T\n1,2\n")


# ----------------------------------------------- issue 26: every command ends in one line

@pytest.mark.parametrize("raised, line", [
    (ValueError("GRU(4): expects inputs [batch, time, features],\n  got (5, 3)"),
     "error: GRU(4): expects inputs [batch, time, features], got (5, 3)"),
    (TypeError("takes a string"), "error: takes a string"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "runs/x/model.json"),
     "error: runs/x/model.json: no such file or directory"),
    (OSError(errno.ENOSPC, "No space left on device", "out.csv"),
     "error: out.csv: no space left on device"),
], ids=["value_error", "type_error", "file_not_found", "full_disk"])
def test_anticipated_errors_are_one_line_exit_2(capsys, raised, line):
  """Only UserError was one line: a ValueError from a layer or a FileNotFoundError from
  the loader was a traceback."""
  def main(argv):
    raise raised
  with pytest.raises(SystemExit) as exit_:
    command._guarded(main)([])  # pylint: disable=protected-access
  assert exit_.value.code == 2
  assert capsys.readouterr().err.splitlines() == [line]


def test_a_bug_is_still_a_traceback():
  def main(argv):
    raise KeyError("a bug")
  with pytest.raises(KeyError):
    command._guarded(main)([])  # pylint: disable=protected-access


# ------------------------------------ issue 26: a full disk at the best checkpoint's write

def test_full_disk_in_orbax_writer_threads_at_the_best_checkpoint_is_one_line(
    interrupted, tmp_path, monkeypatch, caplog):
  """The best checkpoint's write filling the disk inside orbax's writer threads: one
  `UserError` line, no traceback logged by those threads (before: absl ERROR records with
  tracebacks, asyncio's "never retrieved" ones and "Event loop is closed" errors), the
  earlier checkpoints byte-identical and no debris."""
  from orbax.checkpoint._src.serialization import serialization
  workdir = _copy(interrupted, tmp_path / "gru")
  before = tree_hash(workdir / "checkpoints")
  real = serialization.async_serialize_from_host

  async def full_disk(*args, **kwargs):
    if "/best/" in str(args) + str(kwargs):
      raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "d/1": Failed to write '
                       "287 bytes to file 16: No space left on device [os_error_code='28']")
    return await real(*args, **kwargs)
  monkeypatch.setattr(serialization, "async_serialize_from_host", full_disk)
  unraisable = []
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  with pytest.raises(UserError, match=r"^cannot write \S*/checkpoints/best/epoch000003: no space "
                                      r"left on device$"):
    train.fit(_model(4), _data(), loss="mse", options=_options(workdir, epochs=3, resume=True))
  assert [r.getMessage()[:80] for r in caplog.records if r.levelno >= 40] == []
  assert unraisable == []
  assert tree_hash(workdir / "checkpoints") == before
  assert not list((workdir / "checkpoints" / "best").glob("*tmp*"))


@pytest.mark.parametrize("make, error, pattern", [
    (lambda: layers.Dense(0), ValueError, r"Dense: units must be a positive integer, got 0"),
    (lambda: layers.Embedding(0, 4), ValueError, r"Embedding: input_dim must be a positive"),
    (lambda: layers.Maxout(4, pieces=0), ValueError, r"Maxout: pieces must be a positive"),
    (lambda: layers.Dropout(1.5), ValueError, r"Dropout: rate must be in \[0, 1\), got 1\.5"),
    (lambda: layers.Bidirectional(layers.Dense(4)), TypeError,
     r"Bidirectional: layer must be a recurrent layer \(layers\.RNN"),
    (lambda: layers.Sequential([layers.GRU(4), "dense"]), TypeError,
     r"Sequential: layers\[1\] is str, not a layer"),
], ids=["dense_0", "embedding_0", "maxout_pieces_0", "dropout_1.5", "bidirectional_dense",
        "sequential_str"])
def test_every_layer_checks_its_values_when_built(make, error, pattern):
  """issue 26: every public constructor checks its values (the recurrent layers did)."""
  with pytest.raises(error, match=pattern):
    make()


def test_a_predictor_of_an_unknown_kind_is_refused_when_built():
  from rnn_jax.io import predictor as predictor_lib
  with pytest.raises(ValueError, match=r"Predictor: preprocessing\['kind'\] must be one of "
                                       r"imdb, forecast, arrays, got 'images'"):
    predictor_lib.Predictor(_model(2), None, {"kind": "images"})


@pytest.mark.parametrize("kwargs, pattern", [
    ({"batch_size": 0}, r"ArrayBatches: batch_size must be a positive integer, got 0"),
    ({"y_train": np.zeros((3, 1))}, r"ArrayBatches: x_train has 4 rows and y_train 3"),
    ({"x_test": np.zeros((2, 5, 2))}, r"give x_test and y_test together, or neither"),
], ids=["batch_size_0", "train_lengths", "test_without_targets"])
def test_array_batches_check_their_arrays_when_built(kwargs, pattern):
  arrays = {"x_train": np.zeros((4, 5, 2)), "y_train": np.zeros((4, 1)),
            "x_val": np.zeros((2, 5, 2)), "y_val": np.zeros((2, 1))}
  with pytest.raises(ValueError, match=pattern):
    ArrayBatches(**{**arrays, **kwargs})
