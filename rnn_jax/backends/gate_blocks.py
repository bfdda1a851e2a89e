"""A cell's step as the Pallas kernels run it: its loop-invariant part taken out, the rest
evaluated on per-gate blocks.

Two things stand between a cell's `cells.Gates.recurrence` and a kernel compiler:

  * The step reads arrays computed from the parameters alone (a row of GRU's bias, a column
    slice of its recurrent kernel). `split_step` moves that work out of the loop: the
    `Step.prepare` part runs once, in XLA, before the kernel (and is differentiated there),
    and the kernel receives only what it produces, the step's *residuals*: the weights the
    kernel holds on chip for the whole sequence.
  * Triton has no slices, no concatenation but of single columns, and only power-of-two
    shapes, while a gated cell splits <[batch, G*units]> arrays into its gates and its
    backward pass concatenates them again. `evaluate` runs a jaxpr on values kept as lists of
    `units`-wide blocks along one axis (`Blocked`): splitting, slicing at a gate boundary
    and concatenating then move no data, and a matmul against a <[units, G*units]> kernel is
    G matmuls of <[units, units]>. What it cannot keep in blocks it computes on the whole
    array (counted in `Stats.whole`): exact everywhere, and what Mosaic TPU and the
    interpreter take, but not Triton.

Both are exact rewrites: the same operations on the same numbers, in the same order within
each block.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
from jax import lax
from jax.extend import core as jcore

Array = jax.Array

# Primitives that act element by element (operands of the output's shape, of rank 0, or
# with size-1 axes broadcast): computed block by block.
ELEMENTWISE = frozenset("""
  abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp convert_element_type
  copy copy_p cos cosh div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow
  is_finite le log log1p logistic lt max min mul ne neg nextafter not or pow real
  reduce_precision rem round rsqrt select_n sign sin sinh sqrt square sub tan tanh xor
