"""Exact denoisers for data whose ``E[x0 | x0 + sigma eps]`` has a closed form.

Used to test samplers, losses and wrappers without a trained network, and by the
sampler benchmark.
"""

from __future__ import annotations

import torch
from torch import Tensor

from meddiffcore.diffusion.denoisers import append_dims
from meddiffcore.diffusion.schedules import NoiseSchedule


class GaussianDenoiser:
    """Data ``x0 ~ N(mu, std^2)`` per element (``mu``, ``std`` broadcast against
    ``(C, *spatial)``): ``E[x0 | x] = mu + std^2 / (std^2 + sigma^2) (x - mu)``."""

    def __init__(self, mu: Tensor | float, std: Tensor | float) -> None:
        self.mu, self.std = torch.as_tensor(mu), torch.as_tensor(std)

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        s2 = append_dims(sigma, x.ndim).to(x.dtype) ** 2
        mu, v = self.mu.to(x), self.std.to(x) ** 2
        return mu + v / (v + s2) * (x - mu)

    def ode_solution(self, x_start: Tensor, sigma_start: float, sigma_end: float = 0.0) -> Tensor:
        """Exact probability-flow ODE map from ``sigma_start`` to ``sigma_end``."""
        mu, v = self.mu.to(x_start), self.std.to(x_start) ** 2
        return mu + ((v + sigma_end**2) / (v + sigma_start**2)).sqrt() * (x_start - mu)


class PointSetDenoiser:
    """Data uniform (or ``weights``-weighted) over the ``K`` points ``points`` of
    shape ``(K, C, *spatial)``: ``E[x0 | x]`` is the softmax-weighted mean with
    logits ``log w_k - ||x - p_k||^2 / (2 sigma^2)``."""

    def __init__(self, points: Tensor, weights: Tensor | None = None) -> None:
        self.points = points
        k = points.shape[0]
        self.log_w = (torch.full((k,), 1.0 / k) if weights is None else weights / weights.sum()).log()

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        p = self.points.to(x).flatten(1)  # (K, D)
        xf = x.flatten(1)  # (B, D)
        d2 = torch.cdist(xf, p) ** 2  # (B, K)
        logits = self.log_w.to(x) - d2 / (2 * sigma.to(x)[:, None] ** 2)
        return (logits.softmax(dim=1) @ p).reshape(x.shape)


class AnalyticVPNet:
    """A VP network ``net(x_vp, t_in) -> eps`` (or v or x0) that is exactly optimal
    for data with denoiser ``denoiser``: it maps ``t_in`` back to sigma through the
    schedule, so that wrapping it in :class:`~meddiffcore.diffusion.denoisers.VPDenoiser`
    recovers ``denoiser``. With ``learned_variance`` it appends ``C`` channels of
    the constant ``var_value`` in ``[-1, 1]``."""

    def __init__(
        self,
        denoiser,
        schedule: NoiseSchedule,
        prediction: str = "eps",
        time_input: str = "discrete",
        learned_variance: bool = False,
        var_value: float = 0.0,
    ) -> None:
        self.denoiser, self.schedule, self.prediction = denoiser, schedule, prediction
        self.time_input, self.learned_variance, self.var_value = time_input, learned_variance, var_value
        self.calls = 0

    def __call__(self, x_vp: Tensor, t_in: Tensor, **cond: Tensor) -> Tensor:
        self.calls += 1
        if self.time_input == "discrete":
            sigma = self.schedule.t_to_sigma(t_in)
        else:
            sigma = self.schedule.noise_level_to_sigma(t_in)
        s = append_dims(sigma, x_vp.ndim).to(x_vp.dtype)
        a, b = (1 + s**2).rsqrt(), s * (1 + s**2).rsqrt()
        x = x_vp / a
        x0 = self.denoiser(x, sigma.to(x_vp.dtype), **cond)
        eps = (x - x0) / s
        out = {"eps": eps, "x0": x0, "v": a * eps - b * x0}[self.prediction]
        if self.learned_variance:
            out = torch.cat([out, torch.full_like(out, self.var_value)], dim=1)
        return out
