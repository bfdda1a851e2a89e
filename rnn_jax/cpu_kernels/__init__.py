"""Native CPU kernels for whole recurrent layers, compiled on first use: the "native"
backend (`rnn_jax.backends.native`), which only an explicit implementation="native" uses.

On a CPU, XLA computes minGRU's layer as several passes over [time, batch, units] arrays;
where those are larger than the L2 cache, memory traffic bounds the step, and on a
machine with little memory bandwidth per core, several devices slow each other down. A
kernel that walks one batch row at a time keeps that row's projection, gates and
recurrence in L1, and its forward and backward passes read little more than the inputs
(docs/performance.md has the measurements). It is an optional speed path, as
recurrentgemma's scan kernels are:

  * `supports(cell)`: a cell this package has a kernel for (today minGRU). The kernel
    computes exactly the cell's arithmetic, and tests/test_cpu_kernels.py holds it to the
    portable path ("scan", "linear_scan") in values and gradients.
  * `load()`: builds the kernels if needed and registers them with XLA, once per process;
    True where they can be used. They are C++ against XLA's FFI headers (shipped with
    jaxlib), built with the machine's C++ compiler (`$CXX`, split as a shell would, else
    `c++`) for this CPU (-march=native) into a private cache directory
    (`$RNN_JAX_KERNEL_CACHE`, else `$XDG_CACHE_HOME/rnn_jax/kernels`, else
    ~/.cache/rnn_jax/kernels) under a name keyed by source, flags, compiler, jaxlib and
    CPU. A cached library is loaded only from a directory and file that this user owns and
    no one else can write, and only if it matches the checksum recorded when it was
    built; concurrent processes build it once (a file lock). Whatever stops it (no
    compiler, no usable cache directory, a failed build) is one RuntimeWarning and
    False: the backend then computes the layer by "linear_scan".

The layer functions take batch-first arrays and return the layer's outputs; float32 only.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Optional

try:
  import fcntl
except ImportError:  # not a POSIX system: no file lock, so no build
  fcntl = None

import jax
import jax.numpy as jnp

Array = jax.Array

_SOURCE = Path(__file__).with_name("min_gru.cc")
_FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fopenmp-simd", "-std=c++17",
          "-shared", "-fPIC", "-w"]
_TARGETS = {"rnn_jax_min_gru_forward": "RnnJaxMinGruForward",
            "rnn_jax_min_gru_backward": "RnnJaxMinGruBackward"}
KERNEL_CELLS = ("min_gru",)

# The longest a compiler command (a build, or `--version`) may run before it is killed.
_BUILD_TIMEOUT_S = 300
# The longest a process waits for another one's build to release the cache's lock.
_LOCK_TIMEOUT_S = _BUILD_TIMEOUT_S + 60
_WARNING = "rnn_jax: the native CPU kernel is not used: "
# How the cache's library and checksum record are opened for checking: never through a
# symbolic link, and without blocking on a FIFO (which the check then rejects).
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)

# /proc/cpuinfo's lines that name what -march=native compiles for, by architecture
# (platform.machine(), lowercased); other architectures use every line but _VARYING's.
_X86 = ("x86_64", "amd64", "i386", "i486", "i586", "i686", "x86")
_ARM64 = ("aarch64", "arm64")
_IDENTITY_FIELDS = {
    **{machine: ("model name", "flags") for machine in _X86},
    **{machine: ("features", "cpu implementer", "cpu architecture", "cpu variant",
                 "cpu part", "cpu revision") for machine in _ARM64},
}
# Lines that differ between the cores of one CPU, or over time (lowercased keys).
_VARYING = frozenset((
    "processor", "cpu mhz", "cpu mhz dynamic", "cpu mhz static", "bogomips",
    "bogomips per cpu", "core id", "apicid", "initial apicid", "physical id", "siblings",
    "cpu cores", "cpu number", "hart", "clock"))

_lock = threading.Lock()
_loaded: Optional[bool] = None  # None: not tried yet in this process


class _NotUsed(Exception):
  """Why the kernel cannot be used, as the sentence that the warning gives."""


def supports(cell) -> bool:
  """Whether a native kernel computes `cell` (by its name: minGRU)."""
  return getattr(cell, "name", None) in KERNEL_CELLS


def load() -> bool:
  """Builds the kernels if needed and registers them with XLA, once per process: True
  where they can be used; otherwise one RuntimeWarning that says why, and False (never an
  exception, since the portable path computes the same layer)."""
  global _loaded
  with _lock:
    if _loaded is None:
      try:
        _build_and_register()
        reason = None
      except _NotUsed as e:
        reason = str(e)
      except Exception as e:  # pylint: disable=broad-except  # an optional speed path
        reason = f"an unexpected {type(e).__name__}: {e}"
      _loaded = reason is None
      if reason is not None:
        warnings.warn(_WARNING + reason, RuntimeWarning, stacklevel=2)
    return _loaded


def _build_and_register() -> None:
  """Loads the cached library where it can be trusted, else builds it first; all under the
  cache's file lock, so that concurrent processes build once. Raises _NotUsed."""
  compiler, library = _target()
  directory = library.parent
  record = library.with_name(library.name + ".sha256")
  _prepare(directory)
  with _locked(directory):
    if _distrust(library, record) is not None:  # missing, or not to be trusted as it is
      _build(compiler, library, record)
      problem = _distrust(library, record)
      if problem is not None:
        raise _NotUsed(f"{library} is not trusted even after a rebuild: {problem}")
    _register(library)


