"""The classical iterative reconstruction from the same measurements as the priors: TV-regularised least squares.

These are the baselines a prior has to beat (filtered back-projection and zero-filling are the weakest possible
ones). It works on batches of 2D slices with the project's own operators (CT projector, masked FFT).

:func:`tv_least_squares`: ``min_x 1/2 ||A x - y||^2 + lam ||A^T A|| TV_eps(x)`` with the isotropic in-plane total
  variation ``sum sqrt(|grad x|^2 + eps^2)``, solved by lagged diffusivity: each outer iteration freezes the
  weights ``1 / sqrt(|grad x|^2 + eps^2)`` and runs a few conjugate-gradient iterations on
  ``(A^T A + lam' D^T W D) x = A^T y`` from the current ``x``. ``lam`` is relative to the largest eigenvalue of
  ``A^T A``, so one value serves any number of views or any mask. With ``A = I`` it is ROF denoising (scikit-image's
  ``denoise_tv_chambolle`` with ``weight = lam``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .operator import LinearOperator, apply_normal, conjugate_gradient, in_blocks, solver_blocks


def image_gradient(x: Tensor) -> Tensor:
    """Forward differences over the last two axes (zero across the far border): (..., 2, H, W), written straight
    into the result (no per-axis copies)."""
    g = x.new_zeros(x.shape[:-2] + (2,) + x.shape[-2:])
    torch.sub(x[..., 1:, :], x[..., :-1, :], out=g[..., 0, :-1, :])
    torch.sub(x[..., :, 1:], x[..., :, :-1], out=g[..., 1, :, :-1])
    return g


def image_gradient_adjoint(g: Tensor) -> Tensor:
    """The exact transpose of :func:`image_gradient` (minus the discrete divergence)."""
    gy, gx = g[..., 0, :, :], g[..., 1, :, :]
    out = torch.zeros_like(gy)
    out[..., :-1, :] -= gy[..., :-1, :]
    out[..., 1:, :] += gy[..., :-1, :]
    out[..., :, :-1] -= gx[..., :, :-1]
    out[..., :, 1:] += gx[..., :, :-1]
    return out


def total_variation(x: Tensor, eps: float = 0.0) -> Tensor:
    """Isotropic TV per item of axis 0, ``sum sqrt(|grad x|^2 + eps^2)``: (B,)."""
    g = image_gradient(x)
    return torch.sqrt((g * g).sum(-3) + eps * eps).flatten(1).sum(1)


def normal_norm(op: LinearOperator, shape: tuple[int, ...], device=None, dtype=torch.float32, iters: int = 15,
                seed: int = 0) -> float:
    """Largest eigenvalue of ``A^T A`` (power iteration from a fixed random start)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(shape, generator=g, dtype=dtype).to(device)
    v = v.div_(v.norm())
    lam = 1.0
    blocks = solver_blocks(op, tuple(shape))
    def normal(part: slice) -> Tensor:
        w = op.adjoint(op.forward(v[part]))
        return w.real if w.is_complex() else w

    for _ in range(iters):  # a per-slice operator block by block: two volumes and a block's temporaries
        w = normal(slice(None)) if len(blocks) == 1 else in_blocks(blocks, v, normal)
        lam = float(w.norm())
        if lam <= 0:
            return 1.0
        del v
        v = w.div_(lam)  # w is this iteration's own
    return lam


def tv_least_squares(op: LinearOperator, y: Tensor, x0: Tensor, lam: float, outer: int = 10, inner: int = 8,
                     eps: float = 1e-3, nonnegative: bool = True, normal: float | None = None) -> Tensor:
    """``argmin 1/2 ||A x - y||^2 + lam ||A^T A|| TV_eps(x)`` by lagged diffusivity + CG, started at ``x0``.

    ``x0``: (B, H, W) real slices (the operator acts on each item of axis 0, or on the
    whole tensor if its ``cg_per_item`` is False); ``normal`` is ``||A^T A||`` if known.
    ``nonnegative`` clips the iterate at 0 after every outer iteration (attenuation and
    magnitude images are never negative).
    """
    per_item = getattr(op, "cg_per_item", True)
    blocks = solver_blocks(op, tuple(x0.shape))
    if len(blocks) > 1:  # per-slice: block by block (the same iterates), ||A^T A|| of the whole batch
        big = normal if normal is not None else normal_norm(op, tuple(x0.shape), x0.device, x0.dtype)
        return in_blocks(blocks, x0, lambda part: tv_least_squares(op, y[part], x0[part], lam, outer, inner, eps,
                                                                   nonnegative, big))

    def normal_op(v: Tensor) -> Tensor:
        out = apply_normal(op, v)
        return out.real if out.is_complex() else out

    def apply(v: Tensor, w: Tensor) -> Tensor:  # (A^T A + weight D^T W D) v, the volume-sized temporaries in place
        g = image_gradient(v).mul_(w)
        out = image_gradient_adjoint(g).mul_(weight)
        del g
        return out.add_(normal_op(v))

    big = normal if normal is not None else normal_norm(op, tuple(x0.shape), x0.device, x0.dtype)
    weight = lam * big
    b = op.adjoint(y)
    b = (b.real if b.is_complex() else b).to(x0.dtype)
    x = x0.clone()
    for _ in range(max(outer, 1)):
        w = image_gradient(x).square_().sum(-3, keepdim=True).add_(eps * eps).sqrt_().reciprocal_()
        x = conjugate_gradient(lambda v: apply(v, w), b, x, inner, per_item=per_item)
        del w
        if nonnegative:
            x = x.clamp_(min=0)  # CG's own result
    return x


@dataclass(frozen=True)
class IterativeSettings:
    """One tuned setting of :func:`tv_least_squares` for a modality (see :data:`ITERATIVE`)."""

    lam: float
    outer: int
    inner: int
    eps: float
    name: str

    def describe(self) -> str:
        return (f"{self.name}: TV-regularised least squares, lambda {self.lam:g} x ||A^T A||, eps {self.eps:g}, "
                f"{self.outer} x {self.inner} CG iterations (lagged diffusivity), from the "
                f"{'FBP' if self.name.startswith('CT') else 'zero-filled'} image")


#: The iterative baselines, tuned once on training phantoms (seeds 1000, 1001, 32^3; CT at 8/16/32 views, MRI at
#: x4/x8) for the best mean PSNR over the settings, never on the evaluation seeds
#: (``Testing/Benchmarks/recon_iterative.py`` prints the grid). One place for these facts.
ITERATIVE = {
    "ct": IterativeSettings(lam=2e-5, outer=10, inner=10, eps=1e-3, name="CT TV-CG"),
    "mri": IterativeSettings(lam=5e-4, outer=10, inner=10, eps=1e-3, name="MRI TV-CS"),
}


def iterative_baseline(modality: str, op: LinearOperator, y: Tensor, start: Tensor, outer: int | None = None) -> Tensor:
    """The tuned TV reconstruction of ``modality`` ('ct' or 'mri') from ``start`` (FBP or zero-filled; or a prior's
    result, refined by ``outer`` outer iterations instead of the tuned number)."""
    s = ITERATIVE[modality]
    return tv_least_squares(op, y, start.clamp(min=0), s.lam, s.outer if outer is None else outer, s.inner, s.eps)
