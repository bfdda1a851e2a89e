"""The "pallas" backend's kernels for cells with a gate layout (`cells.Gates`): the forward
kernel runs the whole sequence per block of rows with the per-gate recurrent kernels held
on chip, the cell's own `recurrence` evaluated on per-gate blocks (`gate_blocks`), masks
and per-gate recurrent dropout inside; the backward kernel runs time in reverse from the
kept states and input projection, recomputing the gates. See `backends.pallas`."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from rnn_jax.backends import gate_blocks, gate_matmuls
from rnn_jax.backends.base import Embedded, Recurrence, cell_name, gates_of
from rnn_jax.backends.pallas_common import (_HIGHEST, _Plan, _blocks_in, _flat, _from_layout,
                                            _full_spec, _load, _on_platforms, _pad_layout,
                                            _pad_rows, _pallas_call, _plan, _power_of_two,
                                            _spec, _store, _to_layout, _unpad_layout)

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class _Gated:
  """One gated layer's static description: what the kernels are built from."""
  gates: Any
  units: int
  num_gates: int
  params_tree: Any
  carry_tree: Any
  carry_widths: tuple     # each carry leaf is <[batch, width]>
  num_masks: int          # recurrent dropout masks: 0, 1 (shared) or num_gates
  has_mask: bool
  store: bool             # the caller reads every step's state (return_sequences)
  time: int
  batch: int
  dtype: Any
  blocks: dict
  interpret: Optional[bool]

  @property
  def carry_k(self):
    return [_blocks_in((w,), self.units) for w in self.carry_widths]


def _matmuls(masks: Sequence):
  """The `cells.Matmuls` inside the kernel: one float32 matmul per gate against that gate's
  block of the kernel, v masked by the gate's recurrent dropout mask."""
  def matmuls(v, kernel, first_gate=0):
    n = kernel.shape[-1] // v.shape[-1]
    kernels = jnp.split(kernel, n, axis=-1)
    if not masks:
      return [jnp.dot(v, k, precision=_HIGHEST) for k in kernels]
    if len(masks) == 1:
      return [jnp.dot(v * masks[0], k, precision=_HIGHEST) for k in kernels]
    return [jnp.dot(v * masks[first_gate + g], k, precision=_HIGHEST)
            for g, k in enumerate(kernels)]
  return matmuls


def _shapes(leaves):
  return [jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)) for a in leaves]


def _gated_step(layer: _Gated, params_leaves, rows: int) -> gate_blocks.Step:
  """The cell's step at `rows` rows, split (`gate_blocks.split_step`); the core's inputs
  are (*residuals, *carry leaves, xw_t, *recurrent dropout masks)."""
  params = jax.tree.unflatten(layer.params_tree, _shapes(params_leaves))
  carry = jax.tree.unflatten(layer.carry_tree, [jax.ShapeDtypeStruct((rows, w), layer.dtype)
                                                for w in layer.carry_widths])
  xw = jax.ShapeDtypeStruct((rows, layer.num_gates * layer.units), layer.dtype)
  masks = [jax.ShapeDtypeStruct((rows, layer.units), layer.dtype)] * layer.num_masks

  def step(params, carry, xw, masks):
    return layer.gates.recurrence(params, carry, xw, _matmuls(masks))[0]

  return gate_blocks.split_step(step, params, carry, xw, masks)[0]


