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
from .planes import from_slices, to_slices


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


def langevin_step_sizes(score: Tensor, z: Tensor, plane: str, snr: float, groups: int = 1) -> Tensor:
    """score-SDE's Langevin step ``e = 2 (snr ||z|| / ||score||)^2`` for a (Z, Y, X) volume, broadcastable to it.

    Norms are taken per slice along ``plane`` and averaged over each of ``groups`` consecutive runs of
    slices (``torch.tensor_split``, as the authors' minibatches: their step depends on the batch); a zero
    score (an untrained network) gives no move rather than an infinite one.
    """
    s_norm = to_slices(score, plane).flatten(1).norm(dim=1)
    z_norm = to_slices(z, plane).flatten(1).norm(dim=1)
    e = torch.empty_like(s_norm)
    for idx in torch.tensor_split(torch.arange(s_norm.numel(), device=score.device), max(1, groups)):
        g = s_norm[idx].mean()
        e[idx] = torch.where(g > 0, 2 * (snr * z_norm[idx].mean() / g.clamp(min=1e-30)) ** 2, torch.zeros_like(g))
    return from_slices(e[:, None, None].expand(to_slices(score, plane).shape), plane)


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
            e = langevin_step_sizes(score, z, prior.plane, snr)
            x = x + e * score + (2 * e).sqrt() * z
        dps = which == "primary" and lam > 0
        if dps:  # the gradient of 1/2 ||A x0_hat(x) - y||^2, one network call's graph at a time
            x0, eps, grad = prior.predict_and_gradient(
                x, s, lambda x0: 0.5 * (problem.forward(x0) - y).abs().pow(2).sum())
            grads += 1
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


def authors_levels(t: Tensor, sigma_min: float, sigma_max: float, num_scales: int) -> tuple[Tensor, Tensor]:
    """score-SDE's VE discretisation at times ``t`` in (0, 1], as TPDM samples: the noise level the network
    sees, ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, and the reverse-diffusion predictor's variance
    ``G^2 = s_k^2 - s_{k-1}^2`` between neighbours of the discrete table
    ``s = geomspace(sigma_min, sigma_max, num_scales)`` at ``k = int(t (num_scales - 1))`` (``s_{-1} = 0``).
    Computed in float32 as the authors do: ``G^2`` is a difference of neighbouring squares, so its rounding
    (about 3e-5 relative) is part of their sampler. Both (len(t),) float32."""
    t = t.to(torch.float32)
    table = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), num_scales, dtype=torch.float32))
    k = (t * (num_scales - 1)).long()
    below = torch.where(k > 0, table[(k - 1).clamp(min=0)], torch.zeros_like(t))
    return sigma_min * (sigma_max / sigma_min) ** t, table[k] ** 2 - below**2


def sample_tpdm_authors(primary: VolumePrior, auxiliary: VolumePrior, problem, y: Tensor, shape: tuple[int, int, int],
                        *, sigma_min: float, sigma_max: float, steps: int, K: float, lam: float, snr: float = 0.16,
                        batch: int = 6, eps: float = 1e-5, generator: torch.Generator | None = None,
                        callback: Callable[[dict], None] | None = None) -> SamplerResult:
    """TPDM's own sampler (``controllable_generation.get_tpdm_*``), for imported TPDM models.

    ``steps`` times ``t = linspace(1, eps, steps)`` (the VE-SDE's N): a Langevin corrector step at
    ``sigma(t)`` (step sizes averaged over minibatches of ``batch`` slices), then the reverse-diffusion
    predictor ``x_mean = x + G^2 score`` (:func:`authors_levels`), whose *mean* is the next state (the
    authors discard the predictor's noise). On primary turns each of the two updates is followed by the
    DPS step ``x -= lam * grad_x sum_b ||A x0_hat(x) - y||_b`` with ``x0_hat = x + sigma(t)^2 score``: the
    residual's norm (not squared) per minibatch ``b`` of ``batch`` entries along its first axis (the
    authors' minibatches of slices when that is the primary slice axis, as for CT), the gradient taken
    through the network. ``lam`` is the authors' raw weight (e.g. 0.025 for 36-view CT).
    Result: the last ``x_mean`` (``denoise=True``). NFE: two volume passes per step.
    """
    import time

    start = time.perf_counter()
    device, gen = y.device, generator
    x = sigma_max * torch.randn(shape, generator=gen, device=device)
    primary.evaluations = auxiliary.evaluations = 0
    grads = 0
    t_grid = torch.linspace(1.0, eps, steps)
    sigmas, variances = authors_levels(t_grid, sigma_min, sigma_max, steps)
    choice_rng = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=device)))

    def score_and_dps(prior: VolumePrior, x_in: Tensor, s: float, dps: bool) -> tuple[Tensor, Tensor | None]:
        if not dps:
            return -prior.predict(x_in, s)[1] / s, None
        def loss(x0: Tensor) -> Tensor:
            r = problem.forward(x0) - y
            groups = max(1, math.ceil(r.shape[0] / batch))
            return sum(part.abs().pow(2).sum().sqrt() for part in torch.tensor_split(r, groups))

        _, eps_hat, grad = prior.predict_and_gradient(x_in, s, loss)  # one network call's graph at a time
        return -eps_hat / s, grad

    for i in range(steps):
        s, g2 = float(sigmas[i]), float(variances[i])
        which = choose_prior(i, K, choice_rng)
        prior = primary if which == "primary" else auxiliary
        dps = which == "primary" and lam > 0
        groups = max(1, math.ceil(to_slices(x, prior.plane).shape[0] / batch))
        score, grad = score_and_dps(prior, x, s, dps)
        z = torch.randn(x.shape, generator=gen, device=device)
        e = langevin_step_sizes(score, z, prior.plane, snr, groups)
        x = x + e * score + (2 * e).sqrt() * z
        if grad is not None:
            x = x - lam * grad
        score, grad = score_and_dps(prior, x, s, dps)
        x = x + g2 * score
        if grad is not None:
            x, grads = x - lam * grad, grads + 2
        if callback is not None:
            callback({"i": i, "total": steps, "sigma": s, "prior": which})
    return SamplerResult(x=x.detach(), nfe=primary.evaluations + auxiliary.evaluations, grad_evaluations=grads,
                         seconds=time.perf_counter() - start)