def _target() -> tuple[list[str], Path]:
  """The compiler's argv (its first word a resolved path) and the library's path in the
  cache directory, under a name keyed by everything that changes the binary."""
  directory = _cache_dir()
  compiler = _compiler()
  version = _run_compiler([*compiler, "--version"], f"it could not be built in {directory}")
  cpuinfo = _read_cpuinfo()
  machine = platform.machine()
  cpu = (_cpu_identity(cpuinfo, machine) if cpuinfo is not None
         else f"no /proc/cpuinfo: host {platform.node()}")  # then one build per host
  key = _cache_key(compiler, version, _jaxlib_version(), machine, cpu)
  return compiler, directory / f"min_gru-{key}.so"


def _cache_dir() -> Path:
  """$RNN_JAX_KERNEL_CACHE, else $XDG_CACHE_HOME/rnn_jax/kernels, else
  ~/.cache/rnn_jax/kernels."""
  if os.environ.get("RNN_JAX_KERNEL_CACHE"):
    return Path(os.environ["RNN_JAX_KERNEL_CACHE"])
  if os.environ.get("XDG_CACHE_HOME"):
    return Path(os.environ["XDG_CACHE_HOME"]) / "rnn_jax" / "kernels"
  try:
    home = Path.home()
  except (RuntimeError, KeyError) as e:  # no $HOME and no passwd entry
    raise _NotUsed(f"there is no home directory for its cache ~/.cache/rnn_jax/kernels "
                   f"({type(e).__name__}: {e}); set RNN_JAX_KERNEL_CACHE") from e
  return home / ".cache" / "rnn_jax" / "kernels"


def _compiler() -> list[str]:
  """$CXX (else `c++`) split into words as a shell would, so that `ccache g++` works; the
  first word resolved on PATH."""
  setting = os.environ.get("CXX") or "c++"
  try:
    words = shlex.split(setting)
  except ValueError as e:
    raise _NotUsed(f"CXX={setting!r} cannot be split into words ({e})") from e
  if not words:
    raise _NotUsed(f"CXX={setting!r} names no compiler")
  found = shutil.which(words[0])
  if found is None:
    raise _NotUsed(f"the C++ compiler {words[0]} is not found (CXX={setting!r}); set CXX "
                   "to one")
  return [found, *words[1:]]


def _run_compiler(command: list[str], failure: str) -> str:
  """Runs a compiler command in a session of its own, killed with everything it started
  (a `ccache` or wrapper's children) after _BUILD_TIMEOUT_S; its stdout. Where it does not
  succeed, raises _NotUsed: `failure` (the sentence's start) and the cause."""
  try:
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, errors="replace",
                               start_new_session=True)
  except OSError as e:
    raise _NotUsed(f"{failure}: `{command[0]}` does not run ({e})") from e
  with process:
    try:
      stdout, stderr = process.communicate(timeout=_BUILD_TIMEOUT_S)
    except BaseException as e:  # the timeout, or an interrupt: leave no compiler running
      with contextlib.suppress(OSError):
        os.killpg(process.pid, signal.SIGKILL)
      process.wait()
      if isinstance(e, subprocess.TimeoutExpired):
        raise _NotUsed(f"{failure}: `{shlex.join(command)[:300]}` did not "
                       f"finish in {_BUILD_TIMEOUT_S} s") from None
      raise
  if process.returncode != 0:
    detail = " ".join(stderr.split())[:500]
    raise _NotUsed(f"{failure}: `{shlex.join(command)[:300]}` exited with "
                   f"status {process.returncode}" + (f": {detail}" if detail else ""))
  return stdout


def _read_cpuinfo() -> Optional[str]:
  try:
    return Path("/proc/cpuinfo").read_text(errors="replace")
  except OSError:
    return None


