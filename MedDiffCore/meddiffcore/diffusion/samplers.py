"""Samplers over one denoiser interface, k-diffusion style.

Every sampler is ``sample_<name>(denoiser, x, sigmas, callback=None,
generator=None, cond=None, **options) -> x``:

- ``denoiser(x, sigma, **cond) -> x0_hat`` with ``sigma`` of shape ``(B,)``
  (samplers pass ``sigma * x.new_ones(B)``); ``denoiser.predict`` is used where it
  exists (learned variance).
- ``x`` of shape ``(B, C, *spatial)`` (any spatial rank) is the sample at noise
  level ``sigmas[0]``; drawing it is the caller's job:
  ``x = sigmas[0] * noise_like(shape, generator)`` (see :func:`initial_noise`).
- ``sigmas`` is 1-D and descending, normally ending at 0
  (:meth:`~meddiffcore.diffusion.schedules.NoiseSchedule.sampling_sigmas`); the
  result is the sample at ``sigmas[-1]``.
- ``callback(info)`` is called once per step with ``{"i", "total", "sigma",
  "sigma_next", "x", "denoised"}``; whatever it raises propagates (that is how a
  job is cancelled).
- ``generator`` (on ``x``'s device) makes stochastic samplers reproducible.

Samplers run under ``torch.no_grad``; a hook that needs gradients (DPS) enables
them itself (:func:`~meddiffcore.diffusion.guidance.dps_gradient`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from meddiffcore.diffusion.denoisers import DenoiserOutput, predict
from meddiffcore.errors import ConfigError

Callback = Callable[[dict[str, Any]], Any]


def noise_like(
    shape: Sequence[int] | Tensor,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Standard normal noise of ``shape`` (or of a tensor's shape, dtype and
    device); on the generator's device unless ``device`` is given."""
    if isinstance(shape, Tensor):
        dtype = dtype or shape.dtype
        device = device or shape.device
        shape = shape.shape
    if device is None and generator is not None:
        device = generator.device
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)