""".split())
_COMBINE = {"reduce_sum": lax.add, "reduce_max": lax.max, "reduce_min": lax.min,
            "reduce_prod": lax.mul}
_CALL_PARAMS = ("jaxpr", "call_jaxpr")


# ----------------------------------------------------------------------------- values

@dataclasses.dataclass
class Blocked:
  """The array concatenate(blocks, axis), kept as its blocks."""
  blocks: list
  axis: int

  @property
  def shape(self):
    shape = list(self.blocks[0].shape)
    shape[self.axis] = sum(b.shape[self.axis] for b in self.blocks)
    return tuple(shape)

  @property
  def dtype(self):
    return self.blocks[0].dtype

  @property
  def sizes(self):
    return tuple(b.shape[self.axis] for b in self.blocks)


@dataclasses.dataclass
class Broadcast:
  """lax.broadcast_in_dim(operand, shape, dims), not yet computed: zeros of a cotangent,
  a bias row meeting a blocked array, cut into blocks without slicing."""
  operand: Any
  shape: tuple
  dims: tuple

  @property
  def dtype(self):
    return self.operand.dtype


@dataclasses.dataclass
class Stats:
  """What `evaluate` computed on whole arrays (primitive names), where it could not keep
  blocks: empty for a step Triton can compile."""
  whole: list = dataclasses.field(default_factory=list)


def triton_problems(closed: jcore.ClosedJaxpr) -> list:
  """Why Triton (Pallas's GPU lowering) would not take a kernel body's jaxpr: operations
  it has no rule for, or an array shape that is not a power of two; empty if none."""
  problems = []

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      name = eqn.primitive.name
      if name in ("slice", "pad", "gather", "dynamic_slice", "dynamic_update_slice",
                  "scatter", "scatter-add", "concatenate", "cumsum", "sort"):
        problems.append(name)
      if name == "split" and (len(eqn.params["sizes"]) & (len(eqn.params["sizes"]) - 1)
                              or len(set(eqn.params["sizes"])) > 1):
        problems.append("split into unequal or not a power of two of parts")
      for v in eqn.outvars:
        shape = getattr(v.aval, "shape", ())
        if any(n & (n - 1) for n in shape):
          problems.append(f"shape {tuple(shape)}")
      for sub in jcore.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(closed.jaxpr)
  return problems


def blocked(blocks: Sequence, axis: int):
  """Blocked(blocks, axis), or the one block itself."""
  blocks = list(blocks)
  return blocks[0] if len(blocks) == 1 else Blocked(blocks, axis)


def whole(value, stats: Optional[Stats] = None, why: str = "concatenate"):
  """The value as one array."""
  if isinstance(value, Blocked):
    if stats is not None:
      stats.whole.append(why)
    return lax.concatenate([whole(b) for b in value.blocks], value.axis)
  if isinstance(value, Broadcast):
    return lax.broadcast_in_dim(value.operand, value.shape, value.dims)
  return value


def shape_of(value):
  return tuple(value.shape)


def blocks_of(value, axis: int, sizes: Sequence[int], stats: Optional[Stats] = None) -> list:
  """The value cut along `axis` into blocks of `sizes`."""
  if isinstance(value, Blocked) and value.axis == axis:
    if value.sizes == tuple(sizes):
      return list(value.blocks)
    value = whole(value, stats, "regroup")
  if isinstance(value, Broadcast):
    out = []
    for size in sizes:
      shape = list(value.shape)
      shape[axis] = size
      if axis in value.dims and value.operand.shape[value.dims.index(axis)] != 1:
        break  # the operand itself varies along the axis: slice it below
      out.append(lax.broadcast_in_dim(value.operand, tuple(shape), value.dims))
    else:
      return out
  value = whole(value, stats, "regroup")
  if stats is not None:
    stats.whole.append("slice")
  starts = [sum(sizes[:i]) for i in range(len(sizes))]
  return [lax.slice_in_dim(value, s, s + n, axis=axis) for s, n in zip(starts, sizes)]


def _is_array_value(value):
  return isinstance(value, (Blocked, Broadcast))


# ----------------------------------------------------------------------------- evaluation

def _read(env, var):
  if isinstance(var, jcore.Literal):
    return var.val
  return env[var]


def _bind(eqn, args):
  out = eqn.primitive.bind(*args, **eqn.primitive.get_bind_params(eqn.params))
  return out if eqn.primitive.multiple_results else [out]


def _needed(eqns, outvars, outputs_needed: Sequence[bool]):
  """The equations whose results reach a needed output (a backward liveness pass)."""
  live = {v for v, keep in zip(outvars, outputs_needed)
          if keep and not isinstance(v, jcore.Literal)}
  keep = []
  for eqn in reversed(eqns):
    if any(v in live for v in eqn.outvars) or eqn.effects:
      keep.append(eqn)
      live.update(v for v in eqn.invars if not isinstance(v, jcore.Literal))
  return keep[::-1], live


def evaluate(closed: jcore.ClosedJaxpr, args: Sequence, *, stats: Optional[Stats] = None,
             outputs_needed: Optional[Sequence[bool]] = None) -> list:
  """The jaxpr's outputs from `args`, each an array, `Blocked` or `Broadcast`; an output
  not needed is None. Blocked arguments stay blocked wherever the rules below allow."""
  jaxpr = closed.jaxpr
  stats = stats if stats is not None else Stats()
  needed = [True] * len(jaxpr.outvars) if outputs_needed is None else list(outputs_needed)
  eqns, _ = _needed(jaxpr.eqns, jaxpr.outvars, needed)
  env = dict(zip(jaxpr.constvars, closed.consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in eqns:
    outs = _rule(eqn, [_read(env, v) for v in eqn.invars], stats)
    env.update(zip(eqn.outvars, outs))
  return [_read(env, v) if keep else None for v, keep in zip(jaxpr.outvars, needed)]


def _rule(eqn, args, stats: Stats) -> list:
  name = eqn.primitive.name
  if name == "concatenate":  # joined as blocks, whatever its operands: no data moves
    out = _concatenate(eqn, args, eqn.params, stats)
    if out is not None:
      return [out]
  if not any(_is_array_value(a) for a in args):
    return _bind(eqn, args)
  params = eqn.params
  out_avals = [v.aval for v in eqn.outvars]
  if name in ELEMENTWISE:
    return [_elementwise(eqn, args, out_avals[0].shape, stats)]
  rule = _RULES.get(name)
  if rule is not None:
    out = rule(eqn, args, params, stats)
    if out is not None:
      return out if isinstance(out, list) else [out]
  for key in _CALL_PARAMS:
    inner = params.get(key)
    if isinstance(inner, jcore.ClosedJaxpr):
      return evaluate(inner, args, stats=stats)
    if isinstance(inner, jcore.Jaxpr):
      return evaluate(jcore.ClosedJaxpr(inner, ()), args, stats=stats)
  if any(isinstance(a, Blocked) for a in args):
    stats.whole.append(name)
  return _bind(eqn, [whole(a) for a in args])


def _elementwise(eqn, args, out_shape, stats):
  first = next((a for a in args if isinstance(a, Blocked)), None)
  if first is None:  # broadcasts only
    return _bind(eqn, [whole(a) for a in args])[0]
  axis, sizes = first.axis, first.sizes
  per_block = []
  for a in args:
    shape = shape_of(a) if hasattr(a, "shape") else ()
    if len(shape) == 0 or shape[axis] == 1:
      per_block.append([whole(a)] * len(sizes))
    else:
      per_block.append(blocks_of(a, axis, sizes, stats))
  return Blocked([_bind(eqn, list(block_args))[0] for block_args in zip(*per_block)], axis)


# ----------------------------------------------------------------------------- rules
# Each takes (eqn, args, params, stats) and gives the outputs, or None to compute the
# primitive on whole arrays.

def _broadcast_in_dim(eqn, args, params, stats):
  x, *dynamic = args
  if dynamic:
    return None
  shape, dims = tuple(params["shape"]), tuple(params["broadcast_dimensions"])
  if isinstance(x, Broadcast):
    return Broadcast(x.operand, shape, tuple(dims[d] for d in x.dims))
  if not isinstance(x, Blocked):
    return Broadcast(x, shape, dims)
  axis = dims[x.axis]
  blocks = []
  for b in x.blocks:
    block_shape = list(shape)
    block_shape[axis] = b.shape[x.axis]
    blocks.append(lax.broadcast_in_dim(b, tuple(block_shape), dims))
  return Blocked(blocks, axis)


def _squeeze(eqn, args, params, stats):
  [x] = args
  if not isinstance(x, Blocked):
    return None
  dims = params["dimensions"]
  return Blocked([lax.squeeze(b, dims) for b in x.blocks],
                 x.axis - sum(d < x.axis for d in dims))


def _reshape(eqn, args, params, stats):
  x, *dynamic = args
  if not isinstance(x, Blocked) or dynamic or params.get("dimensions") is not None:
    return None
  old, new = x.shape, tuple(params["new_sizes"])
  # Only size-1 axes added or removed: the blocked axis keeps its place among the others.
  old_axes = [i for i, n in enumerate(old) if n != 1]
  new_axes = [i for i, n in enumerate(new) if n != 1]
  if [old[i] for i in old_axes] != [new[i] for i in new_axes] or x.axis not in old_axes:
    return None
  axis = new_axes[old_axes.index(x.axis)]
  blocks = []
  for b in x.blocks:
    shape = list(new)
    shape[axis] = b.shape[x.axis]
    blocks.append(lax.reshape(b, tuple(shape)))
  return Blocked(blocks, axis)


def _transpose(eqn, args, params, stats):
  [x] = args
  if not isinstance(x, Blocked):
    return None
  perm = tuple(params["permutation"])
  return Blocked([lax.transpose(b, perm) for b in x.blocks], perm.index(x.axis))


def _reduce(eqn, args, params, stats):
  [x] = args
  if not isinstance(x, Blocked):
    return None
  axes = tuple(params["axes"])
  parts = [_bind(eqn, [b])[0] for b in x.blocks]
  if x.axis in axes:
    out = parts[0]
    for p in parts[1:]:
      out = _COMBINE[eqn.primitive.name](out, p)
    return out
  return Blocked(parts, x.axis - sum(a < x.axis for a in axes))


def _split(eqn, args, params, stats):
  [x] = args
  if not isinstance(x, Blocked):
    return None
  axis, sizes = params["axis"], tuple(params["sizes"])
  if axis != x.axis:
    parts = [lax.split(b, sizes, axis) for b in x.blocks]
    return [Blocked(list(ps), x.axis) for ps in zip(*parts)]
  bounds, total = [], 0
  for n in sizes:
    total += n
    bounds.append(total)
  edges, total = [], 0
  for n in x.sizes:
    total += n
    edges.append(total)
  if not set(bounds) <= set(edges):
    return None
  out, start = [], 0
  for bound in bounds:
    stop = edges.index(bound) + 1
    out.append(blocked(x.blocks[start:stop], axis))
    start = stop
  return out


def _slice(eqn, args, params, stats):
  [x] = args
  if not isinstance(x, Blocked):
    return None
  start, limit = list(params["start_indices"]), list(params["limit_indices"])
  strides = params["strides"]
  if strides is not None and any(s != 1 for s in strides):
    return None
  a = x.axis
  edges = [0]
  for n in x.sizes:
    edges.append(edges[-1] + n)
  if start[a] not in edges or limit[a] not in edges:
    return None
  first, last = edges.index(start[a]), edges.index(limit[a])
  out = []
  for b in x.blocks[first:last]:
    s, l = list(start), list(limit)
    s[a], l[a] = 0, b.shape[a]
    out.append(lax.slice(b, s, l))
  return blocked(out, a)


def _concatenate(eqn, args, params, stats):
  dim = params["dimension"]
  if any(isinstance(a, Blocked) and a.axis != dim for a in args):
    return None
  blocks = []
  for a in args:
    blocks.extend(a.blocks if isinstance(a, Blocked) else [whole(a)])
  return Blocked(blocks, dim)


def _pad(eqn, args, params, stats):
  x, value = args
  if not isinstance(x, Blocked) or _is_array_value(value):
    return None
  config = list(params["padding_config"])
  low, high, interior = config[x.axis]
  if interior != 0 or low < 0 or high < 0:
    return None
  config[x.axis] = (0, 0, 0)
  blocks = [lax.pad(b, value, config) for b in x.blocks]

  def filler(size):
    shape = list(blocks[0].shape)
    shape[x.axis] = size
    return lax.broadcast_in_dim(value, tuple(shape), ())
  blocks = ([filler(low)] if low else []) + blocks + ([filler(high)] if high else [])
  return Blocked(blocks, x.axis)


def _dot_general(eqn, args, params, stats):
  lhs, rhs = args
  ((lc, rc), (lb, rb)) = params["dimension_numbers"]
  if lb or rb:
    return None
  lhs_free = [d for d in range(len(lhs.shape)) if d not in lc]
  rhs_free = [d for d in range(len(rhs.shape)) if d not in rc]

  def dot(a, b):
    return _bind(eqn, [a, b])[0]

  if isinstance(lhs, Blocked) and lhs.axis in lc:  # contracting axis blocked: a sum
    r_axis = rc[list(lc).index(lhs.axis)]
    if isinstance(rhs, Blocked) and rhs.axis != r_axis:
      return None
    parts = [dot(a, b) for a, b in zip(lhs.blocks, blocks_of(rhs, r_axis, lhs.sizes, stats))]
    out = parts[0]
    for p in parts[1:]:
      out = out + p
    return out
  if isinstance(rhs, Blocked) and rhs.axis in rc:
    l_axis = lc[list(rc).index(rhs.axis)]
    if isinstance(lhs, Blocked):
      return None
    parts = [dot(a, b) for a, b in zip(blocks_of(lhs, l_axis, rhs.sizes, stats), rhs.blocks)]
    out = parts[0]
    for p in parts[1:]:
      out = out + p
    return out
  if isinstance(lhs, Blocked) and isinstance(rhs, Blocked):
    return None
  if isinstance(lhs, Blocked):  # a free axis of lhs
    return Blocked([dot(a, whole(rhs)) for a in lhs.blocks], lhs_free.index(lhs.axis))
  if isinstance(rhs, Blocked):
    return Blocked([dot(whole(lhs), b) for b in rhs.blocks],
                   len(lhs_free) + rhs_free.index(rhs.axis))
  return None


_RULES: dict[str, Callable] = {
    "broadcast_in_dim": _broadcast_in_dim, "squeeze": _squeeze, "reshape": _reshape,
    "transpose": _transpose, "reduce_sum": _reduce, "reduce_max": _reduce,
    "reduce_min": _reduce, "reduce_prod": _reduce, "split": _split, "slice": _slice,
    "concatenate": _concatenate, "pad": _pad, "dot_general": _dot_general,
}


# ----------------------------------------------------------------------------- the split

@dataclasses.dataclass(frozen=True, eq=False)
class Step:
  """A step function f(params, *rest) split at what depends on `params` alone.

  prepare(params_leaves) -> residuals: the loop-invariant work, for XLA before the kernel.
  core: the rest as a jaxpr of (*residuals, *rest_leaves) -> outputs, for the kernel.
  """
  known: jcore.ClosedJaxpr   # the whole step's jaxpr
  known_eqns: tuple          # its equations that depend on the parameters alone
  num_params: int
  residual_vars: tuple       # the values the other equations read from those
  core: jcore.ClosedJaxpr    # (*residuals, *rest) -> outputs
  residual_avals: tuple

  def prepare(self, params_leaves: Sequence[Array]) -> list:
    """The residuals <each its aval's shape> of the parameters (plain JAX)."""
    jaxpr = self.known.jaxpr
    env = dict(zip(jaxpr.constvars, self.known.consts))
    env.update(zip(jaxpr.invars[:self.num_params], params_leaves))
    for eqn in self.known_eqns:
      env.update(zip(eqn.outvars, _bind(eqn, [_read(env, v) for v in eqn.invars])))
    return [env[v] for v in self.residual_vars]


def split_step(fn: Callable, params, *rest) -> tuple[Step, Any]:
  """`fn(params, *rest)` traced at these arguments (arrays or ShapeDtypeStructs) and split
  (`Step`); also the output's tree structure. The core's inputs are the residuals followed
  by the leaves of `rest`."""
  params_leaves, params_tree = jax.tree.flatten(params)
  rest_leaves, rest_tree = jax.tree.flatten(rest)
  out_tree = []

  def flat(*leaves):
    p = jax.tree.unflatten(params_tree, leaves[:len(params_leaves)])
    r = jax.tree.unflatten(rest_tree, leaves[len(params_leaves):])
    out = fn(p, *r)
    out_leaves, tree = jax.tree.flatten(out)
    out_tree.append(tree)
    return out_leaves

  closed = jax.make_jaxpr(flat)(*params_leaves, *rest_leaves)
  jaxpr = closed.jaxpr
  known = set(jaxpr.constvars) | set(jaxpr.invars[:len(params_leaves)])
  eqns, _ = _needed(jaxpr.eqns, jaxpr.outvars, [True] * len(jaxpr.outvars))
  known_eqns, later = [], []
  for eqn in eqns:
    if not eqn.effects and all(isinstance(v, jcore.Literal) or v in known for v in eqn.invars):
      known_eqns.append(eqn)
      known.update(eqn.outvars)
    else:
      later.append(eqn)
  residual_vars = []
  for v in [v for e in later for v in e.invars] + list(jaxpr.outvars):
    if not isinstance(v, jcore.Literal) and v in known and v not in residual_vars:
      residual_vars.append(v)
  # Only the equations the residuals need run before the kernel.
  needed_known, _ = _needed(known_eqns, residual_vars, [True] * len(residual_vars))
  residual_avals = tuple(v.aval for v in residual_vars)
  rest_vars = jaxpr.invars[len(params_leaves):]

  def core_fn(*args):
    env = dict(zip(residual_vars, args[:len(residual_vars)]))
    env.update(zip(rest_vars, args[len(residual_vars):]))
    for eqn in later:
      env.update(zip(eqn.outvars, _bind(eqn, [_read(env, v) for v in eqn.invars])))
    return [_read(env, v) for v in jaxpr.outvars]

  core = jax.make_jaxpr(core_fn)(*[jax.ShapeDtypeStruct(a.shape, a.dtype)
                                   for a in residual_avals],
                                 *[jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype)
                                   for v in rest_vars])
  step = Step(closed, tuple(needed_known), len(params_leaves), tuple(residual_vars), core,
              residual_avals)
  return step, out_tree[0]


def core_function(step: Step) -> Callable:
  """The core as a plain function of its flat inputs (for `jax.vjp`)."""
  return jcore.jaxpr_as_fun(step.core)