def _cpu_identity(cpuinfo: str, machine: str) -> str:
  """What -march=native compiles for, from /proc/cpuinfo's text: on x86 the model name and
  flags; on aarch64 the features and the implementer, architecture, variant, part and
  revision; elsewhere every line that neither differs between cores nor changes with time.
  The same on every core and at every moment of one machine, and different wherever the
  instructions the compiler may use differ."""
  fields = set()
  for line in cpuinfo.splitlines():
    key, colon, value = line.partition(":")
    if colon:
      fields.add((" ".join(key.split()).lower(), " ".join(value.split())))
  steady = {(k, v) for k, v in fields
            if k not in _VARYING and not k.startswith("processor ")}  # s390's per-core lines
  wanted = _IDENTITY_FIELDS.get(machine.lower())
  chosen = {(k, v) for k, v in fields if k in wanted} if wanted else steady
  lines = [f"{k}: {v}" for k, v in sorted(chosen or steady)]
  return "\n".join([f"machine: {machine}", *lines])


def _cache_key(compiler: list[str], version: str, jaxlib: str, machine: str,
               cpu: str) -> str:
  """A digest of everything that changes the built library or whether this CPU can run it."""
  parts = [_SOURCE.read_text(), _FLAGS, compiler, version, jaxlib, machine, cpu]
  return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _jaxlib_version() -> str:
  import jaxlib  # the FFI headers' version  # pylint: disable=import-outside-toplevel
  return jaxlib.__version__


def _prepare(directory: Path) -> None:
  """Creates the cache directory (private to this user) and checks that it is this user's
  and that no one else can write to it: otherwise another user could plant a library that
  this process would load."""
  try:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    status = os.stat(directory)
  except OSError as e:
    raise _NotUsed(f"its cache directory {directory} cannot be created "
                   f"({e.strerror or e})") from e
  if not stat.S_ISDIR(status.st_mode):
    raise _NotUsed(f"its cache directory {directory} is not a directory")
  problem = _not_private(status)
  if problem is not None:
    raise _NotUsed(f"its cache directory {directory} {problem}")


def _not_private(status: os.stat_result) -> Optional[str]:
  """Why a file with this status could have been written by another user; None where it
  could not (this user owns it, and neither group nor others may write it)."""
  if status.st_uid != os.getuid():
    return f"is owned by uid {status.st_uid}, not by this user (uid {os.getuid()})"
  if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
    return (f"is writable by group or others (mode {stat.S_IMODE(status.st_mode):#o}; "
            "chmod go-w it)")
  return None


@contextlib.contextmanager
def _locked(directory: Path):
  """Holds an exclusive lock on `directory`/.lock: one process at a time checks, builds
  and loads the library, and the others then find it built."""
  if fcntl is None:
    raise _NotUsed(f"this system has no file locks (fcntl) to guard its cache {directory}")
  path = directory / ".lock"
  try:
    handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
  except OSError as e:
    raise _NotUsed(f"its cache directory {directory} cannot be written ({path}: "
                   f"{e.strerror or e})") from e
  try:
    deadline = time.monotonic() + _LOCK_TIMEOUT_S
    while True:
      try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        if time.monotonic() > deadline:
          raise _NotUsed(f"another process held the lock {path} for over {_LOCK_TIMEOUT_S} s")
        time.sleep(0.05)
      except OSError as e:
        raise _NotUsed(f"its cache's lock {path} cannot be taken ({e.strerror or e})") from e
    yield
  finally:
    os.close(handle)  # releases the lock


def _distrust(library: Path, record: Path) -> Optional[str]:
  """Why `library` is not to be loaded as it is (missing, another user's or writable by
  others, or not the checksum recorded when this package built it); None where it is."""
  try:
    with open(os.open(library, _READ_FLAGS), "rb") as f:
      status = os.fstat(f.fileno())
      if not stat.S_ISREG(status.st_mode):
        return "it is not a regular file"
      problem = _not_private(status)
      if problem is not None:
        return f"it {problem}"
      digest = _sha256(f)
  except FileNotFoundError:
    return "it is missing"
  except OSError as e:
    return f"it cannot be read ({e.strerror or e})"
  try:
    with open(os.open(record, _READ_FLAGS), "rb") as f:
      problem = _not_private(os.fstat(f.fileno()))
      recorded = f.read(4096).decode("ascii", "replace").split()
  except OSError:
    return f"its checksum record {record} is missing or cannot be read"
  if problem is not None:
    return f"its checksum record {record} {problem}"
  if not recorded or recorded[0] != digest:
    return f"its sha256 {digest} is not the one recorded in {record}"
  return None


def _build(compiler: list[str], library: Path, record: Path) -> None:
  """Builds the library into a temporary file beside `library`, records its sha256 in
  `record`, then renames it into place (each file written whole before its rename), so
  that no process ever loads half a file or an unrecorded one."""
  directory = library.parent
  temporary = None
  try:
    handle, temporary = tempfile.mkstemp(prefix=".min_gru-", suffix=".so", dir=directory)
    os.close(handle)
    _run_compiler([*compiler, *_FLAGS, f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-o",
                   temporary], f"{library} could not be built")
    os.chmod(temporary, 0o700)  # the compiler's umask may have left it group-writable
    with open(temporary, "rb") as f:
      digest = _sha256(f)
    _write_atomically(record, f"{digest}  {library.name}\n")
    os.replace(temporary, library)
  except OSError as e:
    raise _NotUsed(f"its cache directory {directory} cannot be written "
                   f"({e.filename or library}: {e.strerror or e})") from e
  finally:
    if temporary is not None and os.path.exists(temporary):
      os.unlink(temporary)