@dataclasses.dataclass(frozen=True, eq=False)
class _GatedKernels:
  """The forward and backward kernels of one layer on one platform's blocks."""
  layer: _Gated
  plan: _Plan
  step: gate_blocks.Step
  res_k: tuple            # each residual's blocks along its last axis
  bwd_jaxpr: Any          # the core's vjp: (*residuals, *carry, xw_t, *masks, *d_carry)
                          # -> (*d_residuals, *d_carry, d_xw_t)

  @property
  def res_shapes(self):
    return [(k, *a.shape[:-1], a.shape[-1] // k) if k > 1 else tuple(a.shape)
            for a, k in zip(self.step.residual_avals, self.res_k)]

  def triton_problems(self) -> list:
    """Why Triton would not take these kernels' steps (empty: it would): the cell's step
    and its vjp evaluated on abstract per-gate blocks, and what that emits checked by
    `gate_blocks.triton_problems`, with the layer's shapes."""
    layer, rows = self.layer, self.plan.rows
    problems = []
    dims = [layer.units, rows, *[w // k for w, k in zip(layer.carry_widths, layer.carry_k)]]
    dims += [d for s, k in zip(self.res_shapes, self.res_k) for d in s[1 if k > 1 else 0:]]
    if layer.units < 16 or not all(_power_of_two(d) for d in dims):
      problems.append(f"units {layer.units}, rows {rows} and the weights' shapes "
                      f"{self.res_shapes} are not all powers of two of at least 16")
    ks = [*self.res_k, *layer.carry_k, layer.num_gates, *[1] * layer.num_masks]
    shapes = ([a.shape for a in self.step.residual_avals]
              + [(rows, w) for w in layer.carry_widths]
              + [(rows, layer.num_gates * layer.units)] + [(rows, layer.units)] * layer.num_masks)
    for jaxpr, extra in ((self.step.core, 0), (self.bwd_jaxpr, len(layer.carry_widths))):
      in_shapes = shapes + [(rows, w) for w in layer.carry_widths][:extra]
      in_ks = ks + list(layer.carry_k)[:extra]
      flat = [jax.ShapeDtypeStruct((*s[:-1], s[-1] // k), layer.dtype)
              for s, k in zip(in_shapes, in_ks) for _ in range(k)]
      stats = gate_blocks.Stats()

      def evaluate(*flat, jaxpr=jaxpr, in_ks=in_ks, stats=stats):
        return [p for v in gate_blocks.evaluate(jaxpr, self._unflat(list(flat), in_ks),
                                                stats=stats)
                for p in (v.blocks if isinstance(v, gate_blocks.Blocked)
                          else [gate_blocks.whole(v)])]

      problems += gate_blocks.triton_problems(jax.make_jaxpr(evaluate)(*flat))
      problems += stats.whole
    return problems

  def triton_takes(self) -> bool:
    return not self.triton_problems()

  # -- the kernels' bodies

  def _inputs(self, refs, store_states: bool, backward: bool):
    layer = self.layer
    it = iter(refs)
    got = dict(res=[next(it) for _ in self.res_k], xw=next(it),
               mask=next(it) if layer.has_mask else None,
               rmask=next(it) if layer.num_masks else None)
    n = len(layer.carry_widths)
    if backward:
      got.update(prev=[next(it) for _ in range(n)],
                 d_states=[next(it) for _ in range(n)] if store_states else [],
                 d_final=[next(it) for _ in range(n)], d_xw=next(it),
                 d_h0=[next(it) for _ in range(n)], d_res=[next(it) for _ in self.res_k])
    else:
      got.update(h0=[next(it) for _ in range(n)],
                 states=[next(it) for _ in range(n)] if store_states else [],
                 final=[next(it) for _ in range(n)])
    return got

  def _xw(self, ref, t):
    blocks = [ref[g, t] for g in range(self.layer.num_gates)]
    return gate_blocks.blocked(blocks, 1)

  def _loaded(self, refs, ks, stats, index=()):
    return [p for r, k in zip(refs, ks) for p in _flat(_load(r, k, index), k, stats)]

  def _unflat(self, flat, ks):
    out, i = [], 0
    for k in ks:
      out.append(flat[i] if k == 1 else gate_blocks.Blocked(list(flat[i:i + k]),
                                                            flat[i].ndim - 1))
      i += k
    return out

  def _store_all(self, refs, ks, index, flat):
    i = 0
    for r, k in zip(refs, ks):
      _store(r, k, index, flat[i:i + k])
      i += k

  def forward_kernel(self, store_states: bool):
    layer, plan = self.layer, self.plan
    carry_k, res_k = layer.carry_k, self.res_k
    core = self.step.core

    def kernel(*refs):
      r = self._inputs(refs, store_states, backward=False)
      stats = gate_blocks.Stats()
      residuals = [_load(ref, k) for ref, k in zip(r["res"], res_k)]  # on chip, every step
      masks = [r["rmask"][g] for g in range(layer.num_masks)]
      state = self._loaded(r["h0"], carry_k, stats)
      if plan.grid_time > 1:  # the previous block of steps left the state in `final`
        first = pl.program_id(1) == 0
        state = [jnp.where(first, s, p)
                 for s, p in zip(state, self._loaded(r["final"], carry_k, stats))]

      def body(t, flat):
        new = gate_blocks.evaluate(core, [*residuals, *self._unflat(flat, carry_k),
                                          self._xw(r["xw"], t), *masks], stats=stats)
        new = [p for v, k in zip(new, carry_k) for p in _flat(v, k, stats)]
        if r["mask"] is not None:  # a padded step keeps the state
          real = r["mask"][t] > 0
          new = [jnp.where(real, n, s) for n, s in zip(new, flat)]
        if store_states:
          self._store_all(r["states"], carry_k, (t,), new)
        return new

      state = lax.fori_loop(0, plan.steps, body, state)
      self._store_all(r["final"], carry_k, (), state)
    return kernel

  def backward_kernel(self, store_states: bool):
    layer, plan = self.layer, self.plan
    carry_k, res_k, n_res = layer.carry_k, self.res_k, len(self.res_k)
    n_carry = len(carry_k)

    def kernel(*refs):
      r = self._inputs(refs, store_states, backward=True)
      stats = gate_blocks.Stats()
      residuals = [_load(ref, k) for ref, k in zip(r["res"], res_k)]
      masks = [r["rmask"][g] for g in range(layer.num_masks)]
      d_carry = self._loaded(r["d_final"], carry_k, stats)
      acc = [jnp.zeros(s[1:] if k > 1 else s, layer.dtype)
             for s, k in zip(self.res_shapes, res_k) for _ in range(k)]
      if plan.grid_time > 1:  # the later block of steps left its cotangents in the outputs
        first = pl.program_id(1) == 0
        d_carry = [jnp.where(first, d, p)
                   for d, p in zip(d_carry, self._loaded(r["d_h0"], carry_k, stats))]
        acc = [jnp.where(first, a, p)
               for a, p in zip(acc, self._loaded(r["d_res"], res_k, stats))]

      def body(i, loop):
        d_carry, acc = loop
        t = plan.steps - 1 - i
        total = d_carry
        if store_states:
          total = [d + s for d, s in zip(total, self._loaded(r["d_states"], carry_k, stats,
                                                             (t,)))]
        kept = None
        if r["mask"] is not None:  # a padded step passed the state through
          real = r["mask"][t] > 0
          kept = [jnp.where(real, jnp.zeros_like(d), d) for d in total]
          total = [jnp.where(real, d, jnp.zeros_like(d)) for d in total]
        prev = self._unflat(self._loaded(r["prev"], carry_k, stats, (t,)), carry_k)
        outs = gate_blocks.evaluate(
            self.bwd_jaxpr, [*residuals, *prev, self._xw(r["xw"], t), *masks,
                             *self._unflat(total, carry_k)], stats=stats)
        d_res, d_prev, d_xw = outs[:n_res], outs[n_res:n_res + n_carry], outs[-1]
        d_prev = [p for v, k in zip(d_prev, carry_k) for p in _flat(v, k, stats)]
        if kept is not None:
          d_prev = [d + k for d, k in zip(d_prev, kept)]
        for g, part in enumerate(_flat(d_xw, layer.num_gates, stats)):
          r["d_xw"][g, t] = part
        d_res = [p for v, k in zip(d_res, res_k) for p in _flat(v, k, stats)]
        return d_prev, [a + d for a, d in zip(acc, d_res)]

      d_carry, acc = lax.fori_loop(0, plan.steps, body, (d_carry, acc))
      self._store_all(r["d_h0"], carry_k, (), d_carry)
      self._store_all(r["d_res"], res_k, (), acc)
    return kernel

  # -- the calls

  def forward(self, residuals, xw, mask, rmask, h0, store_states: bool):
    """(states or [], final), laid out and padded as the kernel's arrays."""
    layer, plan = self.layer, self.plan
    G, U, rows, nc = layer.num_gates, layer.units, plan.rows, plan.grid_time
    widths, carry_k = layer.carry_widths, layer.carry_k
    in_specs = [*[_full_spec(s) for s in self.res_shapes],
                pl.BlockSpec((G, plan.steps, rows, U), lambda b, c: (0, c, b, 0)),
                *([pl.BlockSpec((plan.steps, rows, 1), lambda b, c: (c, b, 0))]
                  if layer.has_mask else []),
                *([pl.BlockSpec((layer.num_masks, rows, U), lambda b, c: (0, b, 0))]
                  if layer.num_masks else []),
                *[_spec(k, w, rows) for k, w in zip(carry_k, widths)]]
    states = [_spec(k, w, rows, plan.steps) for k, w in zip(carry_k, widths)]
    finals = [_spec(k, w, rows) for k, w in zip(carry_k, widths)]
    shapes = [jax.ShapeDtypeStruct(((k,) if k > 1 else ()) + (plan.time, plan.batch, w // k),
                                   layer.dtype) for k, w in zip(carry_k, widths)]
    final_shapes = [jax.ShapeDtypeStruct(((k,) if k > 1 else ()) + (plan.batch, w // k),
                                         layer.dtype) for k, w in zip(carry_k, widths)]
    call = _pallas_call(self.forward_kernel(store_states), plan, (plan.grid_batch, nc),
                        in_specs, (states if store_states else []) + finals,
                        (shapes if store_states else []) + final_shapes,
                        "rnn_jax_gated_forward", ("parallel", "arbitrary"))
    args = [*residuals, xw, *([mask] if layer.has_mask else []),
            *([rmask] if layer.num_masks else []), *h0]
    out = call(*args)
    n = len(widths)
    return (list(out[:n]) if store_states else []), list(out[-n:])

  def backward(self, residuals, xw, mask, rmask, prev, d_states, d_final):
    """(d_residuals per row block, d_xw, d_h0), laid out as the kernel's arrays."""
    layer, plan = self.layer, self.plan
    G, U, rows, nc = layer.num_gates, layer.units, plan.rows, plan.grid_time
    widths, carry_k = layer.carry_widths, layer.carry_k
    store_states = bool(d_states)
    back = lambda c: nc - 1 - c
    xw_spec = pl.BlockSpec((G, plan.steps, rows, U), lambda b, c: (0, back(c), b, 0))
    in_specs = [*[_full_spec(s) for s in self.res_shapes], xw_spec,
                *([pl.BlockSpec((plan.steps, rows, 1), lambda b, c: (back(c), b, 0))]
                  if layer.has_mask else []),
                *([pl.BlockSpec((layer.num_masks, rows, U), lambda b, c: (0, b, 0))]
                  if layer.num_masks else []),
                *[_spec(k, w, rows, plan.steps, nc) for k, w in zip(carry_k, widths)],
                *([_spec(k, w, rows, plan.steps, nc) for k, w in zip(carry_k, widths)]
                  if store_states else []),
                *[_spec(k, w, rows) for k, w in zip(carry_k, widths)]]
    out_specs = [xw_spec, *[_spec(k, w, rows) for k, w in zip(carry_k, widths)],
                 *[pl.BlockSpec((pl.squeezed, *s), lambda b, c, n=len(s): (b,) + (0,) * n)
                   for s in self.res_shapes]]
    out_shape = [jax.ShapeDtypeStruct((G, plan.time, plan.batch, U), layer.dtype),
                 *[jax.ShapeDtypeStruct(((k,) if k > 1 else ()) + (plan.batch, w // k),
                                        layer.dtype) for k, w in zip(carry_k, widths)],
                 *[jax.ShapeDtypeStruct((plan.grid_batch, *s), layer.dtype)
                   for s in self.res_shapes]]
    call = _pallas_call(self.backward_kernel(store_states), plan, (plan.grid_batch, nc),
                        in_specs, out_specs, out_shape, "rnn_jax_gated_backward",
                        ("parallel", "arbitrary"))
    args = [*residuals, xw, *([mask] if layer.has_mask else []),
            *([rmask] if layer.num_masks else []), *prev, *d_states, *d_final]
    out = call(*args)
    n = len(widths)
    return list(out[1 + n:]), out[0], list(out[1:1 + n])


def _gated_kernels(layer: _Gated, platform: str, params_leaves) -> _GatedKernels:
  plan = _plan(platform, layer.blocks[platform], layer.batch, layer.time)
  step = _gated_step(layer, params_leaves, plan.rows)
  res_k = tuple(_blocks_in(a.shape, layer.units) for a in step.residual_avals)
  core = gate_blocks.core_function(step)
  n_res, n_carry = len(res_k), len(layer.carry_widths)

  def core_vjp(*args):
    residuals, carry = args[:n_res], args[n_res:n_res + n_carry]
    xw_t = args[n_res + n_carry]
    masks = args[n_res + n_carry + 1:n_res + n_carry + 1 + layer.num_masks]
    d_new = args[n_res + n_carry + 1 + layer.num_masks:]
    _, vjp = jax.vjp(lambda r, c, x: core(*r, *c, x, *masks), list(residuals), list(carry),
                     xw_t)
    d_res, d_carry, d_xw = vjp(list(d_new))
    return [*d_res, *d_carry, d_xw]

  rows, dtype = plan.rows, layer.dtype
  carry = [jax.ShapeDtypeStruct((rows, w), dtype) for w in layer.carry_widths]
  bwd_jaxpr = jax.make_jaxpr(core_vjp)(
      *[jax.ShapeDtypeStruct(a.shape, a.dtype) for a in step.residual_avals], *carry,
      jax.ShapeDtypeStruct((rows, layer.num_gates * layer.units), dtype),
      *[jax.ShapeDtypeStruct((rows, layer.units), dtype)] * layer.num_masks, *carry)
  return _GatedKernels(layer, plan, step, res_k, bwd_jaxpr)


def _gated_scan(layer: _Gated, params_leaves, xw, mask, rmask, h0):
  """The same recurrence as a `lax.scan` of the cell's step ("fused"'s form): what a GPU
  runs where Triton cannot take the layer. (states, final), each a list of leaves."""
  params = jax.tree.unflatten(layer.params_tree, params_leaves)
  matmuls = gate_matmuls.fused_matmuls(rmask)

  def body(carry, inputs):
    xw_t, m_t = inputs
    new = layer.gates.recurrence(params, carry, xw_t, matmuls)[0]
    if m_t is not None:
      new = jax.tree.map(lambda n, o: jnp.where(m_t[:, None] > 0, n, o), new, carry)
    return new, new

  final, states = lax.scan(body, jax.tree.unflatten(layer.carry_tree, h0), (xw, mask))
  return jax.tree.leaves(states), jax.tree.leaves(final)


def _gated_forward(layer: _Gated, platform: str, store_states: bool):
  def run(params_leaves, xw, mask, rmask, h0):
    kernels = _gated_kernels(layer, platform, params_leaves)
    if platform == "gpu" and not kernels.triton_takes():
      states, final = _gated_scan(layer, params_leaves, xw, mask, rmask, h0)
      return (states if store_states else []), final
    plan, carry_k = kernels.plan, layer.carry_k
    residuals = [_to_layout(r, k)
                 for r, k in zip(kernels.step.prepare(params_leaves), kernels.res_k)]
    states, final = kernels.forward(
        residuals, _pad_rows(_to_layout(xw, layer.num_gates) if layer.num_gates > 1
                             else xw[None], 2, plan.batch),
        None if mask is None else _pad_rows(mask[..., None], 1, plan.batch),
        None if rmask is None else _pad_rows(rmask, 1, plan.batch, 1.0),
        [_pad_layout(h, k, False, plan.batch) for h, k in zip(h0, carry_k)], store_states)
    states = [_unpad_layout(s, k, True, layer.batch) for s, k in zip(states, carry_k)]
    final = [_unpad_layout(f, k, False, layer.batch) for f, k in zip(final, carry_k)]
    return states, final
  return run


def _gated_backward(layer: _Gated, platform: str):
  def run(params_leaves, xw, mask, rmask, h0, states, d_states, d_final):
    kernels = _gated_kernels(layer, platform, params_leaves)
    if platform == "gpu" and not kernels.triton_takes():
      def scan(params_leaves, xw, h0):
        s, f = _gated_scan(layer, params_leaves, xw, mask, rmask, h0)
        return (s if d_states else []), f
      _, vjp = jax.vjp(scan, params_leaves, xw, h0)
      return vjp((d_states, d_final))
    carry_k, rows = layer.carry_k, kernels.plan.batch
    residuals, prepare_vjp = jax.vjp(kernels.step.prepare, params_leaves)
    prev = [jnp.concatenate([h[None], s[:-1]]) for h, s in zip(h0, states)]
    xw_l = _to_layout(xw, layer.num_gates) if layer.num_gates > 1 else xw[None]
    d_res, d_xw, d_h0 = kernels.backward(
        [_to_layout(r, k) for r, k in zip(residuals, kernels.res_k)],
        _pad_rows(xw_l, 2, rows),
        None if mask is None else _pad_rows(mask[..., None], 1, rows),
        None if rmask is None else _pad_rows(rmask, 1, rows, 1.0),
        [_pad_layout(p, k, True, rows) for p, k in zip(prev, carry_k)],
        [_pad_layout(d, k, True, rows) for d, k in zip(d_states, carry_k)],
        [_pad_layout(d, k, False, rows) for d, k in zip(d_final, carry_k)])
    d_res = [_from_layout(jnp.sum(d, axis=0), k) for d, k in zip(d_res, kernels.res_k)]
    [d_params] = prepare_vjp(d_res)
    d_xw = lax.slice_in_dim(d_xw, 0, layer.batch, axis=2)
    d_xw = _from_layout(d_xw, layer.num_gates) if layer.num_gates > 1 else d_xw[0]
    d_h0 = [_unpad_layout(d, k, False, layer.batch) for d, k in zip(d_h0, carry_k)]
    return d_params, d_xw, d_h0
  return run


def _gated_states(layer: _Gated, params_leaves, xw, mask, rmask, h0):
  """(every step's state or [] without `layer.store`, the final state): lists of carry
  leaves <[time, batch, width]> and <[batch, width]>, by the kernels of the platform."""
  platforms = ("gpu", "tpu", "interpret")

  @jax.custom_vjp
  def states(params_leaves, xw, mask, rmask, h0):
    return _on_platforms({p: _gated_forward(layer, p, layer.store) for p in platforms},
                         (params_leaves, xw, mask, rmask, h0), layer.interpret)

  def forward(params_leaves, xw, mask, rmask, h0):
    every, final = _on_platforms({p: _gated_forward(layer, p, True) for p in platforms},
                                 (params_leaves, xw, mask, rmask, h0), layer.interpret)
    return ((every if layer.store else []), final), (params_leaves, xw, mask, rmask, h0, every)

  def backward(saved, cotangents):
    params_leaves, xw, mask, rmask, h0, every = saved
    d_states, d_final = cotangents
    d_params, d_xw, d_h0 = _on_platforms(
        {p: _gated_backward(layer, p) for p in platforms},
        (params_leaves, xw, mask, rmask, h0, every, list(d_states), list(d_final)),
        layer.interpret)
    zeros = lambda a: None if a is None else jnp.zeros_like(a)
    return d_params, d_xw, zeros(mask), zeros(rmask), d_h0

  states.defvjp(forward, backward)
  return states(params_leaves, xw, mask, rmask, h0)


def _run_gated(recurrence: Recurrence, *, blocks: dict, interpret: Optional[bool]):
  gates = gates_of(recurrence.cell)
  params = recurrence.params
  kernel, bias = gates.input_projection(params)
  xs = recurrence.xs
  if isinstance(xs, Embedded) and recurrence.input_mask is None:  # the table projected once
    xw = jnp.take(gate_matmuls.affine(xs.table, kernel, bias), xs.ids, axis=0)
  else:
    xw = gate_matmuls.project(recurrence.inputs(), kernel, bias, recurrence.input_mask,
                              gates.num_gates)
  time, batch = xw.shape[:2]
  carry_leaves, carry_tree = jax.tree.flatten(recurrence.initial_state)
  if any(jnp.ndim(c) != 2 for c in carry_leaves):
    raise ValueError(f"implementation='pallas' takes a carry of <[batch, width]> arrays; "
                     f"this {cell_name(recurrence.cell)} cell's has shapes "
                     f"{[tuple(jnp.shape(c)) for c in carry_leaves]}")
  units = gates.output(recurrence.initial_state).shape[-1]
  params_leaves, params_tree = jax.tree.flatten(params)
  rmask = recurrence.recurrent_mask
  layer = _Gated(gates, units, gates.num_gates, params_tree, carry_tree,
                 tuple(c.shape[-1] for c in carry_leaves),
                 0 if rmask is None else rmask.shape[0], recurrence.mask is not None,
                 recurrence.return_sequences, time, batch, xw.dtype, blocks, interpret)
  mask = None if recurrence.mask is None else recurrence.mask.astype(xw.dtype)
  every, final = _gated_states(layer, params_leaves, xw, mask, rmask, carry_leaves)
  final = jax.tree.unflatten(carry_tree, final)
  if not recurrence.return_sequences:
    return None, final
  ys = jax.vmap(recurrence.output)(jax.tree.unflatten(carry_tree, every))
  return ys, final
