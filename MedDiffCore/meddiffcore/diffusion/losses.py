"""Training losses, one entry point: :func:`training_loss`.

VP losses draw a sigma per sample from the schedule
(:meth:`~meddiffcore.diffusion.schedules.NoiseSchedule.sample_training_sigmas`),
form ``x_vp = a x0 + b eps`` with ``a = 1/sqrt(1 + sigma^2)``, ``b = sigma a`` and
call ``net(x_vp, t_in, **cond)`` with ``t_in`` the integer step ``t`` (as float) or,
for a continuous (SR3) schedule, the noise level ``gamma = a``: the same inputs
:class:`~meddiffcore.diffusion.denoisers.VPDenoiser` gives at sampling time.

Kinds (the network's output is the named target):

- ``eps_mse``, ``eps_l1``: eps prediction (DDPM; CTP uses L1).
- ``x0_mse``: x0 prediction (WDM). ``v_mse``: v prediction.
- ``hybrid``: improved DDPM (Nichol & Dhariwal 2021): the network outputs ``2C``
  channels (eps, variance ``v`` in ``[-1, 1]``); loss = eps-MSE +
  ``vlb_weight * T * L_t`` where ``L_t`` is the per-step VLB term in bits per
  dimension (``KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t))`` for ``t > 0``, the
  discretized Gaussian decoder NLL for ``t = 0``) with the mean stop-gradiented so
  that the VLB trains only the variance. ``vlb_weight = 0.001`` is the paper's
  lambda; ``0.001 * T * L_t`` equals guided-diffusion's ``L_t * T / 1000``.
- ``dsm``: denoising score matching for a VE score network ``net(x, sigma)``:
  ``mean ||sigma * score + eps||^2`` with sigma log-uniform in
  ``[sigma_min, sigma_max]``.

Every kind returns ``(loss, terms)``: a scalar tensor and a dict of detached
scalars for logging. ``weight`` (a ``(B,)`` tensor or a function of the ``(B,)``
sigmas) weights samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor

from meddiffcore.diffusion.denoisers import SCORE_SCALINGS, append_dims, vp_output_to_x0_eps
from meddiffcore.diffusion.schedules import NoiseSchedule
from meddiffcore.errors import ConfigError

LOSS_KINDS = ("eps_mse", "eps_l1", "x0_mse", "v_mse", "hybrid", "dsm")
_PREDICTION = {"eps_mse": "eps", "eps_l1": "eps", "x0_mse": "x0", "v_mse": "v", "hybrid": "eps"}

Weight = Tensor | Callable[[Tensor], Tensor] | None


@dataclass(frozen=True)
class LossConfig:
    """What a task's config says about its loss.

    kind: one of :data:`LOSS_KINDS`.
    vlb_weight: lambda of the hybrid loss (improved DDPM: 0.001).
    score_scaling: for ``dsm``, how the network's output relates to the score
        (as :class:`~meddiffcore.diffusion.denoisers.VEDenoiser`).
    """

    kind: str = "eps_mse"
    vlb_weight: float = 0.001
    score_scaling: str = "divide_by_sigma"

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ConfigError(f"Unknown loss kind {self.kind!r}.", f"Use one of {', '.join(LOSS_KINDS)}.")
        if self.score_scaling not in SCORE_SCALINGS:
            raise ConfigError(
                f"Unknown score scaling {self.score_scaling!r}.", f"Use one of {', '.join(SCORE_SCALINGS)}."
            )

    def __call__(self, net, x0: Tensor, schedule: NoiseSchedule, cond: Mapping[str, Tensor] | None = None,
                 generator: torch.Generator | None = None, weight: Weight = None) -> tuple[Tensor, dict[str, float]]:
        return training_loss(self.kind, net, x0, schedule, cond, generator, weight=weight,
                             vlb_weight=self.vlb_weight, score_scaling=self.score_scaling)


def training_loss(
    kind: str,
    net: Callable[..., Tensor],
    x0: Tensor,
    schedule: NoiseSchedule,
    cond: Mapping[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    *,
    weight: Weight = None,
    vlb_weight: float = 0.001,
    score_scaling: str = "divide_by_sigma",
    noise: Tensor | None = None,
    t: Tensor | None = None,
    sigma: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The training loss of ``kind`` for a batch ``x0`` of shape ``(B, C, *spatial)``.

    ``generator`` (on ``x0``'s device) draws the steps and the noise; ``noise``
    and ``t`` (a ``(B,)`` int64 step, discrete VP schedules only) fix them instead,
    for tests; ``sigma`` (``(B,)``, continuous VP schedules only) fixes the noise
    levels, for a task that weights some levels more. Returns ``(loss, terms)``.
    """
    LossConfig(kind=kind, score_scaling=score_scaling)  # validates
    cond = dict(cond or {})
    b = x0.shape[0]
    eps = noise if noise is not None else torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if kind == "dsm":
        if schedule.is_vp:
            raise ConfigError("Denoising score matching needs a VE schedule.", "Use ve_geometric_schedule().")
        sigma = schedule.sample_training_sigmas(b, generator).to(x0)
        s = append_dims(sigma, x0.ndim)
        out = net(x0 + s * eps, sigma, **cond)
        score = out / s if score_scaling == "divide_by_sigma" else out
        per = ((s * score + eps) ** 2).flatten(1).mean(1)
        loss = _weighted_mean(per, sigma, weight)
        return loss, {"loss": loss.item(), "dsm": per.mean().item()}
    if not schedule.is_vp:
        raise ConfigError(f"Loss {kind!r} needs a variance-preserving schedule.", "Use kind='dsm' for VE score models.")
    if sigma is not None and not schedule.continuous:
        raise ConfigError("Fixed training sigmas need a continuous schedule.", "Pass t (steps) for a discrete schedule.")
    if t is None and not schedule.continuous:
        t = schedule.sample_training_steps(b, generator).to(x0.device)
    if t is not None:
        sigma = schedule.train_sigmas.to(x0.device)[t].to(x0.dtype)
    elif sigma is not None:
        sigma = sigma.to(x0)
    else:
        sigma = schedule.sample_training_sigmas(b, generator).to(x0)
    s = append_dims(sigma, x0.ndim)
    a = (1 + s**2).rsqrt()
    x_vp = a * x0 + (s * a) * eps
    t_in = schedule.sigma_to_noise_level(sigma) if schedule.continuous else t.to(x0.dtype)
    out = net(x_vp, t_in, **cond)
    terms: dict[str, float] = {}
    if kind == "hybrid":
        if out.shape[1] != 2 * x0.shape[1]:
            raise ConfigError(
                f"The hybrid loss needs 2C = {2 * x0.shape[1]} output channels, the network gave {out.shape[1]}.",
                "Build the network with learned variance (out_channels = 2 * in_channels).",
            )
        if schedule.continuous:
            raise ConfigError("The hybrid loss needs a discrete schedule.", "Use eps_l1/eps_mse with SR3 schedules.")
        out, v = out.chunk(2, dim=1)
        vlb = vlb_term(schedule, x0, x_vp, t, out.detach(), v)
        terms["vlb"] = vlb.mean().item()
    target = {"eps": eps, "x0": x0, "v": a * eps - (s * a) * x0}[_PREDICTION[kind]]
    diff = out - target
    per = (diff.abs() if kind == "eps_l1" else diff**2).flatten(1).mean(1)
    terms[kind.split("_")[0] if kind != "hybrid" else "mse"] = per.mean().item()
    if kind == "hybrid":
        per = per + vlb_weight * schedule.num_timesteps * vlb
    loss = _weighted_mean(per, sigma, weight)
    terms["loss"] = loss.item()
    return loss, terms


