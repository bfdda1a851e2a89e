"""Bad input, end to end: one line naming the culprit, exit != 0, no traceback, nothing written.

Each case runs an experiment's real entry point (`command.run(main)`, absl flag parsing
included) in its own process, with its own --workdir and RNN_JAX_DATA_CACHE under
tmp_path. A process per case would spend ~2.5 s importing JAX, so one driver process per
experiment imports it once and forks a child per case (`_DRIVER`): the child parses the
case's argv as `python -m experiments.<name> ...` would, and its exit status and stderr
are what the tests read. Two cases also run as plain `python -m` subprocesses, to show
the driver changes nothing.

After each case the test checks that stderr ends in one `error: ...` line (or absl's own
`FATAL Flags parsing error: ...` for an enum flag) matching the case's pattern, that no
other line but absl log lines appears (no "Traceback", no warnings), and that the case's
directory is as it was: no workdir if there was none, no file added, changed or removed
(in particular no partial download in the cache).

Policies the cases pin down: duplicated, decreasing or unevenly spaced timestamps are
errors (not warnings) unless --allow_irregular_time; `inf` is a bad number and `NaN`/`NA`
a missing cell; --delay=0 (the row right after the window) is valid; --step must divide
--lookback.

Permissions: the tests run as root, for whom `chmod 000` changes nothing, so "unreadable"
is exercised with a directory and a named pipe (fifo) given as the data file; the pipe
would block a naive reader forever.
"""
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.e2e  # subprocess runs of the experiments: see pyproject.toml

REPO = Path(__file__).resolve().parents[1]

_DRIVER = r"""
import importlib, json, os, signal, sys, tempfile
name, cases_path, results_path = sys.argv[1:]
with open(cases_path) as f:
  cases = json.load(f)
module = importlib.import_module(name)
from experiments import command
results = []
for case in cases:
  with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
    pid = os.fork()
    if pid == 0:
      os.dup2(err.fileno(), 2)
      os.dup2(out.fileno(), 1)
      os.environ.update(case["env"])
      for target, value in case["patch"].items():  # e.g. a download URL -> a local file
        owner, attribute = target.split(":")
        setattr(importlib.import_module(owner), attribute, value)
      signal.alarm(60)
      sys.argv = [name, *case["argv"]]
      code = 0
      try:
        command.run(module.main)
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      except BaseException:
        import traceback
        traceback.print_exc()
        code = 99
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(code)
    _, status = os.waitpid(pid, 0)
    err.seek(0)
    out.seek(0)
    results.append({"rc": os.waitstatus_to_exitcode(status),
                    "stderr": err.read().decode(errors="replace"),
                    "stdout": out.read().decode(errors="replace")})
with open(results_path, "w") as f:
  json.dump(results, f)
"""
_ABSL_LOG_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")
_UNREACHABLE_PROXY = "http://127.0.0.1:9"  # connection refused at once: no network is tried


# ------------------------------------------------------------------------------- inputs


