"""How `rnn_jax.cpu_kernels.load()` builds, caches and loads the native kernel: every failure
is one RuntimeWarning and False, never an exception; only a private cache directory is
used, and from it only a library that matches the checksum recorded when it was built;
concurrent processes build once; $CXX is split as a shell would; the cache key tells CPUs
apart on every architecture.

Each `load()` is once per process: in-process cases reset the module's state, and cases
that need a fresh process or another user run a probe in a subprocess."""
import ctypes
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import pytest

from rnn_jax import cpu_kernels

_REPO = Path(__file__).resolve().parents[1]
_PREFIX = "rnn_jax: the native CPU kernel is not used:"
_REAL_CXX = shlex.split(os.environ.get("CXX") or "c++")
needs_compiler = pytest.mark.skipif(
    not (_REAL_CXX and shutil.which(_REAL_CXX[0])), reason="no C++ compiler")

# load() in a fresh process, as the user PROBE_UID if that is set (the module imported
# first, so that the interpreter need not be readable by that user); prints whether it
# loaded and the warnings it gave.
_PROBE = textwrap.dedent("""
    import json, os, warnings
    from rnn_jax import cpu_kernels
    if os.environ.get("PROBE_UID"):
      uid = int(os.environ["PROBE_UID"])
      # The kernel's source where the uid can read it, whatever the checkout's modes.
      import pathlib, shutil, tempfile
      readable = pathlib.Path(tempfile.mkdtemp()) / "min_gru.cc"
      shutil.copy(cpu_kernels._SOURCE, readable)
      readable.parent.chmod(0o755)
      readable.chmod(0o644)
      cpu_kernels._SOURCE = readable
      os.setgroups([])
      os.setgid(uid)
      os.setuid(uid)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      loaded = cpu_kernels.load()
    print(json.dumps({"loaded": loaded, "warnings": [
        f"{w.category.__name__}: {w.message}" for w in caught]}))
""")


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
  """A process that has not tried load() yet, with its cache in tmp_path/cache."""
  monkeypatch.setattr(cpu_kernels, "_loaded", None)
  monkeypatch.setenv("RNN_JAX_KERNEL_CACHE", str(tmp_path / "cache"))
  return tmp_path / "cache"


def _load():
  """load() here: its result and the warnings it gave, as "Category: message"."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    loaded = cpu_kernels.load()
  return loaded, [f"{w.category.__name__}: {w.message}" for w in caught]


def _one_warning(caught, *parts):
  """Exactly one warning, a RuntimeWarning with the module's prefix, naming `parts`."""
  assert len(caught) == 1, caught
  assert caught[0].startswith(f"RuntimeWarning: {_PREFIX} "), caught
  for part in parts:
    assert str(part) in caught[0], (part, caught)