def _sha256(f) -> str:
  digest = hashlib.sha256()
  for block in iter(lambda: f.read(1 << 20), b""):
    digest.update(block)
  return digest.hexdigest()


def _write_atomically(path: Path, text: str) -> None:
  """Writes `text` to a private temporary file beside `path`, then renames it over `path`."""
  handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
  try:
    with os.fdopen(handle, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.unlink(temporary)


def _register(library: Path) -> None:
  """Loads the library and registers its handlers as XLA's FFI targets on the CPU."""
  try:
    loaded = ctypes.CDLL(str(library))
  except OSError as e:
    raise _NotUsed(f"{library} does not load ({e})") from e
  handlers = {}
  for target, symbol in _TARGETS.items():
    try:
      handlers[target] = jax.ffi.pycapsule(getattr(loaded, symbol))
    except AttributeError as e:
      raise _NotUsed(f"{library} lacks the symbol {symbol}") from e
  for target, handler in handlers.items():
    jax.ffi.register_ffi_target(target, handler, platform="cpu")


# --- minGRU --------------------------------------------------------------------------

def min_gru_layer(params: dict, x: Array, h0: Array, mask: Optional[Array] = None, *,
                  return_sequences: bool = False) -> tuple[Array, Array]:
  """minGRU over whole sequences by the native kernel.

  Args:
    params: the cell's {"kernel": [features, 2 units], "bias": [2 units]}.
    x: <float32>[batch, time, features]; h0: <float32>[batch, units];
    mask: <bool>[batch, time], False at padded steps (which keep h), or None.
    return_sequences: also return every step's state.

  Returns:
    (hs <float32>[batch, time, units], or None without `return_sequences`; the final
    state <float32>[batch, units]).
  """
  if not load():
    raise RuntimeError("rnn_jax's native CPU kernel is not built on this machine (see the "
                       "warning for why)")
  mask = (jnp.ones(x.shape[:2], jnp.float32) if mask is None
          else mask.astype(jnp.float32))
  hs, last = _min_gru(x, params["kernel"], params["bias"], h0, mask, return_sequences)
  return (hs if return_sequences else None), last


def _sds(shape):
  return jax.ShapeDtypeStruct(tuple(shape), jnp.float32)


def _forward_call(x, w, bias, h0, mask, return_sequences):
  rows, time, _ = x.shape
  units = w.shape[-1] // 2
  hs_shape = (rows, time, units) if return_sequences else (0,)
  return jax.ffi.ffi_call("rnn_jax_min_gru_forward", (_sds(hs_shape), _sds((rows, units))),
                          vmap_method="broadcast_all")(x, w, bias, h0, mask)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _min_gru(x, w, bias, h0, mask, return_sequences):
  return _forward_call(x, w, bias, h0, mask, return_sequences)


def _min_gru_forward(x, w, bias, h0, mask, return_sequences):
  # symbolic_zeros: each argument comes with `perturbed`. The input's gradient is
  # computed only where x carries one (not for data), told to the backward pass by the
  # size of a marker array (residuals must be arrays).
  out = _forward_call(x.value, w.value, bias.value, h0.value, mask.value, return_sequences)
  marker = jnp.zeros((1 if x.perturbed else 0,), jnp.float32)
  return out, (x.value, w.value, bias.value, h0.value, mask.value, marker)


def _min_gru_backward(return_sequences, saved, cotangents):
  x, w, bias, h0, mask, marker = saved
  g_hs, g_last = cotangents
  if isinstance(g_hs, jax.custom_derivatives.SymbolicZero) or not return_sequences:
    g_hs = jnp.zeros((0,), jnp.float32)
  if isinstance(g_last, jax.custom_derivatives.SymbolicZero):
    g_last = jnp.zeros(h0.shape, jnp.float32)
  dx_shape = x.shape if marker.size else (0,)
  dx, dw, dbias, dh0 = jax.ffi.ffi_call(
      "rnn_jax_min_gru_backward",
      (_sds(dx_shape), _sds(w.shape), _sds(bias.shape), _sds(h0.shape)),
      vmap_method="broadcast_all")(x, w, bias, h0, mask, g_hs, g_last)
  return (dx if marker.size else None), dw, dbias, dh0, None


_min_gru.defvjp(_min_gru_forward, _min_gru_backward, symbolic_zeros=True)