def initial_noise(
    shape: Sequence[int],
    sigmas: Tensor,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The starting sample ``sigmas[0] * randn(shape)``."""
    return float(sigmas[0]) * noise_like(shape, generator, dtype=dtype, device=device)


def _steps(sigmas: Tensor) -> list[tuple[int, float, float]]:
    s = [float(v) for v in sigmas]
    if len(s) < 2:
        raise ConfigError("A sampler needs at least two sigmas (start and end).", "Use schedule.sampling_sigmas(steps).")
    return [(i, s[i], s[i + 1]) for i in range(len(s) - 1)]


def _call(denoiser: Callable[..., Tensor], x: Tensor, sigma: float, cond: Mapping[str, Tensor] | None) -> DenoiserOutput:
    return predict(denoiser, x, sigma * x.new_ones(x.shape[0]), **(cond or {}))


def _report(callback: Callback | None, i: int, total: int, sigma: float, sigma_next: float, x: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "total": total, "sigma": sigma, "sigma_next": sigma_next, "x": x, "denoised": denoised})


def _check_descending(s: float, sn: float, name: str) -> None:
    if not sn < s:
        raise ConfigError(f"{name} needs strictly descending sigmas, got {s} then {sn}.", "Use schedule.sampling_sigmas.")


def ancestral_variances(s: float, sn: float) -> tuple[float, float]:
    r"""Lower and upper bounds of the reverse-step variance in sigma space.

    Derivation. Write ``ab = 1/(1+s^2)`` and ``ab' = 1/(1+sn^2)`` for the VP
    cumulative products at the current and next (less noisy) level. Respacing
    keeps every ``ab`` and sets the step's ``beta = 1 - ab/ab' = (s^2 - sn^2)/(1 + s^2)``,
    so ``1 - ab = s^2/(1+s^2)`` and ``1 - ab' = sn^2/(1+sn^2)``. The DDPM posterior
    ``q(x'_vp | x_vp, x0)`` has variance ``beta_tilde = beta (1 - ab')/(1 - ab)
    = (s^2 - sn^2) sn^2 / (s^2 (1 + sn^2))`` and mean
    ``sqrt(ab') beta/(1-ab) x0 + sqrt(ab/ab') (1-ab')/(1-ab) x_vp``. In sigma
    space ``x' = x'_vp / sqrt(ab')``, which multiplies variances by ``1 + sn^2``:

    - lower bound ``beta_tilde / ab' = sn^2 (s^2 - sn^2) / s^2``,
    - upper bound ``beta / ab' = (s^2 - sn^2)(1 + sn^2)/(1 + s^2)``,
    - mean ``x0 + (sn^2/s^2)(x - x0)`` (substitute ``x_vp = x sqrt(ab)``).

    These depend on the two sigmas alone, so they hold for any respacing.
    """
    d = s * s - sn * sn
    return sn * sn * d / (s * s), d * (1 + sn * sn) / (1 + s * s)


#: Fixed reverse-step variances of :func:`sample_ancestral`: the posterior's (small) or beta's (large).
ANCESTRAL_VARIANCES = ("small", "large")


@torch.no_grad()
def sample_ancestral(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Tensor] | None = None,
    variance: str = "small",
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020) in sigma space, respacing-aware.

    Each step draws ``x' ~ N(x0 + (sn^2/s^2)(x - x0), var)`` with
    ``var = sn^2 (s^2 - sn^2)/s^2`` (the posterior ``beta_tilde``, see
    :func:`ancestral_variances`), or with ``variance="large"`` the upper bound
    ``beta / ab'`` (DDPM's fixed-large ``sigma_t^2 = beta_t``, guided-diffusion's
    ``fixedlarge``, which WDM samples with). A learned-range variance model
    (``predict(...).var_interp = f``) uses
    ``log var = f log(upper) + (1 - f) log(lower)``. The step to ``sn = 0``
    returns the denoised estimate without noise.
    """
    if variance not in ANCESTRAL_VARIANCES:
        raise ConfigError(f"Unknown ancestral variance {variance!r}.", f"Use one of {', '.join(ANCESTRAL_VARIANCES)}.")
    steps = _steps(sigmas)
    for i, s, sn in steps:
        _check_descending(s, sn, "sample_ancestral")
        out = _call(denoiser, x, s, cond)
        _report(callback, i, len(steps), s, sn, x, out.x0)
        if sn == 0:
            x = out.x0
            continue
        mean = out.x0 + (sn * sn / (s * s)) * (x - out.x0)
        lo, hi = ancestral_variances(s, sn)
        if out.var_interp is None:
            std = math.sqrt(lo if variance == "small" else hi)
            x = mean + std * noise_like(x, generator)
        else:
            f = out.var_interp.to(x.dtype)
            std = torch.exp(0.5 * (f * math.log(hi) + (1 - f) * math.log(lo)))
            x = mean + std * noise_like(x, generator)
    return x


@torch.no_grad()
def sample_ddim(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Tensor] | None = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (Song et al. 2021) in sigma space: ``x' = x0 + sqrt(sn^2 - c^2) eps + c z``
    with ``c^2 = eta^2 sn^2 (s^2 - sn^2)/s^2``. ``eta = 0`` is deterministic (the
    probability-flow ODE's Euler step; it also runs with ascending sigmas, which
    inverts it); ``eta = 1`` has the ancestral variance and mean."""
    steps = _steps(sigmas)
    for i, s, sn in steps:
        out = _call(denoiser, x, s, cond)
        _report(callback, i, len(steps), s, sn, x, out.x0)
        if eta == 0 or sn == 0:
            x = out.x0 + sn * out.eps
            continue
        _check_descending(s, sn, "sample_ddim with eta > 0")
        c2 = eta * eta * ancestral_variances(s, sn)[0]
        x = out.x0 + math.sqrt(max(sn * sn - c2, 0.0)) * out.eps + math.sqrt(c2) * noise_like(x, generator)
    return x


@torch.no_grad()
def sample_euler(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Tensor] | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """Euler steps of the probability-flow ODE ``dx/dsigma = (x - x0)/sigma``
    (Karras et al. 2022, Algorithm 2 without the correction). ``s_churn > 0``
    adds Karras' stochastic churn between ``s_tmin`` and ``s_tmax``."""
    return _karras_ode(denoiser, x, sigmas, callback, generator, cond, False, s_churn, s_tmin, s_tmax, s_noise)


@torch.no_grad()
def sample_heun(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Tensor] | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 2): two network
    calls per step except the last (to ``sigma = 0``), which is an Euler step."""
    return _karras_ode(denoiser, x, sigmas, callback, generator, cond, True, s_churn, s_tmin, s_tmax, s_noise)


def _karras_ode(denoiser, x, sigmas, callback, generator, cond, heun, s_churn, s_tmin, s_tmax, s_noise) -> Tensor:
    steps = _steps(sigmas)
    for i, s, sn in steps:
        gamma = min(s_churn / len(steps), math.sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + s_noise * math.sqrt(s_hat**2 - s**2) * noise_like(x, generator)
        out = _call(denoiser, x, s_hat, cond)
        _report(callback, i, len(steps), s, sn, x, out.x0)
        d = out.eps
        x_next = x + (sn - s_hat) * d
        if heun and sn > 0:
            d2 = _call(denoiser, x_next, sn, cond).eps
            x_next = x + (sn - s_hat) * (d + d2) / 2
        x = x_next
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Tensor] | None = None,
    lower_order_final: bool = True,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): second-order data-prediction multistep,
    one network call per step. See :func:`sample_dpmpp_3m` for the update."""
    return _dpmpp_multistep(denoiser, x, sigmas, callback, cond, 2, lower_order_final, "sample_dpmpp_2m")


@torch.no_grad()
def sample_dpmpp_3m(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Tensor] | None = None,
    lower_order_final: bool = True,
) -> Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022): third-order data-prediction multistep,
    one network call per step.

    In ``lambda = -log sigma``, with step ``h = lambda' - lambda``, denoised
    estimates ``D_i`` and their divided differences over the previous steps
    (``r_k = h_{i-k}/h``), the exponential integrator is
    ``x' = (sn/s) x - expm1(-h) D_i + phi_2 D1 - phi_3 D2`` with
    ``phi_2 = expm1(-h)/h + 1``, ``phi_3 = phi_2/h - 1/2`` (DPM-Solver's Taylor
    form; the 2M solver stops after ``D1``). The first steps use the orders their
    history allows; the step to ``sigma = 0`` returns the denoised estimate. With
    ``lower_order_final`` and fewer than 15 steps the last steps lower the order
    to the number of steps left (DPM-Solver's ``lower_order_final``), which
    keeps few-step runs stable.
    """
    return _dpmpp_multistep(denoiser, x, sigmas, callback, cond, 3, lower_order_final, "sample_dpmpp_3m")


def _dpmpp_multistep(denoiser, x, sigmas, callback, cond, order, lower_order_final, name) -> Tensor:
    steps = _steps(sigmas)
    n = len(steps)
    lower_final = lower_order_final and n < 15 and float(sigmas[-1]) == 0
    hist: list[tuple[Tensor, float]] = []  # (denoised, h) of earlier steps, newest last
    for i, s, sn in steps:
        _check_descending(s, sn, name)
        d = _call(denoiser, x, s, cond).x0
        _report(callback, i, n, s, sn, x, d)
        if sn == 0:
            x = d
            continue
        h = math.log(s) - math.log(sn)
        k = min(order, len(hist) + 1, n - 1 - i if lower_final else order)
        x = (sn / s) * x - math.expm1(-h) * d
        phi2 = math.expm1(-h) / h + 1
        if k == 2:
            (d_1, h_1), r = hist[-1], hist[-1][1] / h
            x = x + phi2 * (d - d_1) / r
        elif k == 3:
            (d_1, h_1), (d_2, h_2) = hist[-1], hist[-2]
            r0, r1 = h_1 / h, h_2 / h
            d1_0, d1_1 = (d - d_1) / r0, (d_1 - d_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = x + phi2 * d1 - (phi2 / h - 0.5) * d2
        hist = (hist + [(d, h)])[-2:]
    return x


@torch.no_grad()
def sample_pc(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Tensor] | None = None,
    snr: float = 0.16,
    n_corrector: int = 1,
) -> Tensor:
    """VE predictor-corrector (Song et al. 2021, score_sde's ``pc_sampler``).

    Per level ``s``: ``n_corrector`` Langevin corrector steps
    ``x += e score + sqrt(2e) z`` with ``e = 2 (snr ||z|| / ||score||)^2`` (norms
    per sample, averaged over the batch as score_sde does), then the
    reverse-diffusion predictor ``x = x + (s^2 - sn^2) score + sqrt(s^2 - sn^2) z``,
    ``score = (x0 - x)/s^2``. The step to ``sn = 0`` returns the denoised ``x0``
    (score_sde's ``denoise=True``). NFE = ``(n_corrector + 1)`` per step.
    """
    steps = _steps(sigmas)
    for i, s, sn in steps:
        _check_descending(s, sn, "sample_pc")
        for _ in range(n_corrector):
            score = -_call(denoiser, x, s, cond).eps / s
            z = noise_like(x, generator)
            g_norm = score.flatten(1).norm(dim=1).mean()
            z_norm = z.flatten(1).norm(dim=1).mean()
            e = 2 * (snr * z_norm / g_norm.clamp(min=1e-30)) ** 2
            x = x + e * score + (2 * e).sqrt() * z
        out = _call(denoiser, x, s, cond)
        _report(callback, i, len(steps), s, sn, x, out.x0)
        if sn == 0:
            x = out.x0
            continue
        d = s * s - sn * sn
        x = x - (d / s) * out.eps + math.sqrt(d) * noise_like(x, generator)
    return x


#: Sampler functions by name, for configs, the CLI and the Slicer modules.
SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ancestral": sample_ancestral,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_3m": sample_dpmpp_3m,
    "pc": sample_pc,
}

#: Sampler used when a config names none: on the benchmark (Testing/Benchmarks/samplers.py) it is
#: the only one reaching W2 <= 0.002 within 20 NFE. For large classifier-free guidance scales
#: DPM-Solver++ recommends the more damped 2M; tasks may name "dpmpp_2m" there.
DEFAULT_SAMPLER = "dpmpp_3m"


def get_sampler(name: str) -> Callable[..., Tensor]:
    """The sampler called ``name``; a :class:`ConfigError` listing the known names otherwise."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ConfigError(f"Unknown sampler {name!r}.", f"Known samplers: {', '.join(SAMPLERS)}.") from None


def network_evaluations(name: str, steps: int, **options: Any) -> int:
    """Network calls a sampler makes for ``steps`` steps ending at sigma 0 (for
    progress estimates and benchmarks; guidance with both branches doubles the batch, not the count)."""
    get_sampler(name)
    if name == "heun":
        return 2 * steps - 1
    if name == "pc":
        return steps * (1 + int(options.get("n_corrector", 1)))
    return steps
