"""The TPDM sampler (Lee et al., ICCV 2023): two perpendicular 2D priors, predictor-corrector, DPS.

At each noise level one prior acts on the whole volume (slices along its plane):
a Langevin corrector step (signal-to-noise ratio ``snr``, as score-SDE), then the
reverse-diffusion predictor. On primary turns the predictor is followed by a DPS
step through the network: ``x -= (lambda / L) grad_x 0.5 ||A x0_hat(x) - y||^2``,
with ``L`` the largest eigenvalue of ``A^T A`` so that ``lambda`` is dimensionless
(``lambda = 1`` is one full gradient step on the data term); auxiliary turns are
unconditional, as in the seed. ``K`` alternates the priors: an integer ``K`` gives
``K - 1`` primary turns then one auxiliary turn; a fractional ``K`` picks the
primary prior with probability ``1 - 1/K`` (the seed's default is 2.7).

Network evaluations (``nfe``) count volume passes: every slice of the volume
through one prior once. A TPDM step costs ``n_corrector + 1`` passes, plus one
backward pass on primary turns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .priors import VolumePrior, choose_prior
from .planes import to_slices


@dataclass
class SamplerResult:
    x: Tensor
    nfe: int
    grad_evaluations: int
    seconds: float


def geometric_sigmas(sigma_max: float, sigma_min: float, steps: int) -> list[float]:
    """score-SDE's VE discretisation: ``steps`` geometric levels from sigma_max to sigma_min, then 0."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if steps == 1:
        return [sigma_max, 0.0]
    return [sigma_max * (sigma_min / sigma_max) ** (i / (steps - 1)) for i in range(steps)] + [0.0]


def _mean_norm(v: Tensor, plane: str) -> Tensor:
    return to_slices(v, plane).flatten(1).norm(dim=1).mean()


def sample_tpdm(primary: VolumePrior, auxiliary: VolumePrior, problem, y: Tensor, shape: tuple[int, int, int],
                sigmas: list[float], *, K: float = 2.7, lam: float = 1.0, lipschitz: float = 1.0, snr: float = 0.16,
                n_corrector: int = 1, generator: torch.Generator | None = None,
                callback: Callable[[dict], None] | None = None, x_init: Tensor | None = None) -> SamplerResult:
    import time

    start = time.perf_counter()
    device = y.device
    gen = generator
    x = x_init if x_init is not None else sigmas[0] * torch.randn(shape, generator=gen, device=device)
    primary.evaluations = auxiliary.evaluations = 0
    grads = 0
    total = len(sigmas) - 1
    choice_rng = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=device)))
    for i in range(total):
        s, sn = sigmas[i], sigmas[i + 1]
        which = choose_prior(i, K, choice_rng)
        prior = primary if which == "primary" else auxiliary
        for _ in range(n_corrector):
            _, eps = prior.predict(x, s)
            score = -eps / s
            z = torch.randn(x.shape, generator=gen, device=device)
            g_norm = _mean_norm(score, prior.plane)
            # a zero score (e.g. an untrained network) means no corrector move, not an infinite one
            e = torch.where(g_norm > 0, 2 * (snr * _mean_norm(z, prior.plane) / g_norm.clamp(min=1e-30)) ** 2,
                            torch.zeros_like(g_norm))
            x = x + e * score + (2 * e).sqrt() * z
        dps = which == "primary" and lam > 0
        if dps:
            xg = x.detach().requires_grad_(True)
            x0, eps = prior.predict(xg, s, with_grad=True)
            with torch.enable_grad():
                r = problem.forward(x0) - y
                loss = 0.5 * (r.abs() ** 2).sum()
                (grad,) = torch.autograd.grad(loss, xg)
            grads += 1
            x0, eps = x0.detach(), eps.detach()
        else:
            x0, eps = prior.predict(x, s)
        if callback is not None:
            callback({"i": i, "total": total, "sigma": s, "prior": which})
        if sn == 0:
            x = x0
            break
        d = s * s - sn * sn
        x = x - (d / s) * eps + math.sqrt(d) * torch.randn(x.shape, generator=gen, device=device)
        if dps:
            x = x - (lam / lipschitz) * grad
    return SamplerResult(x=x.detach(), nfe=primary.evaluations + auxiliary.evaluations, grad_evaluations=grads,
                         seconds=time.perf_counter() - start)
