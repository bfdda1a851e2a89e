"""Fetch a public data file once, verify it, and keep it in a local cache.

  path = fetch("https://host/data.tar.gz", sha256="ab12...")   # -> pathlib.Path

The cache is the user's cache directory (`platformdirs.user_cache_dir("rnn_jax")`, e.g.
~/.cache/rnn_jax on Linux); the environment variable `RNN_JAX_DATA_CACHE` overrides it. A cached file whose sha256 matches is returned
without touching the network. Otherwise the file is streamed into a temporary file in
the cache directory, its size and sha256 are checked, and only then is it moved into
place with `os.replace`: an interrupted, truncated or corrupt transfer never leaves a
file under the final name, and the temporary file is always removed.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import pathlib
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional, Union

from rnn_jax.io import files
from rnn_jax.errors import UserError

PathLike = Union[str, os.PathLike]

CACHE_ENV = "RNN_JAX_DATA_CACHE"
_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


def default_cache_dir() -> pathlib.Path:
  """`$RNN_JAX_DATA_CACHE`, else the user's cache directory for rnn_jax."""
  override = os.environ.get(CACHE_ENV)
  if override:
    return pathlib.Path(override)
  import platformdirs  # pylint: disable=import-outside-toplevel
  return pathlib.Path(platformdirs.user_cache_dir("rnn_jax"))


def sha256_of(path: PathLike) -> str:
  """The hex sha256 of a file's bytes, read in 1 MiB chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _filename_of(url: str) -> str:
  name = pathlib.PurePosixPath(urllib.parse.urlsplit(url).path).name
  if not name:
    raise ValueError(f"cannot tell a file name from {url!r}; pass filename=")
  return name


def _stream_to(response, out, url: str) -> tuple[int, str]:
  """Copies the response body into `out`; returns (bytes read, sha256).

  Raises UserError when fewer bytes arrive than the server's Content-Length promised
  (http.client raises IncompleteRead for that, or the body simply ends early).
  """
  expected = response.headers.get("Content-Length")
  digest, size = hashlib.sha256(), 0
  while chunk := response.read(_CHUNK):
    digest.update(chunk)
    out.write(chunk)
    size += len(chunk)
  if expected is not None and expected.isdigit() and size != int(expected):
    raise UserError(f"truncated download of {url}: got {size} of {expected} bytes")
  return size, digest.hexdigest()


def fetch(url: str, sha256: str, filename: Optional[str] = None,
          cache_dir: Optional[PathLike] = None, *, timeout: float = 60.0) -> pathlib.Path:
  """The verified local copy of `url`, downloaded into `cache_dir` if needed.

  Args:
    url: where the file lives (http, https or file URLs: whatever urllib opens).
    sha256: the file's expected hex sha256; the download is kept only if it matches.
    filename: its name in the cache; default the last component of the URL's path.
    cache_dir: default `default_cache_dir()`.
    timeout: seconds to wait for the server on each blocking operation.

  Returns:
    The path `cache_dir/filename`, whose sha256 is `sha256`.

  Raises:
    UserError: naming the URL, when the server answers with an HTTP error, the network
      is unreachable, the transfer is truncated or the checksum differs. No file is left
      behind in the cache for any of these.
  """
  sha256 = sha256.lower()
  if not _SHA256.fullmatch(sha256):
    raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
  cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  path = cache_dir / (filename or _filename_of(url))

  stale = None  # a file already at `path` whose checksum is wrong
  if path.is_file():
    found = sha256_of(path)
    if found == sha256:
      return path
    stale = f"{path} has sha256 {found}, expected {sha256}"
    logging.warning("%s; downloading it again", stale)

  try:
    cache_dir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create the data cache {cache_dir}: {e.strerror or e}") from None

  print(f"downloading {url} to {path}", flush=True)  # shown at any verbosity: it can be slow
  fd, tmp_name = files.private_temp(path)
  try:
    with files.writing(path), os.fdopen(fd, "wb") as out:
      try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
          size, found = _stream_to(response, out, url)
      except urllib.error.HTTPError as e:
        raise UserError(f"could not download {url}: HTTP {e.code} {e.reason}") from None
      except http.client.IncompleteRead as e:
        raise UserError(f"truncated download of {url}: got {len(e.partial)} more bytes, "
                        f"{e.expected} missing") from None
      except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        if files.is_disk_error(e):
          raise
        reason = getattr(e, "reason", None) or e
        hint = f" ({stale})" if stale else ""
        raise UserError(f"could not download {url}: {reason}; put the file at {path}{hint} "
                        f"or pass --data_path") from None
    if found != sha256:
      raise UserError(f"checksum mismatch for {url}: got sha256 {found} ({size} bytes), "
                      f"expected {sha256}")
    with files.writing(path):
      os.replace(tmp_name, path)
  finally:
    if os.path.exists(tmp_name):
      os.unlink(tmp_name)
  logging.info("downloaded %s (%d bytes, sha256 ok)", path, size)
  return path