def _write_inputs(d: Path) -> None:
  """Every broken file, next to the good ones they are broken from."""
  times = np.datetime64("2020-01-01T00:00") + np.arange(200).astype("timedelta64[h]")
  rows = [f"{t},{i % 7},{np.sin(i / 5):.3f},{np.cos(i / 9):.3f},x{i % 3}"
          for i, t in enumerate(times)]
  header = "time,a,b,T,label"  # label: a text column, left out of the default features

  def csv(name, lines, encoding="utf-8"):
    (d / name).write_bytes(("\n".join(lines) + "\n").encode(encoding))

  def replace_line(index, line):  # data row `index` is file line index + 2
    return [header, *rows[:index], line, *rows[index + 1:]]

  t_cell = lambda i, cell: ",".join(rows[i].split(",")[:3] + [cell] + rows[i].split(",")[4:])
  csv("good.csv", [header, *rows])
  csv("trailing_comma.csv", [line + "," for line in [header, *rows]])  # a spreadsheet's export
  csv("semicolon_decimal.csv", [line.replace(",", ";").replace(".", ",")
                                for line in [header, *rows]])
  csv("huge.csv", [header, *[",".join([r.split(",")[0], f"{(-1) ** i * 1e300:g}",
                                       *r.split(",")[2:]]) for i, r in enumerate(rows)]])
  (d / "not_utf8").mkdir()
  (d / "not_utf8" / "results.json").write_bytes(b'{"model": "caf\xe9"}')
  (d / "string_number").mkdir()
  (d / "string_number" / "results.json").write_text('{"model": "gru", "val": {"mae": "0.3"}}')
  csv("bom.csv", [header, *rows], encoding="utf-8-sig")
  (d / "empty.csv").write_bytes(b"")
  csv("header.csv", [header])
  csv("few.csv", [header, *rows[:29]])
  csv("semicolon.csv", [line.replace(",", ";") for line in [header, *rows]])
  (d / "binary.csv").write_bytes(np.random.default_rng(0).bytes(3000))
  csv("latin1.csv", replace_line(3, rows[3] + "é"), encoding="latin-1")
  csv("text.csv", replace_line(49, t_cell(49, "abc")))
  csv("inf.csv", replace_line(49, t_cell(49, "inf")))
  csv("nan.csv", replace_line(49, t_cell(49, "NaN")))
  csv("ragged.csv", replace_line(49, rows[49] + ",1"))
  csv("quote.csv", replace_line(49, '"' + rows[49]))  # the quote runs to the end
  csv("repeated.csv", replace_line(49, rows[48]))
  csv("repeated_name.csv", ["time,T,a,T,label", *rows])
  csv("gap.csv", [header, *rows[:49], *rows[50:]])
  csv("decreasing.csv", [header, *rows[:48], rows[49], rows[48], *rows[50:]])
  csv("bad_time.csv", replace_line(49, "yesterday," + rows[49].split(",", 1)[1]))
  good = (d / "good.csv").read_text()
  with zipfile.ZipFile(d / "none.zip", "w") as z:
    z.writestr("readme.txt", "no csv here")
  with zipfile.ZipFile(d / "two.zip", "w") as z:
    z.writestr("a.csv", good)
    z.writestr("b.csv", good)
  with zipfile.ZipFile(d / "deflated.zip", "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("a.csv", good)
  whole = (d / "deflated.zip").read_bytes()
  (d / "truncated.zip").write_bytes(whole[:len(whole) // 2])
  flipped = bytearray(whole)
  flipped[100] ^= 0xFF
  flipped[200] ^= 0xFF
  (d / "corrupt.zip").write_bytes(bytes(flipped))
  (d / "directory.csv").mkdir()
  os.mkfifo(d / "fifo.csv")
  (d / "a_file").write_text("not a directory")

  adjective = {"pos": "fine", "neg": "dull"}
  texts = {(split, label): [f"{label} review {i} of {split}, a {adjective[label]} film"
                            for i in range(6)]
           for split in ("train", "test") for label in ("neg", "pos")}

  def archive(name, reviews=texts, extra=(), root="aclImdb", mode="w:gz"):
    with tarfile.open(d / name, mode) as tar:
      members = [(f"{root}/{split}/{label}/{i}_7.txt", text.encode())
                 for (split, label), review_texts in reviews.items()
                 for i, text in enumerate(review_texts)]
      for member, data in members + list(extra):
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

  archive("good.tar.gz")
  tarball = (d / "good.tar.gz").read_bytes()
  (d / "truncated.tar.gz").write_bytes(tarball[:len(tarball) // 2])
  (d / "garbage.tar.gz").write_bytes(np.random.default_rng(1).bytes(3000))
  (d / "empty.tar.gz").write_bytes(b"")
  archive("no_test_neg.tar.gz", {k: v for k, v in texts.items() if k != ("test", "neg")})
  archive("other_root.tar.gz", root="imdb")
  archive("not_utf8.tar.gz", extra=[("aclImdb/train/pos/99_9.txt", b"caf\xe9 au lait")])
  with zipfile.ZipFile(d / "reviews.zip", "w") as z:
    z.writestr("aclImdb/train/pos/1_9.txt", "a zip, not a tar")
  np.savez(d / "keys.npz", x_train=np.zeros(3))
  (d / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
  ragged = np.empty(3, object)
  ragged[:] = [[1, 2], [3], [4, 5, 6]]
  np.savez(d / "lengths.npz", x_train=ragged, y_train=np.zeros(2), x_test=ragged,
           y_test=np.zeros(3))

  # A run's files for experiments.predict (no checkpoint: each case stops before one is read).
  import types  # pylint: disable=import-outside-toplevel
  from rnn_jax import layers  # pylint: disable=import-outside-toplevel
  from rnn_jax.io import run_files as saved  # pylint: disable=import-outside-toplevel
  options = types.SimpleNamespace(compute_dtype="float32", num_seeds=1)
  for name in ("arrays_run", "truncated_run"):
    saved.write_run_files(d / name, layers.Sequential([layers.GRU(2), layers.Dense(1)]),
                          np.zeros((1, 4, 2), np.float32), options, {"kind": "arrays"})
  model_json = (d / "truncated_run" / "model.json").read_bytes()
  (d / "truncated_run" / "model.json").write_bytes(model_json[:len(model_json) // 2])


# -------------------------------------------------------------------------------- cases

JENA_SIZES = ["--target=T", "--time_column=time", "--lookback=12", "--step=2", "--delay=3",
              "--batch_size=8", "--epochs=1", "--steps_per_epoch=1", "--model=naive"]
SPLIT = ["--train_end=100", "--val_end=150"]
IMDB_SIZES = ["--maxlen=20", "--max_features=30", "--units=4", "--embedding_dim=4",
              "--batch_size=8", "--epochs=1"]


def _jena(data, *flags, split=True, **setup):
  data_flag = [f"--data_path={{in}}/{data}"] if data else []
  return dict(module="experiments.jena_forecast",
              argv=[*data_flag, *JENA_SIZES, *(SPLIT if split else []), *flags], **setup)


ADDING_SIZES = ["--seq_len=4", "--units=2", "--num_train=40", "--num_test=8", "--batch_size=8",
                "--epochs=1"]


def _adding(*flags, **setup):
  return dict(module="experiments.adding_problem", argv=[*ADDING_SIZES, *flags], **setup)


def _imdb(data, *flags, **setup):
  data_flag = [f"--data_path={{in}}/{data}"] if data else []
  return dict(module="experiments.imdb_sentiment", argv=[*data_flag, *IMDB_SIZES, *flags],
              **setup)


def _predict(*flags, **setup):
  """experiments.predict, which has no --workdir: its files go under the case's run/."""
  return dict(module="experiments.predict", argv=list(flags), workdir=False, **setup)


CASES = {
    # --- the forecasting CSV: files
    "csv_missing": (_jena("nope.csv"), r"--data_path=\S*/nope\.csv: no such file"),
    "csv_directory": (_jena("directory.csv"),
                      r"--data_path=\S*/directory\.csv: not a regular file"),
    "csv_fifo": (_jena("fifo.csv"), r"--data_path=\S*/fifo\.csv: not a regular file"),
    "csv_empty": (_jena("empty.csv"), r"empty\.csv: empty file"),
    "csv_header_only": (_jena("header.csv"), r"header\.csv: no data rows after the header"),
    "csv_binary": (_jena("binary.csv"), r"binary\.csv line 1: not UTF-8 text"),
    "csv_latin1": (_jena("latin1.csv"), r"latin1\.csv line 5: not UTF-8 text"),
    "csv_semicolons": (_jena("semicolon.csv"),
                       r"semicolon\.csv line 1: no column 'T' \(from --target\) \(the file "
                       r"looks ';'-separated"),
    "csv_not_a_number": (_jena("text.csv"), r"text\.csv line 51, column 'T': not a number: 'abc'"),
    "csv_inf": (_jena("inf.csv"), r"inf\.csv line 51, column 'T': not a number: 'inf'"),
    "csv_nan": (_jena("nan.csv"), r"nan\.csv: 1 missing cells in 1 rows, e\.g\. line 51 column "
                                  r"'T'.*--fill_missing=interpolate"),
    "csv_no_target": (_jena("good.csv", "--target=temp"),
                      r"good\.csv line 1: no column 'temp' \(from --target\)"),
    "csv_no_time_column": (_jena("good.csv", "--time_column=when"),
                           r"good\.csv line 1: no column 'when' \(from --time_column\)"),
    "csv_no_feature": (_jena("good.csv", "--features=a,z"),
                       r"good\.csv line 1: no column 'z' \(from --features\)"),
    "csv_header_repeats_a_name": (_jena("repeated_name.csv"),
                                  r"repeated_name\.csv line 1: column 'T' appears twice"),
    "csv_text_target": (_jena("good.csv", "--target=label"),
                        r"good\.csv line 2, column 'label': not a number: 'x0'"),
    "csv_target_is_time": (_jena("good.csv", "--target=time"), r"--target='time' is a time column"),
    "csv_bad_time_format": (_jena("good.csv", "--time_format=%Q"),
                            r"--time_format='%Q': 'Q' is a bad directive"),
    "csv_time_columns_without_day": (_jena("good.csv", "--time_column=", "--time_columns=a,b"),
                                     r"--time_columns=a,b: needs year, month and day"),
    "csv_ragged": (_jena("ragged.csv"), r"ragged\.csv line 51: 6 fields, the header \(line 1\) "
                                        r"has 5"),
    "csv_unclosed_quote": (_jena("quote.csv"), r"quote\.csv lines 51-201 \(an unclosed quote on "
                                               r"line 51\?\)"),
    "csv_repeated_time": (_jena("repeated.csv"), r"repeated\.csv line 51: timestamp 2020-01-03 "
                                                 r"00:00:00 repeats line 50's"),
    "csv_decreasing_time": (_jena("decreasing.csv"), r"decreasing\.csv line 51: timestamp "
                                                     r"\S+ \S+ comes before line 50's"),
    "csv_uneven_time": (_jena("gap.csv"), r"gap\.csv line 51: timestamp \S+ \S+ is 0 days 02:00:00 "
                                          r"after line 50.*--allow_irregular_time"),
    "csv_bad_time": (_jena("bad_time.csv"), r"bad_time\.csv line 51, column 'time': not a time: "
                                            r"'yesterday'"),
    "csv_too_few_rows_for_split": (_jena("few.csv"), r"need 0 < --train_end \(100\) < --val_end "
                                                     r"\(150\) <= the number of rows \(29\)"),
    "csv_too_few_rows_for_windows": (
        _jena("few.csv", "--train_fraction=0.5", "--val_fraction=0.25", split=False),
        r"few\.csv: 29 rows are too few for --lookback=12 --delay=3 --batch_size=8"),
    "csv_batch_larger_than_data": (_jena("good.csv", "--batch_size=500"),
                                   r"good\.csv: 200 rows are too few for .*--batch_size=500"),
    "zip_without_csv": (_jena("none.zip"), r"none\.zip: expected one \.csv file in the zip, "
                                           r"found 0"),
    "zip_with_two_csvs": (_jena("two.zip"), r"two\.zip: expected one \.csv file in the zip, "
                                            r"found 2"),
    "zip_truncated": (_jena("truncated.zip"), r"truncated\.zip: not a zip file"),
    "zip_corrupt": (_jena("corrupt.zip"), r"corrupt\.zip: truncated or corrupt file"),
    # --- the forecasting flags
    "forecast_unknown_model": (_jena("good.csv", "--model=naive,transformer"),
                               r"--model: unknown \['transformer'\]; choose from \['naive', 'mlp', "),
    "forecast_zero_units": (_jena("good.csv", "--units=0"), r"--units must be at least 1, got 0"),
    "forecast_negative_lookback": (_jena("good.csv", "--lookback=-12"),
                                   r"--lookback=-12 must be at least 1"),
    "forecast_zero_lookback": (_jena("good.csv", "--lookback=0"),
                               r"--lookback=0 must be at least 1"),
    "forecast_zero_step": (_jena("good.csv", "--step=0"), r"--step=0 must be at least 1"),
    "forecast_step_not_dividing": (_jena("good.csv", "--step=5"),
                                   r"--step=5 does not divide --lookback=12"),
    "forecast_negative_delay": (_jena("good.csv", "--delay=-1"), r"--delay=-1 must be at least 0"),
    # The shared flags are checked before the CSV is read, as in every experiment.
    "forecast_zero_batch": (_jena("good.csv", "--batch_size=0"),
                            r"--batch_size must be a positive integer, got 0"),
    "forecast_zero_epochs": (_jena("good.csv", "--model=gru", "--epochs=0"),
                             r"--epochs must be a positive integer, got 0"),
    "forecast_validation_split_1": (_jena("good.csv", "--validation_split=1"),
                                    r"--validation_split must be in \[0, 1\), got 1\.0"),
    "forecast_dropout_1": (_jena("good.csv", "--model=gru", "--dropout=1"),
                           r"--dropout must be in \[0, 1\), got 1\.0"),
    "forecast_split_out_of_order": (_jena("good.csv", "--train_end=150", "--val_end=100",
                                          split=False),
                                    r"need 0 < --train_end \(150\) < --val_end \(100\)"),
    "forecast_split_past_the_end": (_jena("good.csv", "--train_end=100", "--val_end=500",
                                          split=False),
                                    r"--val_end \(500\) <= the number of rows \(200\)"),
    "forecast_fractions_over_1": (
        _jena("good.csv", "--train_fraction=0.7", "--val_fraction=0.5", split=False),
        r"--train_fraction=0\.7 and --val_fraction=0\.5 must be positive and add up to at most 1"),
    "forecast_fraction_alone": (_jena("good.csv", "--train_fraction=0.5", split=False),
                                r"--train_fraction and --val_fraction go together"),
    "forecast_rows_and_fractions": (_jena("good.csv", "--train_fraction=0.5",
                                          "--val_fraction=0.2"),
                                    r"give --train_end/--val_end or --train_fraction/"
                                    r"--val_fraction, not both"),
    "forecast_zero_steps_per_epoch": (_jena("good.csv", "--steps_per_epoch=0"),
                                      r"--steps_per_epoch must be a positive integer, got 0"),
    "forecast_nan_dropout": (_jena("good.csv", "--model=gru", "--dropout=nan"),
                             r"--dropout must be in \[0, 1\), got nan"),
    "forecast_too_many_devices": (_jena("good.csv", "--model=gru", "--num_devices=999"),
                                  r"--num_devices=999 but only \d+ local device\(s\) exist"),
    "forecast_unknown_fill": (_jena("good.csv", "--fill_missing=zero"),
                              r"^FATAL Flags parsing error: flag --fill_missing=zero: value "
                              r"should be one of"),
    "forecast_workdir_is_a_file": (_jena("good.csv", "--workdir={in}/a_file"),
                                   r"--workdir: \S*/a_file exists and is not a directory"),
    "forecast_finished_run": (_jena("good.csv", before={"run/naive/results.json": "{}"}),
                              r"\S*/run/naive already holds a finished run( \(\S*\))?; pass "
                              r"--overwrite"),
    "forecast_seed_negative": (_jena("good.csv", "--model=gru", "--seed=-1"),
                               r"--seed must be in \[0, 2147483647\], got -1"),
    "forecast_seed_too_large": (_jena("good.csv", "--model=gru", "--seed=3000000000"),
                                r"--seed must be in \[0, 2147483647\], got 3000000000"),
    "forecast_model_twice": (_jena("good.csv", "--model=naive,naive"),
                             r"--model=naive,naive: 'naive' is listed twice"),
    "forecast_workdir_name_too_long": (_jena("good.csv", "--workdir={in}/" + "x" * 300),
                                       r"--workdir: \S*/x+: file name too long"),
    "csv_semicolons_decimal_commas": (
        _jena("semicolon_decimal.csv"),
        r"semicolon_decimal\.csv line 2: \d+ fields, the header \(line 1\) has 1 \(the file looks "
        r"';'-separated: pass --csv_separator=';', and --decimal=','"),
    "csv_huge_column": (_jena("huge.csv"), r"column 'a': values up to 1e\+300 are too large to "
                                           r"normalize.*--exclude"),
    # --- the adding problem
    "adding_no_models": (_adding("--model="), r"--model: give at least one model"),
    "adding_model_twice": (_adding("--model=gru,gru"), r"--model=gru,gru: 'gru' is listed twice"),
    "adding_seed_negative": (_adding("--model=gru", "--seed=-1"),
                             r"--seed must be in \[0, 2147483647\], got -1"),
    # --- summarize
    "summarize_not_utf8": (dict(module="experiments.summarize", argv=["--workdir={in}/not_utf8"]),
                           r"not_utf8/results\.json: not a results file: not UTF-8 text"),
    "summarize_string_number": (
        dict(module="experiments.summarize", argv=["--workdir={in}/string_number"]),
        r"string_number/results\.json: not a results file: val\.mae is '0\.3', not a number"),
    # --- the Jena download
    "jena_download_fails": (
        _jena(None),
        r"cannot download https://storage\.googleapis\.com/\S+jena_climate_2009_2016\.csv\.zip "
        r"\(.*\); put jena_climate_2009_2016\.csv or jena_climate_2009_2016\.csv\.zip in "
        r"\S*/cache/, or pass --data_path="),
    "jena_download_not_canonical": (
        _jena(None, patch={"rnn_jax.data.jena:URL": "file://{in}/deflated.zip"}),
        r"file://\S*/deflated\.zip did not hold the canonical jena_climate_2009_2016\.csv"),
    "jena_cache_is_a_file": (_jena(None, env={"RNN_JAX_DATA_CACHE": "{in}/a_file"}),
                             r"cannot create the data cache \S*/a_file"),
    "jena_cached_zip_corrupt": (
        _jena(None, before={"cache/jena_climate_2009_2016.csv.zip": "PK\x03\x04 cut"}),
        r"\S*/cache/jena_climate_2009_2016\.csv\.zip: not a zip file"),
    # --- IMDB: archives
    "imdb_missing": (_imdb("nope.tar.gz"), r"\S*/nope\.tar\.gz: no such file"),
    "imdb_directory": (_imdb("directory.csv"), r"\S*/directory\.csv: cannot read: Is a directory"),
    "imdb_fifo": (_imdb("fifo.csv"), r"\S*/fifo\.csv: not a regular file"),
    "imdb_empty": (_imdb("empty.tar.gz"), r"empty\.tar\.gz: empty file"),
    "imdb_truncated": (_imdb("truncated.tar.gz"),
                       r"truncated\.tar\.gz: truncated or corrupt archive after aclImdb/"),
    "imdb_garbage": (_imdb("garbage.tar.gz"), r"garbage\.tar\.gz: truncated or corrupt archive"),
    "imdb_zip_not_tar": (_imdb("reviews.zip"), r"reviews\.zip: truncated or corrupt archive"),
    "imdb_folder_missing": (_imdb("no_test_neg.tar.gz"),
                            r"no_test_neg\.tar\.gz: not an aclImdb archive: no reviews under "
                            r"aclImdb/test/neg/$"),
    "imdb_other_layout": (_imdb("other_root.tar.gz"),
                          r"other_root\.tar\.gz: not an aclImdb archive: no reviews under "
                          r"aclImdb/train/neg/, aclImdb/train/pos/, aclImdb/test/neg/, "
                          r"aclImdb/test/pos/$"),
    "imdb_not_utf8": (_imdb("not_utf8.tar.gz"),
                      r"not_utf8\.tar\.gz: aclImdb/train/pos/99_9\.txt: not UTF-8 text"),
    "imdb_npz_missing_keys": (_imdb("keys.npz"),
                              r"keys\.npz: not a Keras imdb\.npz: no y_train, x_test, y_test$"),
    "imdb_npz_corrupt": (_imdb("corrupt.npz"), r"corrupt\.npz: truncated or corrupt npz"),
    "imdb_npz_lengths": (_imdb("lengths.npz"),
                         r"lengths\.npz: x_train has 3 reviews and y_train 2 labels"),
    # --- IMDB: flags
    "imdb_unknown_model": (_imdb("good.tar.gz", "--model=cnn"),
                           r"--model: unknown \['cnn'\]; choose from \['simple_rnn', 'lstm', "),
    "imdb_max_features_3": (_imdb("good.tar.gz", "--max_features=3"),
                            r"--max_features must be at least 4"),
    "imdb_zero_maxlen": (_imdb("good.tar.gz", "--maxlen=0"),
                         r"--maxlen must be a positive integer"),
    "imdb_negative_units": (_imdb("good.tar.gz", "--units=-4"),
                            r"--units must be a positive integer, got -4"),
    "imdb_dropout_1": (_imdb("good.tar.gz", "--recurrent_dropout=1"),
                       r"--recurrent_dropout must be in \[0, 1\), got 1\.0"),
    "imdb_validation_split_1": (_imdb("good.tar.gz", "--validation_split=1"),
                                r"--validation_split must be in \[0, 1\), got 1\.0"),
    "imdb_zero_batch": (_imdb("good.tar.gz", "--batch_size=0"),
                        r"--batch_size must be a positive integer, got 0"),
    "imdb_negative_learning_rate": (_imdb("good.tar.gz", "--learning_rate=-1"),
                                    r"--learning_rate must be positive, got -1\.0"),
    "imdb_workdir_is_a_file": (_imdb("good.tar.gz", "--workdir={in}/a_file"),
                               r"--workdir: \S*/a_file exists and is not a directory"),
    "imdb_finished_run": (_imdb("good.tar.gz", before={"run/lstm/results.json": "{}",
                                                       "run/lstm/.lock": ""}),
                          r"\S*/run/lstm already holds a finished run "
                          r"\(\S*/run/lstm/results\.json\); pass --overwrite"),
    "imdb_seed_too_large": (_imdb("good.tar.gz", "--seed=3000000000"),
                            r"--seed must be in \[0, 2147483647\], got 3000000000"),
    "imdb_batch_does_not_split": (_imdb("good.tar.gz", "--num_devices=2", "--batch_size=3"),
                                  r"--batch_size=3 is not divisible by the 2 devices of "
                                  r"--num_devices=2"),
    # --- IMDB: the download
    "imdb_cache_is_a_file": (_imdb(None, env={"RNN_JAX_DATA_CACHE": "{in}/a_file"}),
                             r"cannot create the data cache \S*/a_file"),
    "imdb_download_fails": (
        _imdb(None),
        r"could not download https://ai\.stanford\.edu/\S+/aclImdb_v1\.tar\.gz: .*; put the file "
        r"at \S*/cache/aclImdb_v1\.tar\.gz or pass --data_path$"),
    "imdb_checksum_mismatch": (
        _imdb(None, patch={"rnn_jax.data.imdb:ACLIMDB_URL": "file://{in}/good.tar.gz"}),
        r"checksum mismatch for file://\S*/good\.tar\.gz: got sha256 [0-9a-f]{64} \(\d+ bytes\), "
        r"expected c40f74a1"),
    "imdb_stale_cache_offline": (
        _imdb(None, before={"cache/aclImdb_v1.tar.gz": "an old, wrong file"}),
        r"could not download .*; put the file at \S*/cache/aclImdb_v1\.tar\.gz \(\S*/cache/"
        r"aclImdb_v1\.tar\.gz has sha256 [0-9a-f]{64}, expected c40f74a1"),
    # --- an implementation the cell lacks, before the CSV is read or a workdir made (issue 26)
    "adding_native_gru": (_adding("--model=gru", "--implementation=native"),
                          r"--implementation=native does not fit --model=gru: model\.layers\[0\] "
                          r"\(GRU\(2\)\): implementation='native' cannot compute this gru layer: no "
                          r"native kernel computes gru"),
    "forecast_associative_gru": (
        _jena("nope.csv", "--model=naive,gru", "--implementation=associative"),
        r"--implementation=associative does not fit --model=gru: .*needs a cell linear in its "
        r"state"),
    # --- experiments.predict (issue 26)
    "predict_output_is_input": (
        _predict("--run={in}/arrays_run", "--input={case}/run/x.npy", "--output={case}/run/x.npy",
                 before={"run/x.npy": "the user's inputs"}),
        r"--output=\S*/run/x\.npy is --input: choose another file, the input is never written "
        r"over"),
    "predict_export_over_input": (
        _predict("--run={in}/arrays_run", "--input={case}/run/x.npy", "--export={case}/run/x.npy",
                 before={"run/x.npy": "the user's inputs"}),
        r"--export=\S*/run/x\.npy is --input"),
    "predict_export_over_model_json": (
        _predict("--run={case}/run", "--export={case}/run/model.json",
                 before={"run/model.json": "{}"}),
        r"--export=\S*/run/model\.json is a file of --run=\S*/run: choose another file"),
    "predict_platforms_bogus": (
        _predict("--run={in}/arrays_run", "--export={case}/run/model.jax", "--platforms=bogus"),
        r"--platforms=bogus: choose from cpu, cuda, rocm, tpu$"),
    "predict_replica_negative": (
        _predict("--run={in}/arrays_run", "--export={case}/run/model.jax", "--replica=-1"),
        r"--replica must be 0 or more, got -1"),
    "predict_replica_single_seed": (
        _predict("--run={in}/arrays_run", "--export={case}/run/model.jax", "--replica=1"),
        r"replica=1: \S*/arrays_run trained 1 replica \(0\.\.0\)"),
    "predict_truncated_model_json": (
        _predict("--run={in}/truncated_run", "--export={case}/run/model.jax"),
        r"truncated_run/model\.json: not an rnn_jax model file: not valid JSON, truncated or "
        r"damaged\?"),
}


GOOD = {"good_bom_delay_0": _jena("bom.csv", "--delay=0"),
        "good_trailing_comma": _jena("trailing_comma.csv", "--fill_missing=interpolate"),
        "good_semicolon_decimal_commas": _jena("semicolon_decimal.csv", "--csv_separator=;",
                                               "--decimal=,")}
ALL_CASES = {**CASES, **{name: (case, None) for name, case in GOOD.items()}}


def _snapshot(directory: Path) -> dict:
  """relative path -> sha256 of every file (and '<dir>' for every directory) below."""
  found = {}
  for path in sorted(directory.rglob("*")):
    key = str(path.relative_to(directory))
    found[key] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
  return found


def _prepare(tmp: Path, name: str, case: dict) -> dict:
  """The case's directory (its --workdir is run/, its cache cache/), and the driver's input."""
  case_dir = tmp / "cases" / name
  case_dir.mkdir(parents=True)
  for relative, text in case.get("before", {}).items():
    (case_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    (case_dir / relative).write_text(text)
  fill = lambda s: s.replace("{in}", str(tmp / "inputs")).replace("{case}", str(case_dir))
  argv = [fill(a) for a in case["argv"]]
  if case.get("workdir", True) and not any(a.startswith("--workdir=") for a in argv):
    argv.append(f"--workdir={case_dir / 'run'}")
  # No case may reach the network: a download goes to a proxy that refuses at once.
  env = {"RNN_JAX_DATA_CACHE": str(case_dir / "cache"), "JAX_PLATFORMS": "cpu",
         "https_proxy": _UNREACHABLE_PROXY, "http_proxy": _UNREACHABLE_PROXY, "no_proxy": "",
         "NO_PROXY": "", **{k: fill(v) for k, v in case.get("env", {}).items()}}
  patch = {k: fill(v) for k, v in case.get("patch", {}).items()}
  return {"argv": argv, "env": env, "patch": patch}


def _drive(cases: dict, tmp: Path) -> dict:
  """name -> {rc, stderr, stdout}: one driver process per experiment, the two side by side."""
  modules = sorted({case["module"] for case, _ in cases.values()})
  names = {m: [name for name, (case, _) in cases.items() if case["module"] == m] for m in modules}
  drivers = {}
  for m in modules:
    (tmp / f"{m}.cases.json").write_text(
        json.dumps([cases[name][0]["prepared"] for name in names[m]]))
    drivers[m] = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, m, tmp / f"{m}.cases.json", tmp / f"{m}.results.json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  results = {}
  for m, driver in drivers.items():
    _, stderr = driver.communicate(timeout=600)
    assert driver.returncode == 0, stderr[-3000:]
    results.update(zip(names[m], json.loads((tmp / f"{m}.results.json").read_text())))
  return results


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  directory = tmp_path_factory.mktemp("bad_inputs") / "inputs"
  directory.mkdir()
  _write_inputs(directory)
  return directory


@pytest.fixture(scope="module")
def outcomes(inputs):
  """name -> (result, snapshot before, snapshot after, case dir), all cases run once."""
  tmp = inputs.parent
  prepared = {name: ({**case, "prepared": _prepare(tmp, name, case)}, pattern)
              for name, (case, pattern) in ALL_CASES.items()}
  before = {name: _snapshot(tmp / "cases" / name) for name in ALL_CASES}
  results = _drive(prepared, tmp)
  return {name: (results[name], before[name], _snapshot(tmp / "cases" / name),
                 tmp / "cases" / name) for name in ALL_CASES}


def _check_one_line_error(rc, stderr, pattern):
  """Exit 2 and one `error: ...` line (or absl's two-line report of a bad flag, exit 1)."""
  assert "Traceback" not in stderr, stderr
  lines = [line for line in stderr.splitlines()
           if line.strip() and not _ABSL_LOG_LINE.match(line)]
  if lines and lines[0].startswith("FATAL Flags parsing error"):
    assert rc == 1 and len(lines) == 2 and lines[1].startswith("Pass --help"), (rc, stderr)
    message = lines[0]
  else:
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (rc, stderr)
    message = lines[0][len("error: "):]
  assert re.search(pattern, message), (pattern, message)


def _check_nothing_half_written(before: dict, after: dict):
  """The workdir (run/) as it was; in the cache, old files intact and no partial file."""
  in_run = lambda snapshot: {k: v for k, v in snapshot.items() if k.split(os.sep)[0] == "run"}
  assert in_run(after) == in_run(before)
  cache_before = {k: v for k, v in before.items() if k.startswith("cache" + os.sep)}
  cache_after = {k: v for k, v in after.items() if k.startswith("cache" + os.sep)}
  assert all(cache_after.get(k) == v for k, v in cache_before.items()), (before, after)
  added = [Path(k).name for k in cache_after if k not in cache_before]
  # The only file a failed run may add: the IMDB ranks, complete (written atomically).
  assert all(re.fullmatch(r"aclImdb-ranks-[0-9a-f]{16}\.npz", n) for n in added), added


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_leaves_nothing(outcomes, name):
  result, before, after, _ = outcomes[name]
  _check_one_line_error(result["rc"], result["stderr"], CASES[name][1])
  _check_nothing_half_written(before, after)


@pytest.mark.parametrize("name", list(GOOD))
def test_good_input_passes_the_same_driver(outcomes, name):
  """The harness can succeed: a CSV with a BOM, forecasting the very next row (--delay=0);
  a spreadsheet's trailing comma (the empty column dropped, with a note); ';' separators
  with decimal commas, read with --csv_separator and --decimal. All give the same numbers."""
  result, _, _, case_dir = outcomes[name]
  assert result["rc"] == 0, result["stderr"][-2000:]
  assert "Traceback" not in result["stderr"]
  results = json.loads((case_dir / "run" / "naive" / "results.json").read_text())
  assert results["features"] == ["a", "b", "T"]
  assert np.isfinite(results["val"]["mae"])
  if name == "good_trailing_comma":
    assert "dropped the unnamed empty column" in result["stderr"]
  if name != "good_bom_delay_0":
    reference = json.loads((outcomes["good_bom_delay_0"][3] / "run" / "naive" /
                            "results.json").read_text())
    assert results["delay"] == 3 and reference["delay"] == 0
    assert results["target_std"] == pytest.approx(reference["target_std"])


@pytest.mark.parametrize("module, flags, pattern", [
    ("experiments.jena_forecast", ["--data_path={in}/inf.csv", *JENA_SIZES, *SPLIT],
     r"inf\.csv line 51, column 'T': not a number: 'inf'"),
    ("experiments.imdb_sentiment", ["--data_path={in}/not_utf8.tar.gz", *IMDB_SIZES],
     r"not_utf8\.tar\.gz: aclImdb/train/pos/99_9\.txt: not UTF-8 text"),
], ids=["jena_forecast", "imdb_sentiment"])
def test_the_same_as_a_plain_python_m_run(inputs, tmp_path, module, flags, pattern):
  argv = [f.replace("{in}", str(inputs)) for f in flags] + [f"--workdir={tmp_path / 'run'}"]
  proc = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True,
                        cwd=REPO, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu",
                             "RNN_JAX_DATA_CACHE": str(tmp_path / "cache")})
  _check_one_line_error(proc.returncode, proc.stderr, pattern)
  assert not (tmp_path / "run").exists()
  assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")
