"""The ways of computing the unroll's loop: one module each, behind one registry.

`rnn_jax.recurrent.unroll` puts a layer's inputs in one normal form (`Recurrence`) and
hands it to exactly one backend (`Backend`), chosen by `implementation=`:

  scan         scan.py       lax.scan over the cell's step, autodiff: any cell; the reference
  recompute    scan.py       the same, with a backward pass that saves only the states
  per_gate     per_gate.py   the CPU's gate layout (cells that declare `cells.Gates`)
  fused        fused.py      the accelerators' gate layout: the input projection hoisted
  linear_scan  linear.py     cells linear in their state (`cells.Linear`): a sequential scan
  associative  linear.py     the same by a log-space associative scan
  parallel     parallel.py   any cell, parallel over time by Newton's method (DEER, ELK)
  native       native.py     minGRU as a compiled CPU kernel: opt-in, never "auto"
  cudnn        cudnn.py      cuDNN's LSTM on GPU, for LSTMs it computes exactly
  pallas       pallas.py     the whole sequence in one Pallas kernel (gate layouts, linear
                             recurrences): Triton, Mosaic TPU, interpreted on CPU; opt-in

"auto" is the first backend of the platform's list in `AUTO` that computes the layer.
An explicit choice that cannot compute it is one `ValueError` saying why. A backend of
your own: `register(Backend(name, description, loop_body=...))` and then
`implementation="name"`, or pass the `Backend` itself as the implementation. Every
backend equals "scan" in values and gradients (tests/test_backends.py).
"""
from __future__ import annotations

from typing import Optional, Union

import jax

from rnn_jax.backends.base import (FEATURES, Backend, Embedded, Recurrence, cell_name,
                                   gates_of, linear_of, output_of)
from rnn_jax.backends import loop
from rnn_jax.backends.cudnn import CUDNN
from rnn_jax.backends.fused import FUSED
from rnn_jax.backends.linear import ASSOCIATIVE, LINEAR_SCAN
from rnn_jax.backends.native import NATIVE
from rnn_jax.backends.pallas import PALLAS
from rnn_jax.backends.parallel import PARALLEL
from rnn_jax.backends.per_gate import PER_GATE
from rnn_jax.backends.scan import RECOMPUTE, SCAN

# "auto" on each platform: the first of these that computes the layer. (The order, and why
# "native" and "pallas" are not in it, is in docs/performance.md and docs/architecture.md.)
AUTO = {
    "cpu": ("per_gate", "linear_scan", "scan"),
    "gpu": ("cudnn", "fused", "associative", "scan"),
    "tpu": ("fused", "associative", "scan"),
}

_REGISTRY: dict[str, Backend] = {
    b.name: b for b in (SCAN, RECOMPUTE, PER_GATE, FUSED, LINEAR_SCAN, ASSOCIATIVE, PARALLEL,
                        NATIVE, CUDNN, PALLAS)}

Implementation = Union[str, Backend]


def register(backend: Backend) -> Backend:
  """Makes `backend` available as implementation=backend.name (a name not taken)."""
  if not isinstance(backend, Backend):
    raise TypeError(f"register takes a rnn_jax.backends.Backend, got {type(backend).__name__}")
  if backend.name == "auto" or backend.name in _REGISTRY and _REGISTRY[backend.name] is not backend:
    raise ValueError(f"a backend named {backend.name!r} exists already")
  _REGISTRY[backend.name] = backend
  return backend


def names() -> tuple[str, ...]:
  """Every implementation= the unroll takes: "auto" and each registered backend."""
  return ("auto", *_REGISTRY)


def get(implementation: Implementation) -> Backend:
  """The registered backend of that name (or the `Backend` itself)."""
  if isinstance(implementation, Backend):
    return implementation
  if implementation not in _REGISTRY:
    raise ValueError(f"implementation={implementation!r} is not one of {names()}")
  return _REGISTRY[implementation]


def resolve(cell, implementation: Implementation = "auto", *, platform: Optional[str] = None,
            dtype=None, features: frozenset = frozenset()) -> Backend:
  """The backend that computes `cell` for `implementation`: itself where it can (else a
  ValueError saying why), or for "auto" the first of the platform's `AUTO` list that can.
  `dtype` (the inputs') and `features` (of `FEATURES`) narrow the choice where known."""
  platform = platform or jax.default_backend()
  if isinstance(implementation, str) and implementation == "auto":
    for name in AUTO.get(platform, AUTO["gpu"]):
      backend = _REGISTRY[name]
      if backend.why_not(cell, platform=platform, dtype=dtype, features=features) is None:
        return backend
    return SCAN
  backend = get(implementation)
  reason = backend.why_not(cell, platform=platform, dtype=dtype, features=features)
  if reason is not None:
    raise ValueError(f"implementation={backend.name!r} cannot compute this "
                     f"{cell_name(cell)} layer: {reason}")
  return backend


def compute(recurrences: list[Recurrence], chosen: list[Backend], *, unroll: int = 1) -> list:
  """[(ys or None, final state)] of each recurrence by its backend; those with a loop body
  share one `lax.scan` (`loop.run`)."""
  looped = [i for i, backend in enumerate(chosen) if backend.loop_body is not None]
  results = [None] * len(recurrences)
  if looped:
    bodies = [chosen[i].loop_body(recurrences[i]) for i in looped]
    for i, result in zip(looped, loop.run([recurrences[i] for i in looped], bodies,
                                          unroll=unroll)):
      results[i] = result
  for i, backend in enumerate(chosen):
    if backend.loop_body is None:
      results[i] = backend.run(recurrences[i])
  return results


__all__ = ["AUTO", "FEATURES", "Backend", "Embedded", "Recurrence", "compute", "gates_of",
           "get", "linear_of", "names", "output_of", "register", "resolve"]
