"""Wrappers that turn a network into a denoiser ``D(x, sigma, **cond) -> x0_hat``.

Sigma space throughout: ``x = x0 + sigma * eps``, ``x`` of shape ``(B, C, *spatial)``,
``sigma`` of shape ``(B,)``. A denoiser may also offer
``predict(x, sigma, **cond) -> DenoiserOutput`` (x0, eps and, for learned-range
variance models, ``var_interp``); :func:`predict` gives that for any denoiser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor

from meddiffcore.diffusion.schedules import NoiseSchedule
from meddiffcore.errors import ConfigError

PREDICTIONS = ("eps", "v", "x0")
TIME_INPUTS = ("discrete", "noise_level")
SCORE_SCALINGS = ("direct", "divide_by_sigma")


@dataclass
class DenoiserOutput:
    """What a denoiser knows at one call, all ``(B, C, *spatial)``.

    x0: the denoised estimate ``E[x0 | x]``.
    eps: the noise estimate, ``(x - x0) / sigma`` (zero where ``sigma == 0``).
    var_interp: learned-range variance fraction ``f`` in ``[0, 1]``
        (improved DDPM: ``log var = f log beta_t + (1 - f) log beta_tilde_t``), or None.
    """

    x0: Tensor
    eps: Tensor
    var_interp: Tensor | None = None


class Denoiser(Protocol):
    def __call__(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor: ...


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """View a ``(B,)`` tensor as ``(B, 1, ..., 1)`` with ``ndim`` dimensions."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def eps_from_x0(x: Tensor, x0: Tensor, sigma: Tensor) -> Tensor:
    """``(x - x0) / sigma`` with ``sigma`` of shape ``(B,)``; 0 where ``sigma == 0``."""
    s = append_dims(sigma, x.ndim).to(x.dtype)
    return torch.where(s > 0, (x - x0) / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(x))


def predict(denoiser: Callable[..., Tensor], x: Tensor, sigma: Tensor, **cond: Tensor) -> DenoiserOutput:
    """``denoiser.predict`` where it exists, else x0 from the call and eps from x0."""
    if hasattr(denoiser, "predict"):
        return denoiser.predict(x, sigma, **cond)
    x0 = denoiser(x, sigma, **cond)
    return DenoiserOutput(x0=x0, eps=eps_from_x0(x, x0, sigma))


def vp_output_to_x0_eps(out: Tensor, x_vp: Tensor, sqrt_ab: Tensor, sqrt_1m_ab: Tensor, prediction: str) -> tuple[Tensor, Tensor]:
    """Convert a VP network output to ``(x0, eps)``.

    ``x_vp = a x0 + b eps`` with ``a = sqrt(ab)``, ``b = sqrt(1 - ab)`` (broadcastable
    to ``x_vp``); ``v = a eps - b x0`` (Salimans & Ho 2022). Returns x0 and eps in
    data units (the same in sigma space and VP space).
    """
    a, b = sqrt_ab, sqrt_1m_ab
    if prediction == "eps":
        eps = out
        x0 = (x_vp - b * eps) / a
    elif prediction == "v":
        x0 = a * x_vp - b * out
        eps = b * x_vp + a * out
    elif prediction == "x0":
        x0 = out
        eps = torch.where(b > 0, (x_vp - a * x0) / torch.where(b > 0, b, torch.ones_like(b)), torch.zeros_like(x0))
    else:
        raise ConfigError(f"Unknown prediction type {prediction!r}.", f"Use one of {', '.join(PREDICTIONS)}.")
    return x0, eps


