"""The Jena climate series (Chollet's temperature forecasting): its source and its layout.

  path = jena.locate(data_path=None)   # the CSV (or zip) to read; downloads it if needed
  series = timeseries.read_csv(path, jena.csv_spec(allow_irregular_time=jena.is_canonical(path)))

`jena_climate_2009_2016.csv` (Max Planck Institute for Biogeochemistry, recorded every 10
minutes, 2009-2016; 420,551 rows) comes zipped from the URL Keras's examples use. No
sha256 of that zip is published, so the extracted CSV is recognised by its git blob id
(`git hash-object`), which public copies record; the download is kept only if its CSV
matches. A copy in another form (line endings, re-saved by pandas) is recognised by its
content: header, row count, first and last timestamps. The canonical file has gaps and
repeated timestamps; Chollet's generator (Deep Learning with Python, 1st ed., §6.3) takes
its rows as evenly spaced, and so does `csv_spec` for it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import urllib.error
import urllib.request
import zipfile
import zlib
from typing import Optional

from rnn_jax.io import files
from rnn_jax.data import download, timeseries
from rnn_jax.errors import UserError

URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/jena_climate_2009_2016.csv.zip"
CSV_NAME = "jena_climate_2009_2016.csv"
CSV_GIT_BLOB = "3dc17139ed8afe4f693b3b88cbdd6e3a69e2de0c"
TARGET = "T (degC)"
TIME_COLUMN = "Date Time"
TARGET_UNIT = "degC"
SPLIT = timeseries.Split(train_end=200000, val_end=300000)
# The Jena defaults (Chollet's windows): 10 days back, one sample per hour, the
# temperature 24 hours ahead.
LOOKBACK, STEP, DELAY = 1440, 6, 144


def csv_spec(**overrides) -> timeseries.CsvSpec:
  """How to read the Jena CSV: target `T (degC)`, times like `01.01.2009 00:10:00`."""
  spec = dict(target=TARGET, time_column=TIME_COLUMN, time_format=timeseries.JENA_TIME_FORMAT)
  spec.update(overrides)
  return timeseries.CsvSpec(**spec)


def git_blob_id(stream, size: int) -> str:
  """`git hash-object` of `size` bytes read from a binary stream."""
  digest = hashlib.sha1(f"blob {size}\0".encode())
  for chunk in iter(lambda: stream.read(1 << 20), b""):
    digest.update(chunk)
  return digest.hexdigest()


# The canonical CSV's content: what a copy with other line endings, or re-saved by pandas,
# still has.
HEADER = ("Date Time", "p (mbar)", "T (degC)", "Tpot (K)", "Tdew (degC)", "rh (%)",
          "VPmax (mbar)", "VPact (mbar)", "VPdef (mbar)", "sh (g/kg)", "H2OC (mmol/mol)",
          "rho (g/m**3)", "wv (m/s)", "max. wv (m/s)", "wd (deg)")
ROWS, FIRST_TIME, LAST_TIME = 420_551, "01.01.2009 00:10:00", "01.01.2017 00:00:00"


def is_canonical(path) -> bool:
  """Whether `path` (a CSV, or a zip holding one) is the canonical Jena CSV: its
  bytes (its git blob id), or the same content in another form (`same_content`)."""
  path = pathlib.Path(path)
  try:
    if path.suffix.lower() == ".zip":
      with zipfile.ZipFile(path) as archive:
        members = [i for i in archive.infolist() if i.filename.endswith(".csv")]
        if len(members) != 1:
          return False
        with archive.open(members[0]) as f:
          if git_blob_id(f, members[0].file_size) == CSV_GIT_BLOB:
            return True
        with archive.open(members[0]) as f:
          return same_content(f)
    with open(path, "rb") as f:
      if git_blob_id(f, path.stat().st_size) == CSV_GIT_BLOB:
        return True
    with open(path, "rb") as f:
      return same_content(f)
  except (OSError, EOFError, zipfile.BadZipFile, zlib.error):
    return False  # unreadable: the reader that follows says why, in the user's terms


def same_content(stream) -> bool:
  """Whether a binary CSV stream has the Jena CSV's header, its 420,551 rows and its first
  and last timestamps, whatever its line endings or quoting."""
  fields = lambda line: [f.strip().strip('"') for f in line.decode("utf-8", "replace").split(",")]
  header = stream.readline()
  if tuple(fields(header)) not in (HEADER, ("",) + HEADER):  # pandas may add an index
    return False
  offset = len(fields(header)) - len(HEADER)
  rows, first, last = 0, None, None
  for line in stream:
    if not line.strip():
      continue
    rows += 1
    if rows > ROWS:
      return False
    if first is None:
      first = fields(line)[offset]
    last = line
  return (rows == ROWS and first == FIRST_TIME and last is not None
          and fields(last)[offset] == LAST_TIME)


def _extract_verified(zip_path: pathlib.Path, csv_path: pathlib.Path) -> None:
  """Extracts the CSV from `zip_path` to `csv_path` if its blob id is canonical."""
  if not is_canonical(zip_path):
    raise UserError(f"{URL} did not hold the canonical {CSV_NAME} (git blob {CSV_GIT_BLOB})")
  with zipfile.ZipFile(zip_path) as archive:
    member = next(i for i in archive.infolist() if i.filename.endswith(CSV_NAME))
    fd, tmp = files.private_temp(csv_path)
    try:
      with files.writing(csv_path):
        with os.fdopen(fd, "wb") as out, archive.open(member) as f:
          for chunk in iter(lambda: f.read(1 << 20), b""):
            out.write(chunk)
        os.replace(tmp, csv_path)
    finally:
      if os.path.exists(tmp):
        os.unlink(tmp)


def _download(cache_dir: pathlib.Path, timeout: float) -> pathlib.Path:
  """Downloads the zip into a temporary file and keeps only its verified CSV."""
  csv_path = cache_dir / CSV_NAME
  where = (f"put {CSV_NAME} or {CSV_NAME}.zip in {cache_dir}{os.sep}, or pass "
           f"--data_path=/path/to/{CSV_NAME}[.zip]")
  try:
    cache_dir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create the data cache {cache_dir}: {e.strerror or e}") from None
  fd, tmp = files.private_temp(cache_dir / f"{CSV_NAME}.zip")
  logging.info("downloading %s", URL)
  try:
    with files.writing(cache_dir / f"{CSV_NAME}.zip"), os.fdopen(fd, "wb") as out:
      try:
        with urllib.request.urlopen(URL, timeout=timeout) as response:
          for chunk in iter(lambda: response.read(1 << 20), b""):
            out.write(chunk)
      except (urllib.error.URLError, OSError) as e:
        if files.is_disk_error(e):
          raise
        reason = getattr(e, "reason", None) or e
        raise UserError(f"cannot download {URL} ({reason}); {where}") from None
    _extract_verified(pathlib.Path(tmp), csv_path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return csv_path


def locate(data_path: Optional[str] = None, cache_dir: Optional[os.PathLike] = None, *,
           timeout: float = 60.0) -> pathlib.Path:
  """The Jena CSV to read: `data_path` (a .csv or .zip), else the cached copy, else a download.

  The cache is `download.default_cache_dir()` (the user's cache) unless `cache_dir`.
  Raises UserError saying where to put the file when it is absent and cannot be downloaded.
  """
  if data_path:
    path = pathlib.Path(data_path)
    if not path.exists():
      raise UserError(f"--data_path={data_path}: no such file")
    if not path.is_file():  # a directory, a fifo (which would block), a device
      raise UserError(f"--data_path={data_path}: not a regular file")
    return path
  cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else download.default_cache_dir()
  for name in (CSV_NAME, CSV_NAME + ".zip"):
    if (cache_dir / name).is_file():
      return cache_dir / name
  return _download(cache_dir, timeout)
