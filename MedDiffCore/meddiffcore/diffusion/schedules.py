"""Noise schedules as data, in sigma space (Karras et al. 2022).

Every sample lives at ``x = x0 + sigma * eps``. A variance-preserving (VP) model
with cumulative product ``ab = alphas_cumprod[t]`` sees
``x_vp = sqrt(ab) * x0 + sqrt(1 - ab) * eps = x / sqrt(1 + sigma^2)`` with
``sigma = sqrt((1 - ab) / ab)``; a variance-exploding (VE) model sees ``x``.

A :class:`NoiseSchedule` is a frozen dataclass that round-trips through a JSON
dict (:meth:`NoiseSchedule.to_dict` / :meth:`NoiseSchedule.from_dict`) so that a
model card records exactly how its network was trained. Build one with
:func:`linear_schedule`, :func:`cosine_schedule`, :func:`sr3_linear_schedule` or
:func:`ve_geometric_schedule`.

All tables are computed in float64 on the CPU; methods that take a tensor answer
on that tensor's device and in its dtype.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from typing import Any

import torch

from meddiffcore.errors import ConfigError

KINDS = ("linear", "cosine", "sr3_linear", "ve_geometric")
SPACINGS = ("uniform", "trailing", "karras")

#: Spacing used when a caller names none. Chosen by Testing/Benchmarks/samplers.py
#: (cosine 1000-step VP model, 1-D Gaussian data): with DPM-Solver++(3M) it reaches
#: W2 <= 0.002 at 20 network evaluations (W2 0.0008); "uniform" and "trailing" do not
#: within 25 with any solver here.
DEFAULT_SPACING = "karras"

#: Karras et al. (2022) rho: how strongly the "karras" spacing crowds low sigmas.
KARRAS_RHO = 7.0

#: Where the rho-spaced part of the "karras" spacing starts (Karras et al. 2022's sigma_max).
KARRAS_SIGMA_MAX = 80.0


def karras_sigmas(hi, lo, steps: int) -> torch.Tensor:
    """``steps`` float64 sigmas from ``hi`` down to ``lo`` (floats or 0-d tensors), spaced evenly in
    ``sigma^(1/rho)`` (Karras et al., rho = :data:`KARRAS_RHO`); no trailing 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    top, bottom = hi ** (1 / KARRAS_RHO), lo ** (1 / KARRAS_RHO)
    return (top + ramp * (bottom - top)) ** KARRAS_RHO