def _start(cache, cxx=None, uid=None):
  """The probe in a fresh Python process, its cache in `cache`, as `uid` if given."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("CXX", "RNN_JAX_KERNEL_CACHE", "JAX_COMPILATION_CACHE_DIR")}
  env.update(RNN_JAX_KERNEL_CACHE=str(cache), JAX_PLATFORMS="cpu")
  if cxx:
    env["CXX"] = cxx
  if uid is not None:
    env["PROBE_UID"] = str(uid)
  return subprocess.Popen([sys.executable, "-c", _PROBE], cwd=_REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _result(process):
  out, err = process.communicate(timeout=600)
  assert process.returncode == 0, err
  return json.loads(out.strip().splitlines()[-1])


def _counting_compiler(tmp_path, pause=0):
  """A $CXX that appends a line to its log for each build (not for --version), waits
  `pause` seconds, then runs the real compiler."""
  log = tmp_path / "compiles.log"
  script = tmp_path / "counting-cxx"
  real = shlex.join(_REAL_CXX)
  script.write_text(textwrap.dedent(f"""\
      #!/bin/sh
      for arg in "$@"; do [ "$arg" = --version ] && exec {real} "$@"; done
      echo "build $$" >> {shlex.quote(str(log))}
      sleep {pause}
      exec {real} "$@"
  """))
  script.chmod(0o755)
  return str(script), log


def _compiles(log):
  return log.read_text().splitlines() if log.exists() else []


def _sha256(path):
  return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _built(cache):
  """The one library in `cache`, and the checksum recorded beside it."""
  libraries = sorted(cache.glob("min_gru-*.so"))
  assert len(libraries) == 1, sorted(os.listdir(cache))
  record = libraries[0].with_name(libraries[0].name + ".sha256")
  return libraries[0], record.read_text().split()[0]


@pytest.mark.parametrize("error", [RuntimeError, KeyError])
def test_no_home_directory_is_a_warning(monkeypatch, error):
  """No $HOME and no passwd entry: Path.home() raises, which is one warning, not a crash."""
  for name in ("HOME", "XDG_CACHE_HOME", "RNN_JAX_KERNEL_CACHE"):
    monkeypatch.delenv(name, raising=False)

  def home(cls):
    raise error("Could not determine home directory.")

  monkeypatch.setattr(Path, "home", classmethod(home))
  loaded, caught = _load()
  assert loaded is False
  _one_warning(caught, "home directory", ".cache/rnn_jax/kernels", "RNN_JAX_KERNEL_CACHE")


@needs_compiler
def test_a_read_only_cache_directory_is_a_warning(tmp_path):
  """A cache directory that its owner cannot write to (mode 0o500). Root writes through any
  mode, so as root the probe drops to uid 65534, which owns the directory."""
  root = os.getuid() == 0
  cache = Path(tempfile.mkdtemp(prefix="rnn_jax_read_only_")) if root else tmp_path / "ro"
  cache.mkdir(exist_ok=True)
  try:
    if root:
      os.chown(cache, 65534, 65534)
    cache.chmod(0o500)
    result = _result(_start(cache, uid=65534 if root else None))
    assert result["loaded"] is False
    _one_warning(result["warnings"], cache, "cannot be written")
    assert os.listdir(cache) == []
  finally:
    cache.chmod(0o700)
    if root:
      shutil.rmtree(cache)


@needs_compiler
def test_a_cache_directory_that_cannot_be_created_is_a_warning(monkeypatch, tmp_path):
  """Its path runs through a regular file (ENOTDIR, for root too)."""
  (tmp_path / "a-file").write_text("")
  cache = tmp_path / "a-file" / "cache"
  monkeypatch.setenv("RNN_JAX_KERNEL_CACHE", str(cache))
  loaded, caught = _load()
  assert loaded is False
  _one_warning(caught, cache, "cannot be created")


@needs_compiler
@pytest.mark.parametrize("case", ["others-writable", "group-writable", "another-owner"])
def test_a_cache_directory_others_could_write_is_not_used(monkeypatch, cache, case):
  """A library planted under the predictable name, with a matching checksum, in a
  directory that another user could write (or owns): a warning, False, and nothing loaded,
  built or written there."""
  if case == "another-owner" and os.getuid() != 0:
    pytest.skip("giving a directory to another user takes root")
  cache.mkdir()
  cache.chmod({"others-writable": 0o777, "group-writable": 0o770, "another-owner": 0o755}[case])
  if case == "another-owner":
    os.chown(cache, 65534, 65534)
  _, library = cpu_kernels._target()
  library.write_bytes(b"\x7fELF planted by another user")
  library.with_name(library.name + ".sha256").write_text(f"{_sha256(library)}  {library.name}\n")
  before = {p.name: p.read_bytes() for p in cache.iterdir()}
  opened = []
  spy = lambda name, *args, **kwargs: opened.append(name)
  monkeypatch.setattr(ctypes, "CDLL", spy)
  monkeypatch.setattr(ctypes, "cdll", ctypes.LibraryLoader(spy))
  loaded, caught = _load()
  assert loaded is False
  expected = "is owned by uid 65534" if case == "another-owner" else "writable by group or others"
  _one_warning(caught, cache, expected)
  assert opened == []
  assert {p.name: p.read_bytes() for p in cache.iterdir()} == before


@needs_compiler
def test_a_tampered_library_is_rebuilt_not_loaded(tmp_path, cache):
  """A cached library whose bytes changed after its build (still a loadable ELF: bytes
  appended), then one whose checksum record is gone: each is rebuilt under the lock, and
  the fresh build, which matches its record again, is what loads."""
  cxx, log = _counting_compiler(tmp_path)
  first = _result(_start(cache, cxx))
  assert first == {"loaded": True, "warnings": []}
  library, recorded = _built(cache)
  assert _sha256(library) == recorded and len(_compiles(log)) == 1

  with open(library, "ab") as f:
    f.write(b"\0tampered")
  assert _sha256(library) != recorded
  second = _result(_start(cache, cxx))
  assert second == {"loaded": True, "warnings": []}
  assert len(_compiles(log)) == 2
  library, recorded = _built(cache)
  assert _sha256(library) == recorded
  assert not library.read_bytes().endswith(b"\0tampered")

  library.with_name(library.name + ".sha256").unlink()
  third = _result(_start(cache, cxx))
  assert third == {"loaded": True, "warnings": []}
  assert len(_compiles(log)) == 3
  assert _sha256(_built(cache)[0]) == _built(cache)[1]


@needs_compiler
def test_two_processes_with_an_empty_cache_build_once(tmp_path, cache):
  """Both start at once; the compiler waits 2 s before building, so without the lock both
  would build. With it, one builds and the other loads that build."""
  cxx, log = _counting_compiler(tmp_path, pause=2)
  processes = [_start(cache, cxx) for _ in range(2)]
  results = [_result(p) for p in processes]
  assert results == [{"loaded": True, "warnings": []}] * 2
  assert len(_compiles(log)) == 1, _compiles(log)
  library, recorded = _built(cache)
  assert _sha256(library) == recorded
  assert not [name for name in os.listdir(cache) if name.startswith(".min_gru-")]


def test_a_missing_compiler_is_a_warning_once(monkeypatch, cache):
  monkeypatch.setenv("CXX", "/nonexistent/c++")
  loaded, caught = _load()
  assert loaded is False
  _one_warning(caught, "/nonexistent/c++", "not found")
  assert not cache.exists()
  assert _load() == (False, [])  # the result is kept: no second try, no second warning


@needs_compiler
def test_a_two_word_cxx_builds_and_loads(cache):
  """CXX="env c++" is a command and its argument (as `ccache g++` is), not one file name.
  In a fresh process: once XLA's CPU backend runs, it refuses a second library's handlers
  under the same names, and this process may have run the kernel already."""
  result = _result(_start(cache, "env " + shlex.join(_REAL_CXX)))
  assert result == {"loaded": True, "warnings": []}
  assert cache.stat().st_mode & 0o777 == 0o700
  library, recorded = _built(cache)
  assert _sha256(library) == recorded


@needs_compiler
def test_an_unexpected_error_is_a_warning(monkeypatch):
  def broken():
    raise ImportError("no jaxlib")

  monkeypatch.setattr(cpu_kernels, "_jaxlib_version", broken)
  loaded, caught = _load()
  assert loaded is False
  _one_warning(caught, "ImportError", "no jaxlib")


_X86 = """\
processor\t: {n}
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
cpu MHz\t\t: {mhz}
core id\t\t: {n}
flags\t\t: fpu vme de pse tsc msr sse sse2 avx avx2 fma
bogomips\t: 4890.{n}
"""

_ARM = """\
processor\t: {n}
BogoMIPS\t: {mips}
Features\t: {features}
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd0c
CPU revision\t: 1
"""

_RISCV = """\
processor\t: {n}
hart\t\t: {hart}
isa\t\t: {isa}
mmu\t\t: sv39
uarch\t\t: sifive,u74-mc
"""

_NEON = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm"


def _cpuinfo(template, cores=2, **values):
  return "\n".join(template.format(n=n, **{k: v.format(n=n) if isinstance(v, str) else v
                                           for k, v in values.items()})
                   for n in range(cores))


def _key(cpuinfo, machine):
  cpu = cpu_kernels._cpu_identity(cpuinfo, machine)
  return cpu, cpu_kernels._cache_key(["/usr/bin/c++"], "c++ 12", "0.10", machine, cpu)


def test_the_cpu_identity_tells_apart_every_architecture():
  """A pure function of /proc/cpuinfo's text and the machine: an aarch64 CPU is not an
  x86 one, and two aarch64 CPUs that differ only in Features get different cache keys;
  lines that differ per core or over time (processor, MHz, BogoMIPS, hart) do not count."""
  x86 = _key(_cpuinfo(_X86, mhz="2450.000"), "x86_64")
  arm = _key(_cpuinfo(_ARM, mips="50.00", features=_NEON), "aarch64")
  arm_sve = _key(_cpuinfo(_ARM, mips="50.00", features=_NEON + " sve sve2"), "aarch64")
  for (cpu, key), (other_cpu, other_key) in [(x86, arm), (arm, arm_sve)]:
    assert cpu != other_cpu and key != other_key
  assert "CPU part".lower() in arm[0] and "sve2" in arm_sve[0]

  # Per-core and changing lines do not count: another moment, core order or core count.
  assert _key(_cpuinfo(_X86, cores=4, mhz="{n}3.5"), "x86_64") == x86
  assert _key(_cpuinfo(_ARM, cores=8, mips="{n}0.25", features=_NEON), "aarch64") == arm

  # Any other architecture: every steady line counts (here RISC-V's ISA string).
  rv = _key(_cpuinfo(_RISCV, hart="{n}", isa="rv64imafdc"), "riscv64")
  assert _key(_cpuinfo(_RISCV, cores=4, hart="3{n}", isa="rv64imafdc"), "riscv64") == rv
  assert _key(_cpuinfo(_RISCV, hart="{n}", isa="rv64imafdcv"), "riscv64")[1] != rv[1]
