"""Native CPU kernels for whole recurrent layers, compiled on first use: the unroll's
implementation="native" (`rnn_jax.recurrent`).

On a CPU, XLA computes minGRU's layer as several passes over [time, batch, units] arrays;
where those are larger than the L2 cache, memory traffic bounds the step, and on a VM with
little bandwidth per core, two devices barely run faster than one. A kernel that walks
one batch row at a time keeps that row's projection, gates and recurrence in L1, and its
forward and backward passes read little more than the inputs (docs/performance.md,
"2026-12-04"). It is an optional speed path, as recurrentgemma's scan kernels are:

  * `supports(cell)`: a cell this package has a kernel for (today minGRU). The kernel
    computes exactly the cell's arithmetic, and tests/test_cpu_kernels.py holds it to the
    portable path ("scan", "linear_scan") in values and gradients.
  * `available()`: the kernels compiled and loaded. They are C++ against XLA's FFI
    headers (shipped with jaxlib), built with the machine's C++ compiler (`$CXX`, else
    `c++`) for this CPU (-march=native) into a cache directory (`$RNN_JAX_KERNEL_CACHE`,
    else `$XDG_CACHE_HOME/rnn_jax/kernels` or ~/.cache/rnn_jax/kernels) keyed by source,
    flags, compiler, jaxlib and CPU. Without a compiler they are not available and the
    unroll uses the portable path; `RNN_JAX_NATIVE_KERNELS=0` turns them off.
  * `disabled()`: a context in which `available()` is False, for code that must stay
    portable, such as `rnn_jax.export` (a serialized artifact cannot carry a custom call).

The layer functions take batch-first arrays and return the layer's outputs; float32 only.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array

_SOURCE = Path(__file__).with_name("min_gru.cc")
_FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fopenmp-simd", "-std=c++17",
          "-shared", "-fPIC", "-w"]
_TARGETS = {"rnn_jax_min_gru_forward": "RnnJaxMinGruForward",
            "rnn_jax_min_gru_backward": "RnnJaxMinGruBackward"}
KERNEL_CELLS = ("min_gru",)

_lock = threading.Lock()
_loaded: Optional[bool] = None  # None: not tried yet
_disabled = threading.local()


def supports(cell) -> bool:
  """Whether a native kernel computes `cell` (by its name: minGRU)."""
  return getattr(cell, "name", None) in KERNEL_CELLS


@contextlib.contextmanager
def disabled():
  """Within this context `available()` is False: the unroll traces the portable path."""
  previous = getattr(_disabled, "value", False)
  _disabled.value = True
  try:
    yield
  finally:
    _disabled.value = previous


def available() -> bool:
  """The kernels are built and registered with XLA (built on the first call), and not
  turned off (`disabled()`, `RNN_JAX_NATIVE_KERNELS=0`)."""
  if getattr(_disabled, "value", False) or os.environ.get("RNN_JAX_NATIVE_KERNELS") == "0":
    return False
  return _built()


def _built() -> bool:
  global _loaded
  with _lock:
    if _loaded is None:
      _loaded = _load()
    return _loaded


def _cache_dir() -> Path:
  if os.environ.get("RNN_JAX_KERNEL_CACHE"):
    return Path(os.environ["RNN_JAX_KERNEL_CACHE"])
  base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
  return Path(base) / "rnn_jax" / "kernels"


def _cpu_identity() -> str:
  """What -march=native compiles for: the CPU's model and feature flags."""
  try:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    return "\n".join(sorted({l for l in lines if l.startswith(("model name", "flags"))}))
  except OSError:
    return platform.processor() or platform.machine()


def _load() -> bool:
  compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
  if compiler is None:
    return False
  try:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             check=True).stdout
    source = _SOURCE.read_bytes()
    key = hashlib.sha256("\0".join([
        source.decode(), " ".join(_FLAGS), version, _jaxlib_version(), _cpu_identity(),
        platform.machine()]).encode()).hexdigest()[:16]
    library = _cache_dir() / f"min_gru-{key}.so"
    if not library.exists():
      _compile(compiler, library)
    lib = ctypes.cdll.LoadLibrary(str(library))
    for target, symbol in _TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                  platform="cpu")
    return True
  except (OSError, subprocess.CalledProcessError, AttributeError) as e:
    detail = getattr(e, "stderr", None) or str(e)
    warnings.warn(f"rnn_jax: the native CPU kernels could not be built ({detail.strip()[:500]}); "
                  "using the portable path", RuntimeWarning, stacklevel=3)
    return False


def _jaxlib_version() -> str:
  import jaxlib  # the FFI headers' version
  return jaxlib.__version__


def _compile(compiler: str, library: Path) -> None:
  """Builds the shared library into a temporary file beside `library`, then renames it
  into place, so that concurrent builds (pytest-xdist workers) never load half a file."""
  library.parent.mkdir(parents=True, exist_ok=True)
  handle, temporary = tempfile.mkstemp(suffix=".so", dir=library.parent)
  os.close(handle)
  try:
    subprocess.run([compiler, *_FLAGS, f"-I{jax.ffi.include_dir()}", str(_SOURCE),
                    "-o", temporary], capture_output=True, text=True, check=True)
    os.replace(temporary, library)
  finally:
    if os.path.exists(temporary):
      os.unlink(temporary)


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
  if not _built():
    raise RuntimeError("rnn_jax's native CPU kernels are not built on this machine (no C++ "
                       "compiler, or it failed: see the warning)")
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