def _weighted_mean(per: Tensor, sigma: Tensor, weight: Weight) -> Tensor:
    if weight is None:
        return per.mean()
    w = weight(sigma) if callable(weight) else weight
    return (w.to(per) * per).mean()


def posterior_mean_var(schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``q(x_{t-1} | x_t, x0)`` in VP space: mean, variance ``beta_tilde_t`` and its
    log clipped at ``t = 0`` to ``log beta_tilde_1`` (guided-diffusion), each
    broadcast to ``x0``'s rank."""
    ab = schedule.alphas_cumprod.to(x0.device)
    betas = schedule.betas.to(x0.device)
    ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
    var = betas * (1 - ab_prev) / (1 - ab)
    log_var = torch.cat([var[1:2], var[1:]]).log()
    coef0 = betas * ab_prev.sqrt() / (1 - ab)
    coef_t = (1 - ab_prev) * (1 - betas).sqrt() / (1 - ab)

    def at(v: Tensor) -> Tensor:
        return append_dims(v[t].to(x0.dtype), x0.ndim)

    return at(coef0) * x0 + at(coef_t) * x_t, at(var), at(log_var)


def vlb_term(schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Tensor, eps_detached: Tensor, v: Tensor) -> Tensor:
    """Per-sample VLB term ``L_t`` in bits per dimension, ``(B,)``.

    Model posterior: mean from the (stop-gradiented) eps prediction, log variance
    ``f log beta_t + (1 - f) log beta_tilde_t`` (clipped), ``f = (v + 1)/2``.
    ``t > 0``: ``KL(q || p)``; ``t = 0``: ``-log p(x0 | x_1)`` under the
    discretized Gaussian on 256 bins of ``[-1, 1]``.
    """
    ab = schedule.alphas_cumprod.to(x0.device)
    sa = append_dims(ab[t].sqrt().to(x0.dtype), x0.ndim)
    x0_hat, _ = vp_output_to_x0_eps(eps_detached, x_t, sa, (1 - sa**2).sqrt(), "eps")
    true_mean, _, true_log_var = posterior_mean_var(schedule, x0, x_t, t)
    model_mean, _, min_log = posterior_mean_var(schedule, x0_hat, x_t, t)
    max_log = append_dims(schedule.betas.to(x0.device)[t].log().to(x0.dtype), x0.ndim)
    f = (v + 1) / 2
    model_log_var = f * max_log + (1 - f) * min_log
    kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var).flatten(1).mean(1) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var).flatten(1).mean(1) / math.log(2.0)
    return torch.where(t == 0, nll, kl)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise ``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))`` in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Elementwise log-likelihood (nats) of data ``x`` in ``[-1, 1]`` quantised to 256
    bins of width ``2/255`` under ``N(mean, exp(log_scale)^2)``; the outermost bins
    extend to infinity (Ho et al. 2020)."""
    centred = x - mean
    inv = torch.exp(-log_scale)
    cdf_plus = torch.special.ndtr(inv * (centred + 1.0 / 255.0))
    cdf_min = torch.special.ndtr(inv * (centred - 1.0 / 255.0))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))
