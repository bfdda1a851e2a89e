"""download.fetch against a local HTTP server: the cache only ever holds verified files."""
import hashlib
import http.server
import io
import pathlib
import socket
import sys
import tarfile
import threading
import time

import pytest

from rnn_jax.data import download
from rnn_jax.errors import UserError


def _small_archive() -> bytes:
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    for name, text in [("d/a.txt", b"hello"), ("d/b.txt", b"world" * 1000)]:
      info = tarfile.TarInfo(name)
      info.size = len(text)
      tar.addfile(info, io.BytesIO(text))
  return buf.getvalue()


ARCHIVE = _small_archive()
ARCHIVE_SHA = hashlib.sha256(ARCHIVE).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
  """GET /good.tar.gz: the archive; /short.tar.gz: Content-Length lies, body cut in half;
  /slow.tar.gz: headers, then silence; anything else: 404."""
  requests = []

  def do_GET(self):
    type(self).requests.append(self.path)
    if self.path in ("/good.tar.gz", "/short.tar.gz", "/slow.tar.gz"):
      self.send_response(200)
      self.send_header("Content-Length", str(len(ARCHIVE)))
      self.end_headers()
      if self.path == "/good.tar.gz":
        self.wfile.write(ARCHIVE)
      elif self.path == "/short.tar.gz":
        self.wfile.write(ARCHIVE[:len(ARCHIVE) // 2])
      else:
        time.sleep(1.0)
    else:
      self.send_error(404, "Not Found")

  def log_message(self, *args):
    pass


@pytest.fixture(scope="module")
def server():
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  httpd.daemon_threads = True
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}"
  httpd.shutdown()
  httpd.server_close()


def _files(directory):
  return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_good_download_is_verified_and_cached(server, tmp_path):
  path = download.fetch(f"{server}/good.tar.gz", ARCHIVE_SHA, cache_dir=tmp_path)
  assert path == tmp_path / "good.tar.gz"
  assert path.read_bytes() == ARCHIVE
  assert download.sha256_of(path) == ARCHIVE_SHA
  assert _files(tmp_path) == ["good.tar.gz"]


def test_cached_file_is_returned_without_network(server, tmp_path):
  (tmp_path / "x.tar.gz").write_bytes(ARCHIVE)
  _Handler.requests.clear()
  path = download.fetch(f"{server}/nowhere.tar.gz", ARCHIVE_SHA, filename="x.tar.gz",
                        cache_dir=tmp_path)
  assert path == tmp_path / "x.tar.gz"
  assert _Handler.requests == []


def test_cached_file_with_wrong_checksum_is_replaced(server, tmp_path):
  (tmp_path / "good.tar.gz").write_bytes(b"stale")
  path = download.fetch(f"{server}/good.tar.gz", ARCHIVE_SHA, cache_dir=tmp_path)
  assert path.read_bytes() == ARCHIVE


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
  wrong = "0" * 64
  with pytest.raises(UserError, match=r"checksum mismatch for http://127\.0\.0\.1:\d+/good"):
    download.fetch(f"{server}/good.tar.gz", wrong, cache_dir=tmp_path)
  assert _files(tmp_path) == []


def test_truncated_transfer_keeps_nothing(server, tmp_path):
  with pytest.raises(UserError, match=r"truncated download of http://.*/short\.tar\.gz"):
    download.fetch(f"{server}/short.tar.gz", ARCHIVE_SHA, cache_dir=tmp_path)
  assert _files(tmp_path) == []


def test_http_404_keeps_nothing(server, tmp_path):
  with pytest.raises(UserError, match=r"could not download http://.*/missing\.tar\.gz: HTTP 404"):
    download.fetch(f"{server}/missing.tar.gz", ARCHIVE_SHA, cache_dir=tmp_path)
  assert _files(tmp_path) == []


def test_stalled_server_times_out(server, tmp_path):
  with pytest.raises(UserError, match=r"could not download http://.*/slow\.tar\.gz: .*timed out"):
    download.fetch(f"{server}/slow.tar.gz", ARCHIVE_SHA, cache_dir=tmp_path, timeout=0.2)
  assert _files(tmp_path) == []


def test_offline_error_says_where_to_put_the_file(tmp_path):
  with socket.socket() as s:  # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}/data.tar.gz"
  with pytest.raises(UserError) as e:
    download.fetch(url, ARCHIVE_SHA, cache_dir=tmp_path / "cache")
  message = str(e.value)
  assert message.startswith(f"could not download {url}: ")
  assert f"put the file at {tmp_path / 'cache' / 'data.tar.gz'} or pass --data_path" in message
  assert "\n" not in message
  assert _files(tmp_path / "cache") == []


def test_cache_dir_from_environment(server, tmp_path, monkeypatch):
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "env_cache"))
  path = download.fetch(f"{server}/good.tar.gz", ARCHIVE_SHA.upper())
  assert path == tmp_path / "env_cache" / "good.tar.gz"


@pytest.mark.skipif(sys.platform != "linux", reason="XDG_CACHE_HOME is the Linux rule")
def test_default_cache_dir_is_the_user_s(monkeypatch, tmp_path):
  monkeypatch.delenv(download.CACHE_ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # platformdirs' Linux rule
  assert download.default_cache_dir() == tmp_path / "xdg" / "rnn_jax"
  repo = pathlib.Path(download.__file__).resolve().parents[2]
  assert repo not in download.default_cache_dir().parents  # never inside the package


def test_malformed_checksum_is_a_programming_error(tmp_path):
  with pytest.raises(ValueError, match="64 hex digits"):
    download.fetch("http://127.0.0.1:1/x.tar.gz", "abc", cache_dir=tmp_path)