@dataclass(frozen=True)
class NoiseSchedule:
    """A training noise schedule, VP (discrete betas) or VE (geometric sigmas).

    Fields (all plain JSON values):
        kind: ``"linear"`` (DDPM betas, linear in ``t``), ``"cosine"`` (Nichol &
            Dhariwal 2021), ``"sr3_linear"`` (linear betas, continuous noise level
            as SR3 trains) or ``"ve_geometric"`` (score-SDE VE sigmas).
        num_timesteps: ``T`` training steps (VP) or ``N`` discretisation steps (VE).
        beta_start, beta_end: linear betas; for ``kind="linear"`` ``None`` means
            guided-diffusion's ``1e-4 .. 0.02`` scaled by ``1000 / T``.
        cosine_s: offset ``s`` of the cosine schedule.
        sigma_min, sigma_max: VE noise range.
        continuous: the network is trained on a continuous noise level
            ``gamma = sqrt(ab)`` drawn between neighbouring steps (SR3) rather than
            on the integer step ``t``.
    """

    kind: str
    num_timesteps: int
    beta_start: float | None = None
    beta_end: float | None = None
    cosine_s: float = 0.008
    sigma_min: float | None = None
    sigma_max: float | None = None
    continuous: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"Unknown noise schedule kind {self.kind!r}.", f"Use one of {', '.join(KINDS)}.")
        if int(self.num_timesteps) != self.num_timesteps or self.num_timesteps < 2:
            raise ConfigError(
                f"num_timesteps must be an integer >= 2, got {self.num_timesteps!r}.",
                "Set the number of training steps of the schedule, e.g. 1000.",
            )
        if self.kind == "ve_geometric":
            if self.sigma_min is None or self.sigma_max is None or not 0 < self.sigma_min < self.sigma_max:
                raise ConfigError(
                    f"VE schedule needs 0 < sigma_min < sigma_max, got {self.sigma_min!r}, {self.sigma_max!r}.",
                    "TPDM uses sigma_min=0.01, sigma_max=378.",
                )
        elif self.kind in ("linear", "sr3_linear") and self.beta_start is not None:
            if self.beta_end is None or not 0 < self.beta_start < self.beta_end < 1:
                raise ConfigError(
                    f"Linear betas need 0 < beta_start < beta_end < 1, got {self.beta_start!r}, {self.beta_end!r}.",
                    "Give both beta_start and beta_end, e.g. 0.00085 and 0.012.",
                )

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """The JSON dict stored in a model card."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseSchedule:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"Unknown noise schedule keys: {', '.join(unknown)}.", f"Known keys: {', '.join(sorted(known))}."
            )
        return cls(**data)

    # ------------------------------------------------------------------ tables
    @property
    def is_vp(self) -> bool:
        return self.kind != "ve_geometric"

    def _require_vp(self, what: str) -> None:
        if not self.is_vp:
            raise ConfigError(f"{what} is defined only for variance-preserving schedules.", "Use a VP schedule kind.")

    @cached_property
    def betas(self) -> torch.Tensor:
        """(T,) float64 betas of a VP schedule."""
        self._require_vp("betas")
        T = self.num_timesteps
        if self.kind == "cosine":
            steps = torch.arange(T + 1, dtype=torch.float64) / T
            f = torch.cos((steps + self.cosine_s) / (1 + self.cosine_s) * math.pi / 2) ** 2
            return (1 - f[1:] / f[:-1]).clamp(max=0.999)
        start, end = self.beta_start, self.beta_end
        if start is None:
            if self.kind == "sr3_linear":
                start, end = 1e-6, 1e-2
            else:
                scale = 1000.0 / T
                start, end = scale * 1e-4, scale * 0.02
        return torch.linspace(start, end, T, dtype=torch.float64)

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        """(T,) float64 ``ab_t = prod_{s<=t} (1 - beta_s)``, decreasing."""
        return torch.cumprod(1 - self.betas, dim=0)

    @cached_property
    def train_sigmas(self) -> torch.Tensor:
        """(T,) float64 training sigmas, ascending (index ``t``)."""
        if self.is_vp:
            ab = self.alphas_cumprod
            return ((1 - ab) / ab).sqrt()
        n = torch.arange(self.num_timesteps, dtype=torch.float64) / (self.num_timesteps - 1)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** n

    @property
    def sigma_min_train(self) -> float:
        return float(self.train_sigmas[0])

    @property
    def sigma_max_train(self) -> float:
        return float(self.train_sigmas[-1])

    # ------------------------------------------------------------------ sampling grids
    def sampling_sigmas(self, steps: int, spacing: str | None = None) -> torch.Tensor:
        """(steps + 1,) float64 sigmas, descending, ending with exactly 0.

        ``spacing``:
            ``"uniform"``: VP: ``steps`` training steps evenly spread over
                ``t = T-1 .. 0`` (respacing: a subset of :attr:`train_sigmas`).
                VE: geometric from ``sigma_max`` to ``sigma_min`` (score-SDE's grid).
            ``"trailing"``: VP: ``t = T-1, T-1-T/steps, ...`` (respacing; ends at
                ``T/steps - 1`` rather than 0). VE: as ``"uniform"``.
            ``"karras"``: the largest training sigma, then (if it is above 80) ``steps - 1`` sigmas
                ``(hi^(1/rho) .. sigma_min^(1/rho))^rho`` with rho=7 from
                ``hi = min(80, sigma_max)`` (Karras et al.'s sigma_max) down to the
                smallest training sigma. Starting at the training maximum keeps
                the initial ``sigmas[0] * randn`` a faithful prior (a VP cosine
                model's sigma_max is ~2e4; starting at 80 would bias the mean by
                ``~mu * std / 80``), while the rho-spacing below 80 spends the
                steps where the data's structure is resolved. Not a subset of the
                training sigmas (discrete models see fractional ``t``, see
                :meth:`sigma_to_t`).
            ``None``: :data:`DEFAULT_SPACING`.

        The caller draws the initial sample as ``sigmas[0] * randn``.
        """
        spacing = DEFAULT_SPACING if spacing is None else spacing
        if spacing not in SPACINGS:
            raise ConfigError(f"Unknown sigma spacing {spacing!r}.", f"Use one of {', '.join(SPACINGS)}.")
        T = self.num_timesteps
        if int(steps) != steps or steps < 1 or (self.is_vp and spacing != "karras" and steps > T):
            limit = f"1..{T}" if self.is_vp and spacing != "karras" else ">= 1"
            raise ConfigError(f"Number of sampling steps must be {limit}, got {steps!r}.", "Choose e.g. 20 to 1000.")
        steps = int(steps)
        train = self.train_sigmas
        if spacing == "karras":
            prefix = train[-1:] if train[-1] > KARRAS_SIGMA_MAX else train[:0]
            top = min(KARRAS_SIGMA_MAX, float(train[-1]))
            sig = torch.cat([prefix, karras_sigmas(top, train[0], steps - len(prefix))])
        elif not self.is_vp:
            sig = torch.exp(torch.linspace(math.log(train[-1]), math.log(train[0]), steps, dtype=torch.float64))
        elif spacing == "uniform":
            t = torch.linspace(T - 1, 0, steps, dtype=torch.float64).round().long()
            sig = train[t]
        else:  # trailing
            t = (torch.arange(T, 0, -T / steps, dtype=torch.float64).round().long() - 1)[:steps]
            sig = train[t]
        return torch.cat([sig, sig.new_zeros(1)])

    # ------------------------------------------------------------------ time inputs
    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional step index for ``sigma``: linear interpolation of ``t`` in
        ``log sigma`` over :attr:`train_sigmas` (exact at the training sigmas),
        clamped to ``[0, T-1]``. Same device and dtype as ``sigma``."""
        log_train = self.train_sigmas.log().to(sigma.device)
        log_s = sigma.to(torch.float64).clamp(min=1e-30).log()
        idx = torch.searchsorted(log_train, log_s.reshape(-1)).clamp(1, self.num_timesteps - 1).reshape(log_s.shape)
        lo, hi = log_train[idx - 1], log_train[idx]
        w = ((log_s - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1 + w).to(sigma.dtype)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`sigma_to_t` for ``t`` in ``[0, T-1]``."""
        log_train = self.train_sigmas.log().to(t.device)
        t64 = t.to(torch.float64).clamp(0, self.num_timesteps - 1)
        lo = t64.floor().long().clamp(max=self.num_timesteps - 2)
        w = t64 - lo
        return ((1 - w) * log_train[lo] + w * log_train[lo + 1]).exp().to(t.dtype)

    @staticmethod
    def sigma_to_noise_level(sigma: torch.Tensor) -> torch.Tensor:
        """SR3 continuous noise level ``gamma = sqrt(ab) = 1 / sqrt(1 + sigma^2)``."""
        return (1 + sigma**2).rsqrt()

    @staticmethod
    def noise_level_to_sigma(gamma: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`sigma_to_noise_level`."""
        return (1 - gamma**2).sqrt() / gamma

    # ------------------------------------------------------------------ training draws
    def sample_training_steps(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch,) int64 training step indices, uniform in ``0 .. T-1``."""
        device = generator.device if generator is not None else None
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=device)

    def sample_training_sigmas(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch,) float32 training sigmas.

        Discrete VP: ``train_sigmas[t]``, ``t`` uniform. Continuous VP (SR3):
        ``gamma ~ U(sqrt(ab_{t-1}), sqrt(ab_t))`` with ``ab_{-1} = 1``, then
        ``sigma = sqrt(1 - gamma^2) / gamma``. VE: log-uniform in
        ``[sigma_min, sigma_max]``. On the generator's device (CPU without one).
        """
        device = generator.device if generator is not None else None
        if not self.is_vp:
            u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
            lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
            return torch.exp(lo + u * (hi - lo)).float()
        t = self.sample_training_steps(batch, generator)
        if not self.continuous:
            return self.train_sigmas.to(t.device)[t].float()
        sqrt_ab = self.alphas_cumprod.to(t.device).sqrt()
        sqrt_ab_prev = torch.cat([sqrt_ab.new_ones(1), sqrt_ab[:-1]])
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        gamma = sqrt_ab[t] + u * (sqrt_ab_prev[t] - sqrt_ab[t])
        return self.noise_level_to_sigma(gamma).clamp(min=1e-12).float()


def linear_schedule(
    num_timesteps: int = 1000, beta_start: float | None = None, beta_end: float | None = None
) -> NoiseSchedule:
    """DDPM linear betas. Without ``beta_start``/``beta_end``: guided-diffusion's
    ``1e-4 .. 0.02`` scaled by ``1000 / T``; with them (e.g. the SR cascade's
    ``0.00085 .. 0.012`` over ``T = 2000``): exactly those, unscaled."""
    return NoiseSchedule("linear", num_timesteps, beta_start=beta_start, beta_end=beta_end)


def cosine_schedule(num_timesteps: int = 1000, s: float = 0.008) -> NoiseSchedule:
    """Nichol & Dhariwal (2021): ``ab(t) = f(t)/f(0)``, ``f(t) = cos((t/T + s)/(1 + s) pi/2)^2``,
    betas clipped to 0.999."""
    return NoiseSchedule("cosine", num_timesteps, cosine_s=s)


def sr3_linear_schedule(
    num_timesteps: int = 1500, beta_start: float = 1e-6, beta_end: float = 1e-2
) -> NoiseSchedule:
    """SR3 / CTP seed: linear betas ``1e-6 .. 1e-2`` over 1500 steps, trained on a
    continuous noise level ``gamma = sqrt(ab)``."""
    return NoiseSchedule("sr3_linear", num_timesteps, beta_start=beta_start, beta_end=beta_end, continuous=True)


def ve_geometric_schedule(sigma_min: float = 0.01, sigma_max: float = 378.0, num_timesteps: int = 2000) -> NoiseSchedule:
    """Score-SDE VE: geometric sigmas ``sigma_min .. sigma_max`` (TPDM: 0.01 .. 378, N=2000)."""
    return NoiseSchedule("ve_geometric", num_timesteps, sigma_min=sigma_min, sigma_max=sigma_max)
