"""The linear-operator protocol shared by the physics models, and a batched conjugate-gradient solver."""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor


class LinearOperator(Protocol):
    """``forward: image -> measurement``; ``adjoint: measurement -> image``, exactly its transpose."""

    def forward(self, x: Tensor) -> Tensor: ...

    def adjoint(self, y: Tensor) -> Tensor: ...


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Real part of the inner product per batch item: ``(B,)``."""
    if a.is_complex() or b.is_complex():
        return (a.conj() * b).real.flatten(1).sum(1)
    return (a * b).flatten(1).sum(1)


def adjoint_mismatch(op: LinearOperator, x: Tensor, y: Tensor) -> float:
    """``|<A x, y> - <x, A^T y>| / |<A x, y>|`` (the adjoint test), in float64 where possible."""
    lhs = _dot(op.forward(x), y).sum()
    rhs = _dot(x, op.adjoint(y)).sum()
    return float((lhs - rhs).abs() / lhs.abs().clamp(min=1e-30))


def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor, iters: int, tol: float = 0.0) -> Tensor:
    """Solve ``M x = b`` for a symmetric positive (semi-)definite ``M`` given as ``apply``; batched over axis 0."""
    x = x0.clone()
    r = b - apply(x)
    p = r.clone()
    rs = _dot(r, r)
    shape = (-1,) + (1,) * (b.ndim - 1)
    for _ in range(iters):
        mp = apply(p)
        alpha = rs / _dot(p, mp).clamp(min=1e-30)
        x = x + alpha.view(shape) * p
        r = r - alpha.view(shape) * mp
        rs_new = _dot(r, r)
        if tol > 0 and bool((rs_new.sqrt() <= tol * b.flatten(1).norm(dim=1)).all()):
            break
        p = r + (rs_new / rs.clamp(min=1e-30)).view(shape) * p
        rs = rs_new
    return x


def data_consistency_cg(op: LinearOperator, y: Tensor, x_init: Tensor, iters: int, gamma: float = 0.0) -> Tensor:
    """A few CG iterations on ``||A x - y||^2 + gamma ||x - x_init||^2`` started at ``x_init`` (DDS's step)."""
    if iters <= 0:
        return x_init
    b = op.adjoint(y) + gamma * x_init
    out = conjugate_gradient(lambda v: op.adjoint(op.forward(v)) + gamma * v, b, x_init, iters)
    return out.real if not x_init.is_complex() and out.is_complex() else out
