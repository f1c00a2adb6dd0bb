"""The linear-operator protocol shared by the physics models, and a batched conjugate-gradient solver."""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor


class LinearOperator(Protocol):
    """``forward: image -> measurement``; ``adjoint: measurement -> image``, exactly its transpose."""

    def forward(self, x: Tensor) -> Tensor: ...

    def adjoint(self, y: Tensor) -> Tensor: ...


SOLVER_BLOCK_ELEMENTS = 1 << 24
"""Pixels per block of slices for the per-slice solvers (64 slices of 512^2): CG data consistency and the TV
baseline run block by block, so their working set is a block's, not the volume's (volumes up to 64 slices of 512^2
or 256^3 are one block). A block's float32 tensors are 64 MiB, above glibc's largest mmap threshold (32 MiB), so
each goes back to the system when freed: with blocks of 16 MiB the full-size CT (512^2 x 64) and MRI (256^3) jobs
peaked 86-148 and 175 MB higher than in one block (peak RSS; freed heap blocks staying in the process, likely)."""


def solver_blocks(op: LinearOperator, shape: tuple[int, ...]) -> list[slice]:
    """Blocks of items along axis 0 of at most :data:`SOLVER_BLOCK_ELEMENTS` pixels each, for an operator that acts
    on each item separately (``cg_per_item``, the default); one block for an operator that couples them.

    A per-item solver gives the same iterates on a block as on the whole batch: each item has its own step sizes,
    and an item whose residual has vanished stops moving, so stopping a block once all its items are done is what
    the whole batch does to them."""
    n = shape[0]
    if not getattr(op, "cg_per_item", True) or len(shape) < 2:
        return [slice(0, n)]
    pixels = 1
    for d in shape[1:]:
        pixels *= int(d)
    step = max(1, SOLVER_BLOCK_ELEMENTS // max(1, pixels))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def in_blocks(blocks: list[slice], like: Tensor, solve: Callable[[slice], Tensor]) -> Tensor:
    """``solve(block)`` for each block of items, written into one result shaped and typed like ``like``."""
    out = torch.empty_like(like)
    for part in blocks:
        out[part] = solve(part)
    return out


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Real part of the inner product per batch item: ``(B,)``."""
    if a.is_complex() or b.is_complex():
        return (a.conj() * b).real.flatten(1).sum(1)
    return (a * b).flatten(1).sum(1)


def apply_normal(op: LinearOperator, x: Tensor) -> Tensor:
    """``A^T A x``: the operator's own ``normal`` where it has one (e.g. blocked, without the measurement of the
    whole volume), else ``adjoint(forward(x))``."""
    normal = getattr(op, "normal", None)
    return normal(x) if normal is not None else op.adjoint(op.forward(x))


def adjoint_mismatch(op: LinearOperator, x: Tensor, y: Tensor) -> float:
    """``|<A x, y> - <x, A^T y>| / |<A x, y>|`` (the adjoint test), in float64 where possible."""
    lhs = _dot(op.forward(x), y).sum()
    rhs = _dot(x, op.adjoint(y)).sum()
    return float((lhs - rhs).abs() / lhs.abs().clamp(min=1e-30))


def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor, iters: int, tol: float = 0.0,
                       per_item: bool = True) -> Tensor:
    """Solve ``M x = b`` for a symmetric positive (semi-)definite ``M`` given as ``apply``.

    ``per_item``: ``M`` acts on each item of axis 0 separately (slice-wise CT or MRI), so
    every item gets its own step sizes; otherwise the whole tensor is one unknown (an
    operator that couples items, such as z-axis slice averaging). Items whose residual
    has vanished stop moving (no division by a zero curvature on a singular ``M``).
    """
    if not per_item:
        return conjugate_gradient(lambda v: apply(v[0])[None], b[None], x0[None], iters, tol, True)[0]
    tiny = torch.finfo(b.real.dtype if b.is_complex() else b.dtype).tiny
    r = b - apply(x0)
    x = x0.to(torch.promote_types(x0.dtype, r.dtype), copy=True)  # complex if r is, as x + alpha p made it
    p = r.clone()
    rs = _dot(r, r)
    rs0 = _dot(b, b).clamp(min=tiny)
    shape = (-1,) + (1,) * (b.ndim - 1)
    for _ in range(iters):  # x, r, p are this function's own: updated in place (apply's result is not)
        mp = apply(p)
        pmp = _dot(p, mp)
        alpha = torch.where(pmp > 0, rs / pmp.clamp(min=tiny), torch.zeros_like(rs))
        x.add_(alpha.view(shape) * p)
        r.sub_(alpha.view(shape) * mp)
        del mp
        rs_new = _dot(r, r)
        done = rs_new <= max(tol * tol, 1e-14) * rs0
        if bool(done.all()):
            break
        beta = torch.where(done | (rs <= 0), torch.zeros_like(rs), rs_new / rs.clamp(min=tiny))
        p.mul_(beta.view(shape)).add_(r).masked_fill_(done.view(shape), 0)
        rs = rs_new
    return x


def data_consistency_cg(op: LinearOperator, y: Tensor, x_init: Tensor, iters: int, gamma: float = 0.0) -> Tensor:
    """A few CG iterations on ``||A x - y||^2 + gamma ||x - x_init||^2`` started at ``x_init`` (DDS's step).

    The operator's ``cg_per_item`` attribute (default True) says whether it acts on each
    item of axis 0 separately (see :func:`conjugate_gradient`)."""
    if iters <= 0:
        return x_init
    blocks = solver_blocks(op, tuple(x_init.shape))
    if len(blocks) > 1:  # block by block into one result: the working set of a block (same iterates)
        return in_blocks(blocks, x_init, lambda part: data_consistency_cg(op, y[part], x_init[part], iters, gamma))
    b = op.adjoint(y) + gamma * x_init
    def apply(v: Tensor) -> Tensor:  # A^T A v + gamma v with one volume-sized temporary fewer
        normal, scaled = apply_normal(op, v), gamma * v
        return scaled.add_(normal) if scaled.dtype == torch.promote_types(scaled.dtype, normal.dtype) else normal + scaled

    out = conjugate_gradient(apply, b, x_init, iters, per_item=getattr(op, "cg_per_item", True))
    return out.real if not x_init.is_complex() and out.is_complex() else out
