"""Evenly spaced multivariate series from CSV files: read, validate, fill, normalize, split.

  spec = CsvSpec(target="T (degC)", time_column="Date Time")
  series = read_csv("jena_climate_2009_2016.csv", spec)   # -> Series
  norm = Normalization.fit(series.values[:train_end])      # training rows only
  data = norm(series.values)                                # <float32>[rows, features]

Every problem with the file is a `UserError` of one line naming the file, the line (as
an editor numbers it: the header is line 1) and the column. Policies:

  * ragged rows (a field count that differs from the header's), an empty file, a missing
    file, a missing target column and a non-number in a numeric column are errors;
  * missing cells (empty, `NA`, `NaN`, ...) are an error naming lines and columns unless
    `fill_missing` is "interpolate" (linear in the row index) or "ffill" (the last value;
    leading gaps take the first value);
  * duplicated or decreasing timestamps, and uneven spacing, are errors unless
    `allow_irregular_time`, which takes the rows as evenly spaced as Chollet's generator
    (Deep Learning with Python, 1st ed., §6.3) does on the Jena file (that file has both
    gaps and repeats);
  * a column counts as numeric when most of its filled cells are numbers; text columns
    (a wind direction "NNW", a station name) are left out of the default features;
  * a trailing unnamed, empty column (a spreadsheet's comma at the end of every line) is
    dropped with a note; `separator` and `decimal` read e.g. `;`-separated files with
    decimal commas, and a file that looks that way without them is refused with the hint;
  * a column whose values overflow the normalization (e.g. 1e300: its std is not finite,
    or its normalized values exceed float32) is an error naming it.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import pathlib
import zipfile
import zlib
from typing import Iterator, Optional, Sequence

import numpy as np
import pandas as pd

from rnn_jax.errors import UserError

MISSING_TOKENS = frozenset({"", "NA", "N/A", "NaN", "nan", "NAN", "null", "NULL", "None", "#N/A",
                            "-nan", "-NaN"})
FILL_MODES = ("interpolate", "ffill")
JENA_TIME_FORMAT = "%d.%m.%Y %H:%M:%S"
_TIME_PARTS = ("year", "month", "day", "hour", "minute", "second")
_EXAMPLES = 3  # how many offending cells an error message quotes


@dataclasses.dataclass(frozen=True)
class CsvSpec:
  """What to read from a CSV (each field is the experiment flag of the same name)."""
  target: str
  features: Optional[Sequence[str]] = None   # None: every numeric column but `exclude`
  exclude: Sequence[str] = ()
  time_column: Optional[str] = None          # one column of timestamps, or
  time_columns: Optional[Sequence[str]] = None  # several: year,month,day[,hour,minute,second]
  time_format: Optional[str] = None          # strptime format; None tries Jena's, then ISO 8601
  fill_missing: Optional[str] = None         # None (missing cells are an error) | FILL_MODES
  allow_irregular_time: bool = False
  separator: str = ","                       # the field separator (one character)
  decimal: str = "."                         # the decimal mark of numbers ("." or ",")


@dataclasses.dataclass(frozen=True)
class Series:
  """A series read from `path`: `values` <float64>[rows, features] (columns `columns`).

  `times` <datetime64[ns]>[rows] (None without a time column); `lines` <int64>[rows] the
  file line of each row; `spacing` the interval between rows (None without times).
  """
  path: str
  columns: tuple[str, ...]
  values: np.ndarray
  target: str
  times: Optional[np.ndarray]
  lines: np.ndarray
  spacing: Optional[np.timedelta64]

  @property
  def target_index(self) -> int:
    return self.columns.index(self.target)

  def __len__(self) -> int:
    return len(self.values)


@dataclasses.dataclass(frozen=True)
class Normalization:
  """(x - mean) / std per column, from the training rows only (as Chollet's §6.3 does).

  A constant column (std 0) is divided by 1 instead, so it becomes 0, never NaN.
  """
  mean: np.ndarray  # <float64>[features]
  std: np.ndarray   # <float64>[features]

  @classmethod
  def fit(cls, values: np.ndarray, names: Optional[Sequence[str]] = None) -> "Normalization":
    """From the training rows; a column whose mean or std overflows float64 is a
    UserError naming it (`names`, else its index)."""
    with np.errstate(over="ignore", invalid="ignore"):
      mean = values.mean(axis=0)
      std = values.std(axis=0)
    overflow = np.nonzero(~np.isfinite(mean) | ~np.isfinite(std))[0]
    if len(overflow):
      _refuse_scale(values, overflow[0], names, "its mean or standard deviation overflows")
    tiny = 1e-12 * np.maximum(1.0, np.abs(mean))
    return cls(mean, np.where(std > tiny, std, 1.0))

  def check(self, values: np.ndarray, names: Optional[Sequence[str]] = None) -> None:
    """A UserError naming the first column whose normalized values overflow float32."""
    with np.errstate(over="ignore", invalid="ignore"):
      normalized = (values - self.mean) / self.std
      bad = np.nonzero(~(np.abs(normalized) <= np.finfo(np.float32).max).all(axis=0))[0]
    if len(bad):
      _refuse_scale(values, bad[0], names, "its normalized values overflow float32")

  def __call__(self, values: np.ndarray) -> np.ndarray:
    return ((values - self.mean) / self.std).astype(np.float32)


def _refuse_scale(values, column: int, names, why: str):
  name = repr(names[column]) if names is not None else str(column)
  raise UserError(f"column {name}: values up to {np.nanmax(np.abs(values[:, column])):.3g} are "
                  f"too large to normalize ({why}); rescale the column or leave it out "
                  "(--exclude, --features)")


# ---------------------------------------------------------------------------- reading


@contextlib.contextmanager
def open_text(path) -> Iterator[io.TextIOBase]:
  """The CSV text of `path`: a .csv file, or the one .csv member of a .zip."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"{path}: no such file")
  if path.suffix.lower() != ".zip":
    with open(path, newline="", encoding="utf-8-sig") as f:
      yield f
    return
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile:
    raise UserError(f"{path}: not a zip file") from None
  with archive:
    members = [n for n in archive.namelist()
               if n.lower().endswith(".csv") and not n.startswith("__MACOSX")]
    if len(members) != 1:
      raise UserError(f"{path}: expected one .csv file in the zip, found {len(members)}")
    with archive.open(members[0]) as raw:
      yield io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def _record_lines(path, separator: str = ",") -> tuple[list[str], np.ndarray]:
  """(header, file line of every data record); ragged records are an error.

  Blank lines are skipped, as pandas skips them, so records and pandas rows align.
  """
  header, lines = None, []
  with open_text(path) as f:
    reader = csv.reader(f, delimiter=separator)
    try:
      end = 0  # the line the previous record ended on
      for record in reader:
        start, end = end + 1, reader.line_num
        if not record:
          continue
        if header is None:
          header = record
        elif len(record) != len(header):
          where = (f"line {end}" if start == end else
                   f"lines {start}-{end} (an unclosed quote on line {start}?)")
          looks = next((s for s in ";\t|" if s != separator and len(header) == 1
                        and s in header[0]), None)
          hint = (f" (the file looks {looks!r}-separated: pass --csv_separator={looks!r}, and "
                  "--decimal=',' if its numbers have decimal commas)" if looks else "")
          raise UserError(f"{path} {where}: {len(record)} fields, the header (line 1) has "
                          f"{len(header)}{hint}")
        else:
          lines.append(reader.line_num)
    except csv.Error as e:
      raise UserError(f"{path} line {reader.line_num}: cannot parse: {e}") from None
    except UnicodeDecodeError as e:
      raise UserError(f"{path} line {_first_undecodable_line(path)}: not UTF-8 text "
                      f"({e.reason}); save the file as UTF-8") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
      raise UserError(f"{path}: truncated or corrupt file ({e})") from None
  if header is None:
    raise UserError(f"{path}: empty file")
  header = [name.strip() for name in header]
  repeated = sorted({n for n in header if header.count(n) > 1})
  if repeated:
    raise UserError(f"{path} line 1: column {repeated[0]!r} appears twice in the header")
  return header, np.asarray(lines, np.int64)


def _first_undecodable_line(path) -> int:
  """The first line of `path` (or its zipped CSV) that is not UTF-8 (text decodes in chunks,
  so the decoder's position does not tell the line)."""
  with open_text(path) as f:
    raw = f.buffer if hasattr(f, "buffer") else f
    for number, line in enumerate(raw, start=1):
      try:
        line.decode("utf-8")
      except UnicodeDecodeError:
        return number
  return 0


def _read_strings(path, header: list[str], separator: str = ",") -> pd.DataFrame:
  """Every cell as a string, as written (pandas' C parser; no type guessing)."""
  with open_text(path) as f:
    frame = pd.read_csv(f, dtype=str, keep_default_na=False, na_filter=False,
                        index_col=False, skip_blank_lines=True, sep=separator)
  frame.columns = header
  return frame


@dataclasses.dataclass(frozen=True)
class _Column:
  numbers: np.ndarray  # <float64>[rows], NaN where missing or not a number
  missing: np.ndarray  # <bool>[rows]
  bad: np.ndarray      # <bool>[rows], filled but not a number

  @property
  def is_numeric(self) -> bool:
    """Most filled cells are numbers (a column with no filled cell counts as numeric)."""
    return 2 * int(self.bad.sum()) <= int((~self.missing).sum())


def _parse_column(strings: pd.Series, decimal: str = ".") -> _Column:
  if decimal != ".":
    strings = strings.str.replace(decimal, ".", regex=False)
  numbers = pd.to_numeric(strings, errors="coerce").to_numpy(np.float64)  # strips blanks
  not_number = ~np.isfinite(numbers)  # only these cells need a closer look ('inf' is bad)
  missing = np.zeros_like(not_number)
  missing[not_number] = strings[not_number].str.strip().isin(MISSING_TOKENS).to_numpy()
  return _Column(numbers, missing, not_number & ~missing)


def _cells(lines, rows, names) -> str:
  """'line 5 column 'a', line 9 column 'b'' for the first few (row, column name) pairs."""
  return ", ".join(f"line {lines[r]} column {n!r}" for r, n in list(zip(rows, names))[:_EXAMPLES])


def _fill(path, lines, names: list[str], values: np.ndarray, missing: np.ndarray,
          mode: Optional[str]) -> np.ndarray:
  """values with missing cells filled by `mode`, or a UserError listing them."""
  if not missing.any():
    return values
  rows, cols = np.nonzero(missing)
  if mode is None:
    per_column = ", ".join(f"{names[c]!r} {int(n)}" for c, n in enumerate(missing.sum(0)) if n)
    raise UserError(
        f"{path}: {len(rows)} missing cells in {len(np.unique(rows))} rows, e.g. "
        f"{_cells(lines, rows, [names[c] for c in cols])} (per column: {per_column}); "
        f"fill them with --fill_missing=interpolate or --fill_missing=ffill")
  if mode not in FILL_MODES:
    raise UserError(f"--fill_missing={mode!r} is not one of {FILL_MODES}")
  empty = [names[c] for c in range(len(names)) if missing[:, c].all()]
  if empty:
    raise UserError(f"{path}: column {empty[0]!r} has no values to fill from")
  frame = pd.DataFrame(np.where(missing, np.nan, values))
  if mode == "interpolate":
    frame = frame.interpolate(method="linear", limit_direction="both", axis=0)
  else:
    frame = frame.ffill().bfill()
  return frame.to_numpy(np.float64)


def _parse_times(path, strings: pd.DataFrame, lines, spec: CsvSpec) -> Optional[np.ndarray]:
  """<datetime64[ns]>[rows] from the time column(s), or None; unparseable cells are errors."""
  if spec.time_column is not None and spec.time_columns:
    raise UserError("give --time_column or --time_columns, not both")
  if spec.time_columns:
    names = list(spec.time_columns)
    if len(names) > len(_TIME_PARTS):
      raise UserError(f"--time_columns: at most {len(_TIME_PARTS)} columns ({','.join(_TIME_PARTS)})")
    lowered = [n.lower() for n in names]
    parts = lowered if set(lowered) <= set(_TIME_PARTS) else _TIME_PARTS[:len(names)]
    if not {"year", "month", "day"} <= set(parts):
      raise UserError(f"--time_columns={','.join(names)}: needs year, month and day")
    columns = {}
    for name, part in zip(names, parts):
      parsed = _parse_column(strings[name])
      bad = np.nonzero(parsed.missing | parsed.bad)[0]
      if len(bad):
        raise UserError(f"{path} line {lines[bad[0]]}, column {name!r}: not a number: "
                        f"{strings[name].iloc[bad[0]]!r}")
      columns[part] = parsed.numbers
    times = pd.to_datetime(pd.DataFrame(columns), errors="coerce")
    bad = np.nonzero(times.isna().to_numpy())[0]
    if len(bad):
      raise UserError(f"{path} line {lines[bad[0]]}, columns {','.join(names)}: not a valid time")
    return times.to_numpy("datetime64[ns]")
  if spec.time_column is None:
    return None
  cells = strings[spec.time_column].str.strip()
  formats = [spec.time_format] if spec.time_format else [JENA_TIME_FORMAT, "ISO8601"]
  for fmt in formats:
    # In UTC, so that offsets (e.g. a change to daylight saving time) keep the spacing.
    try:
      times = pd.to_datetime(cells, format=fmt, errors="coerce", utc=True)
    except ValueError as e:  # a bad directive, e.g. '%Q'
      raise UserError(f"--time_format={fmt!r}: {e}") from None
    if not times.isna().any():
      return times.dt.tz_convert(None).to_numpy("datetime64[ns]")
  first = int(np.nonzero(times.isna().to_numpy())[0][0])
  hint = "" if spec.time_format else " (pass --time_format, a strptime format)"
  in_format = f" in format {spec.time_format!r}" if spec.time_format else ""
  raise UserError(f"{path} line {lines[first]}, column {spec.time_column!r}: not a "
                  f"time{in_format}: {cells.iloc[first]!r}{hint}")


def _describe(delta: np.timedelta64) -> str:
  return str(pd.Timedelta(delta))


def _when(time: np.datetime64) -> str:
  return str(pd.Timestamp(time))


def _check_spacing(path, times: np.ndarray, lines, allow_irregular: bool) -> Optional[np.timedelta64]:
  """The rows' spacing (the most common interval); irregular times are errors (see module doc)."""
  if len(times) < 2:
    return None
  gaps = np.diff(times)
  values, counts = np.unique(gaps, return_counts=True)
  spacing = values[np.argmax(counts)]
  if allow_irregular:
    return spacing
  back = np.nonzero(gaps <= np.timedelta64(0))[0]
  if len(back):
    i = int(back[0])
    what = "repeats" if gaps[i] == np.timedelta64(0) else "comes before"
    raise UserError(f"{path} line {lines[i + 1]}: timestamp {_when(times[i + 1])} {what} line "
                    f"{lines[i]}'s {_when(times[i])}; timestamps must increase (sort the file and drop "
                    f"repeats, or pass --allow_irregular_time)")
  uneven = np.nonzero(gaps != spacing)[0]
  if len(uneven):
    i = int(uneven[0])
    raise UserError(f"{path} line {lines[i + 1]}: timestamp {_when(times[i + 1])} is "
                    f"{_describe(gaps[i])} after line {lines[i]}, but the rows are "
                    f"{_describe(spacing)} apart ({len(uneven)} of {len(gaps)} intervals "
                    f"differ); resample the file to even spacing, or pass "
                    f"--allow_irregular_time to take the rows as evenly spaced")
  return spacing


def read_csv(path, spec: CsvSpec) -> Series:
  """The series `spec` describes, read from the CSV (or zipped CSV) at `path`."""
  path = str(path)
  if len(spec.separator) != 1 or spec.separator in "\"\r\n":
    raise UserError(f"--csv_separator={spec.separator!r} must be one character (not a quote)")
  if spec.decimal not in (".", ",") or spec.decimal == spec.separator:
    raise UserError(f"--decimal={spec.decimal!r} must be '.' or ',', and not the separator "
                    f"(--csv_separator={spec.separator!r})")
  header, lines = _record_lines(path, spec.separator)
  strings = _read_strings(path, header, spec.separator)
  if len(strings) != len(lines):  # quoting pandas and csv read differently
    raise UserError(f"{path}: cannot parse the file consistently (unbalanced quotes?)")
  if not len(lines):
    raise UserError(f"{path}: no data rows after the header")
  if len(header) > 1 and header[-1] == "" and not strings.iloc[:, -1].str.strip().any():
    logging.warning("%s: dropped the unnamed empty column at the end of every line (a "
                    "trailing %r)", path, spec.separator)
    header, strings = header[:-1], strings.iloc[:, :-1]

  separator = next((s for s in ";\t|" if len(header) == 1 and s in header[0]), None)
  def check_names(names, flag, hint=""):
    for name in names:
      if name not in header:
        if separator:
          hint += (f" (the file looks {separator!r}-separated: pass --csv_separator="
                   f"{separator!r}, and --decimal=',' if its numbers have decimal commas)")
        raise UserError(f"{path} line 1: no column {name!r} (from {flag}){hint}; the columns "
                        f"are {', '.join(header)}")

  check_names([spec.target], "--target")
  check_names(spec.exclude, "--exclude")
  time_names = list(spec.time_columns or ([spec.time_column] if spec.time_column else []))
  if spec.time_columns:
    check_names(time_names, "--time_columns")
  else:
    check_names(time_names, "--time_column", " (--time_column='' reads no times)")
  if spec.target in time_names:
    raise UserError(f"--target={spec.target!r} is a time column")
  if spec.features is not None:
    check_names(spec.features, "--features")
  times = _parse_times(path, strings, lines, spec)
  spacing = None if times is None else _check_spacing(path, times, lines,
                                                      spec.allow_irregular_time)

  if spec.features is not None:
    chosen = [n for n in header if n in set(spec.features) | {spec.target}]
  else:
    chosen = [n for n in header
              if n == spec.target or (n not in spec.exclude and n not in time_names)]
  parsed = {}
  for name in chosen:
    column = _parse_column(strings[name], spec.decimal)
    explicit = name == spec.target or spec.features is not None
    if not column.is_numeric and not explicit:
      continue  # a text column: not a default feature
    bad = np.nonzero(column.bad)[0]
    if len(bad):
      cell = strings[name].iloc[bad[0]]
      hint = (" (a decimal comma? pass --decimal=',')"
              if spec.decimal == "." and spec.separator != "," and "," in cell else "")
      raise UserError(f"{path} line {lines[bad[0]]}, column {name!r}: not a number: "
                      f"{cell!r}{hint}")
    parsed[name] = column
  names = list(parsed)
  values = np.stack([parsed[n].numbers for n in names], axis=1)
  missing = np.stack([parsed[n].missing for n in names], axis=1)
  values = _fill(path, lines, names, values, missing, spec.fill_missing)
  return Series(path, tuple(names), values, spec.target, times, lines, spacing)


# ---------------------------------------------------------------------------- splits


@dataclasses.dataclass(frozen=True)
class Split:
  """Row indices that end the training and validation parts (the Jena defaults: 200000, 300000)."""
  train_end: int
  val_end: int


def split_rows(num_rows: int, *, train_end: Optional[int] = None, val_end: Optional[int] = None,
               train_fraction: Optional[float] = None, val_fraction: Optional[float] = None,
               default: Split = Split(200000, 300000)) -> Split:
  """The split, from row indices or fractions of `num_rows` (not both kinds).

  Fractions: train_end = int(num_rows * train_fraction), val_end = int(num_rows *
  (train_fraction + val_fraction)); the test part is what follows. Neither: `default`.
  """
  rows_given = train_end is not None or val_end is not None
  fractions_given = train_fraction is not None or val_fraction is not None
  if rows_given and fractions_given:
    raise UserError("give --train_end/--val_end or --train_fraction/--val_fraction, not both")
  if fractions_given:
    if train_fraction is None or val_fraction is None:
      raise UserError("--train_fraction and --val_fraction go together")
    if not (0 < train_fraction and 0 < val_fraction and train_fraction + val_fraction <= 1):
      raise UserError(f"--train_fraction={train_fraction} and --val_fraction={val_fraction} must "
                      f"be positive and add up to at most 1")
    train_end = int(num_rows * train_fraction)
    val_end = int(num_rows * (train_fraction + val_fraction))
  elif rows_given:
    if train_end is None or val_end is None:
      raise UserError("--train_end and --val_end go together")
  else:
    train_end, val_end = default.train_end, default.val_end
  if not 0 < train_end < val_end <= num_rows:
    raise UserError(f"need 0 < --train_end ({train_end}) < --val_end ({val_end}) <= the "
                    f"number of rows ({num_rows})")
  return Split(train_end, val_end)
