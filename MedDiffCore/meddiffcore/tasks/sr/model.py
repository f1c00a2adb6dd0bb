"""Stage networks of the cascade, their training loss and sampling.

A stage is a 2D UNet whose middle block is a :class:`~meddiffcore.nets.swin.SwinBottleneck`.
Super-resolution stages get the bilinearly upsampled lower-resolution image as
one extra input channel (``concat``) and, with noise-conditioning augmentation,
the augmentation level as a one-number ``embedding``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...diffusion import VPDenoiser, clip_x0, get_sampler, initial_noise
from ...errors import ConfigError
from ...nets import UNet, UNetConfig
from ...nets.swin import SwinBottleneck
from .config import SRDiffusionConfig, SwinConfig
from .resample import downsample_area, upsample_bilinear

#: ``sampler="authors"``: the stage's published sampler (``StageSpec.authors_sampler``).
AUTHORS = "authors"


@dataclass
class StageSpec:
    """What a stage needs besides its weights (stored per stage in the model card).

    ``network`` is a UNet configuration, or an :class:`~meddiffcore.nets.mrnet.MRNetUNetConfig` for an
    imported MRNet stage. ``model_range`` is the range the stage diffuses in ([-1, 1] for MedDiff's
    stages, [0, 1] for MRNet's); ``authors_sampler`` the sampler its authors published, if any.
    """

    stage: str
    size: int
    low_size: int
    network: Any
    swin: SwinConfig
    diffusion: SRDiffusionConfig
    model_range: tuple[float, float] = (-1.0, 1.0)
    authors_sampler: dict | None = None

    @property
    def is_super_resolution(self) -> bool:
        return self.low_size > 0


def check_stage_network(spec: StageSpec) -> None:
    net = spec.network
    if net.spatial_dims != 2 or net.in_channels != 1 or net.out_channels != 1:
        raise ConfigError("an SR cascade stage is a 2D UNet on one channel",
                          "set network.spatial_dims = 2, in_channels = 1, out_channels = 1")
    want_cond = 1 if spec.is_super_resolution else 0
    if net.cond_channels != want_cond:
        raise ConfigError(f"stage '{spec.stage}' needs network.cond_channels = {want_cond}, got {net.cond_channels}",
                          "1 (the upsampled low-resolution image) for a super-resolution stage, 0 for the base")
    want_emb = 1 if spec.is_super_resolution and spec.diffusion.noise_augmentation > 0 else 0
    if net.embedding_channels != want_emb:
        raise ConfigError(f"stage '{spec.stage}' needs network.embedding_channels = {want_emb}",
                          "1 carries the noise-augmentation level (noise_augmentation > 0), else 0")
    for m in net.size_multiple:
        if spec.size % m:
            raise ConfigError(f"stage size {spec.size} is not divisible by the UNet's {m}", "use fewer levels")


def build_stage_network(spec: StageSpec) -> torch.nn.Module:
    from ...nets.mrnet import MRNetUNet, MRNetUNetConfig

    if isinstance(spec.network, MRNetUNetConfig):
        return MRNetUNet(spec.network)
    check_stage_network(spec)
    middle = None
    if spec.swin.enabled:
        bottleneck_channels = spec.network.base_channels * spec.network.channel_mult[-1]
        middle = SwinBottleneck(bottleneck_channels, spec.network.embed_channels, window=spec.swin.window,
                                heads=spec.swin.heads, depth=spec.swin.depth, norm_groups=spec.network.norm_groups,
                                dropout=spec.network.dropout, relative_position_bias=spec.swin.relative_position_bias)
    return UNet(spec.network, middle=middle)


def stage_condition(low: Tensor, spec: StageSpec, aug_level: Tensor | None,
                    generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """The ``concat`` (and ``embedding``) inputs of a super-resolution stage from its (B, 1, h, w) input."""
    cond = upsample_bilinear(low, spec.size)
    if spec.diffusion.noise_augmentation <= 0:
        return {"concat": cond}
    if aug_level is None:
        aug_level = torch.full((low.shape[0],), spec.diffusion.sampling_augmentation, device=low.device)
    noise = torch.randn(cond.shape, generator=generator, device=cond.device, dtype=cond.dtype)
    cond = cond + aug_level.view(-1, 1, 1, 1).to(cond.dtype) * noise
    return {"concat": cond, "embedding": aug_level.view(-1, 1).to(cond.dtype)}


def training_loss(net: UNet, spec: StageSpec, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Denoising loss of one stage on high-resolution images (B, 1, size, size) in [-1, 1]."""
    schedule = spec.diffusion.noise_schedule()
    b = image.shape[0]
    cond: dict[str, Tensor] = {}
    if spec.is_super_resolution:
        aug = None
        if spec.diffusion.noise_augmentation > 0:
            aug = torch.rand(b, generator=generator, device=image.device) * spec.diffusion.noise_augmentation
        cond = stage_condition(downsample_area(image, spec.size // spec.low_size), spec, aug, generator)
    sigma = schedule.sample_training_sigmas(b, generator).to(image.device)
    eps = torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)
    x = image + sigma.view(-1, 1, 1, 1).to(image.dtype) * eps
    out = VPDenoiser(net, schedule, prediction=spec.diffusion.prediction).predict(x, sigma, **cond)
    if spec.diffusion.prediction == "x0":
        return F.mse_loss(out.x0.float(), image.float())
    if spec.diffusion.prediction == "v":
        a = (1 + sigma**2).rsqrt().view(-1, 1, 1, 1)
        s = sigma.view(-1, 1, 1, 1) * a
        return F.mse_loss((a * out.eps - s * out.x0).float(), (a * eps - s * image).float())
    return F.mse_loss(out.eps.float(), eps.float())


@torch.no_grad()
def sample_stage(net: torch.nn.Module, spec: StageSpec, samples: int, *, low: Tensor | None = None,
                 steps: int | None = None, sampler: str | None = None, generator: torch.Generator | None = None,
                 callback=None) -> Tensor:
    """(samples, 1, size, size) in the stage's model range ([-1, 1]; [0, 1] for MRNet stages); ``low``
    (samples, 1, low_size, low_size) in the same range for SR stages.

    ``sampler="authors"`` runs the stage's ``authors_sampler`` (MRNet: ancestral over every training step,
    variance beta_t, no clipping; ``steps`` still overrides the count).

    Every x0 estimate is clamped to [-1, 1] (DDPM's ``clip_denoised``): at the schedule's top noise
    level (sigma ~ 630 for the seed's betas) an eps-prediction's x0 is the eps error times 630, and
    unclipped those estimates throw the trajectory off the data range (measured: PSNR 7-9 dB
    instead of >20 dB for the demo stages).
    """
    device = next(net.parameters()).device
    diffusion = spec.diffusion
    lo, hi = spec.model_range
    spacing, options, clip = None, {}, True
    if sampler == AUTHORS:
        if not spec.authors_sampler:
            raise ConfigError(f"stage '{spec.stage}' records no authors' sampler", "name a sampler (e.g. dpmpp_2m)")
        published = spec.authors_sampler
        sampler, spacing, clip = published["sampler"], "uniform", bool(published.get("clip", True))
        steps = steps or int(published["steps"])
        if "variance" in published:
            options["variance"] = published["variance"]
    sigmas = diffusion.noise_schedule().sampling_sigmas(steps or diffusion.sampling_steps, spacing).to(device)
    x = initial_noise((samples, 1, spec.size, spec.size), sigmas, generator, device=device)
    cond = stage_condition(low.to(device), spec, None, generator) if spec.is_super_resolution else None
    denoiser = VPDenoiser(net, diffusion.noise_schedule(), prediction=diffusion.prediction)
    if clip:
        denoiser = clip_x0(denoiser, lo, hi)
    out = get_sampler(sampler or diffusion.sampler)(denoiser, x, sigmas, callback=callback, generator=generator,
                                                    cond=cond, **options)
    return out.clamp(lo, hi)


def to_signed_range(x, model_range: tuple[float, float]):
    """Values in a stage's model range as [-1, 1] (what the task's unit mapping takes)."""
    lo, hi = model_range
    return (x - lo) / (hi - lo) * 2.0 - 1.0


def from_signed_range(x, model_range: tuple[float, float]):
    """[-1, 1] values in a stage's model range."""
    lo, hi = model_range
    return (x + 1.0) / 2.0 * (hi - lo) + lo
