"""Guidance and data consistency as hooks on ``x0_hat``: denoiser wrappers, not samplers."""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor

from meddiffcore.diffusion.denoisers import DenoiserOutput, eps_from_x0, predict
from meddiffcore.errors import ConfigError

UncondValue = Tensor | Callable[[Tensor], Tensor]


class ClassifierFreeGuidance:
    """``x0 = x0_u + scale * (x0_c - x0_u)`` (the same as guiding eps, since eps is
    affine in x0 at fixed ``x``).

    ``scale`` is always applied as given; it never switches itself off:
    ``scale == 1`` is the plain conditional model (one network call),
    ``scale == 0`` the unconditional model (one call), anything else runs both
    branches in one batched call (cond and uncond concatenated along the batch)
    and extrapolates for ``scale > 1``.

    ``uncond`` gives the unconditional branch's conditioning: for each key, a
    tensor (batch 1 is expanded) or a function of the conditional tensor (e.g.
    ``torch.zeros_like``). Keys not in ``uncond`` are passed unchanged to both
    branches. ``var_interp`` comes from the conditional branch.
    """

    def __init__(self, denoiser: Callable[..., Tensor], scale: float, uncond: Mapping[str, UncondValue]) -> None:
        if not isinstance(scale, (int, float)) or scale != scale:
            raise ConfigError(f"Guidance scale must be a number, got {scale!r}.", "Use e.g. 1.0 (no guidance) to 5.0.")
        self.denoiser, self.scale, self.uncond = denoiser, float(scale), dict(uncond)

    def _uncond_cond(self, cond: Mapping[str, Tensor], batch: int) -> dict[str, Tensor]:
        unknown = sorted(set(self.uncond) - set(cond))
        if unknown:
            raise ConfigError(
                f"Unconditional inputs {', '.join(unknown)} have no conditional counterpart.",
                f"The sampler passes only {', '.join(sorted(cond)) or 'no conditioning'}.",
            )
        out = dict(cond)
        for key, value in self.uncond.items():
            value = value(cond[key]) if callable(value) else value.to(cond[key])
            out[key] = value.expand(batch, *value.shape[1:]) if value.shape[0] == 1 else value
        return out

    def predict(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> DenoiserOutput:
        if self.scale == 1.0:
            return predict(self.denoiser, x, sigma, **cond)
        b = x.shape[0]
        uncond = self._uncond_cond(cond, b)
        if self.scale == 0.0:
            out = predict(self.denoiser, x, sigma, **uncond)
            return DenoiserOutput(x0=out.x0, eps=out.eps, var_interp=None)
        both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}
        out = predict(self.denoiser, torch.cat([x, x]), torch.cat([sigma, sigma]), **both)
        x0_c, x0_u = out.x0[:b], out.x0[b:]
        eps_c, eps_u = out.eps[:b], out.eps[b:]
        return DenoiserOutput(
            x0=x0_u + self.scale * (x0_c - x0_u),
            eps=eps_u + self.scale * (eps_c - eps_u),
            var_interp=None if out.var_interp is None else out.var_interp[:b],
        )

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        return self.predict(x, sigma, **cond).x0


class DataConsistency:
    """Replace ``x0_hat`` by ``correct(x0_hat, x, sigma)``: a projection onto the
    measurements, a few conjugate-gradient steps, an inpainting paste. ``eps``
    follows from the corrected x0; ``var_interp`` is kept."""

    def __init__(self, denoiser: Callable[..., Tensor], correct: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
        self.denoiser, self.correct = denoiser, correct

    def predict(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> DenoiserOutput:
        out = predict(self.denoiser, x, sigma, **cond)
        x0 = self.correct(out.x0, x, sigma)
        return DenoiserOutput(x0=x0, eps=eps_from_x0(x, x0, sigma), var_interp=out.var_interp)

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        return self.predict(x, sigma, **cond).x0


def dps_gradient(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigma: Tensor,
    residual_fn: Callable[[Tensor], Tensor],
    cond: Mapping[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Diffusion posterior sampling (Chung et al. 2023) gradient.

    Returns ``(x0_hat, grad)`` where ``grad = d/dx sum_b ||residual_fn(x0_hat(x))_b||_2``
    is taken through the network (each sample's norm depends only on its own
    ``x``, so ``grad[b]`` is the gradient of sample ``b``'s residual norm).
    ``residual_fn`` maps ``(B, ...)`` estimates to ``(B, ...)`` residuals, e.g.
    ``A(x0) - y``. Gradients are enabled here even inside a sampler's ``no_grad``.
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        x0 = denoiser(xg, sigma, **(cond or {}))
        residual = residual_fn(x0)
        norm = residual.flatten(1).norm(dim=1).sum()
        (grad,) = torch.autograd.grad(norm, xg)
    return x0.detach(), grad