class VPDenoiser:
    """A variance-preserving network as a sigma-space denoiser.

    ``net(x_vp, t_in, **cond) -> out`` where ``x_vp = x / sqrt(1 + sigma^2)`` and
    ``t_in`` is the fractional training step ``schedule.sigma_to_t(sigma)``
    (``time_input="discrete"``) or the noise level ``sqrt(ab) = 1/sqrt(1 + sigma^2)``
    (``"noise_level"``, SR3). ``time_input=None`` picks ``"noise_level"`` for a
    continuous schedule, else ``"discrete"``.

    ``prediction`` names what the network outputs: ``"eps"``, ``"v"`` or ``"x0"``.
    With ``learned_variance`` the network outputs ``2C`` channels: the first ``C``
    are the prediction, the last ``C`` a value ``v`` in ``[-1, 1]`` giving
    ``var_interp = (v + 1) / 2``.
    """

    def __init__(
        self,
        net: Callable[..., Tensor],
        schedule: NoiseSchedule,
        prediction: str = "eps",
        time_input: str | None = None,
        learned_variance: bool = False,
    ) -> None:
        if not schedule.is_vp:
            raise ConfigError("VPDenoiser needs a variance-preserving schedule.", "Use VEDenoiser for VE score models.")
        if prediction not in PREDICTIONS:
            raise ConfigError(f"Unknown prediction type {prediction!r}.", f"Use one of {', '.join(PREDICTIONS)}.")
        time_input = time_input or ("noise_level" if schedule.continuous else "discrete")
        if time_input not in TIME_INPUTS:
            raise ConfigError(f"Unknown time input {time_input!r}.", f"Use one of {', '.join(TIME_INPUTS)}.")
        self.net, self.schedule = net, schedule
        self.prediction, self.time_input, self.learned_variance = prediction, time_input, learned_variance

    def time_value(self, sigma: Tensor) -> Tensor:
        """The ``(B,)`` time input the network gets for ``sigma``."""
        if self.time_input == "discrete":
            return self.schedule.sigma_to_t(sigma)
        return self.schedule.sigma_to_noise_level(sigma)

    def predict(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> DenoiserOutput:
        s = append_dims(sigma, x.ndim).to(x.dtype)
        c_in = (1 + s**2).rsqrt()
        x_vp = x * c_in
        out = self.net(x_vp, self.time_value(sigma), **cond)
        var_interp = None
        if self.learned_variance:
            if out.shape[1] != 2 * x.shape[1]:
                raise ConfigError(
                    f"Learned-variance network returned {out.shape[1]} channels for {x.shape[1]} input channels.",
                    "A learned-variance network outputs 2C channels (prediction, variance); check out_channels.",
                )
            out, v = out.chunk(2, dim=1)
            var_interp = ((v + 1) / 2).clamp(0, 1)
        x0, eps = vp_output_to_x0_eps(out, x_vp, c_in, s * c_in, self.prediction)
        return DenoiserOutput(x0=x0, eps=eps, var_interp=var_interp)

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        return self.predict(x, sigma, **cond).x0


class VEDenoiser:
    """A variance-exploding score network ``net(x, sigma, **cond)`` as a denoiser.

    ``score_scaling="direct"``: the network returns the score ``s``;
    ``"divide_by_sigma"``: it returns ``sigma * s`` (NCSN++ style), so ``s = out / sigma``.
    Then ``x0 = x + sigma^2 s`` (Tweedie) and ``eps = -sigma s``.
    """

    def __init__(self, net: Callable[..., Tensor], score_scaling: str = "divide_by_sigma") -> None:
        if score_scaling not in SCORE_SCALINGS:
            raise ConfigError(f"Unknown score scaling {score_scaling!r}.", f"Use one of {', '.join(SCORE_SCALINGS)}.")
        self.net, self.score_scaling = net, score_scaling

    def score(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        out = self.net(x, sigma, **cond)
        if self.score_scaling == "divide_by_sigma":
            out = out / append_dims(sigma, x.ndim).to(out.dtype)
        return out

    def predict(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> DenoiserOutput:
        s = append_dims(sigma, x.ndim).to(x.dtype)
        score = self.score(x, sigma, **cond)
        return DenoiserOutput(x0=x + s**2 * score, eps=-s * score)

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        return self.predict(x, sigma, **cond).x0


class TransformX0:
    """Apply ``x0_transform(x0) -> x0`` to a denoiser's estimate (eps follows from
    the new x0, ``var_interp`` is kept). WDM clips through its inverse wavelet
    transform with this; :func:`clip_x0` is the plain clamp."""

    def __init__(self, denoiser: Callable[..., Tensor], x0_transform: Callable[[Tensor], Tensor]) -> None:
        self.denoiser, self.x0_transform = denoiser, x0_transform

    def predict(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> DenoiserOutput:
        out = predict(self.denoiser, x, sigma, **cond)
        x0 = self.x0_transform(out.x0)
        return DenoiserOutput(x0=x0, eps=eps_from_x0(x, x0, sigma), var_interp=out.var_interp)

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        return self.predict(x, sigma, **cond).x0


def clip_x0(denoiser: Callable[..., Tensor], lo: float = -1.0, hi: float = 1.0) -> TransformX0:
    """Clamp the denoised estimate to ``[lo, hi]`` (guided-diffusion's ``clip_denoised``)."""
    return TransformX0(denoiser, lambda x0: x0.clamp(lo, hi))
