"""The WDM network and its denoiser in wavelet space.

``WaveletDenoiser`` is what the samplers see: a sigma-space denoiser over the
8C subband channels whose x0 estimate comes from the UNet (``prediction="x0"``)
and, with clipping on, is pushed through image space (IDWT -> clamp -> DWT),
so every estimate is a valid volume in [-1, 1]. Noise added to orthonormal
wavelet coefficients is the same white Gaussian noise as in image space, so
training adds the noise directly to the (scaled) coefficients.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ...diffusion import TransformX0, VPDenoiser, get_sampler, initial_noise
from ...nets import UNet, UNetConfig
from ...nets.wavelet import WaveletScaling
from .config import WDMDiffusionConfig


def build_network(network: UNetConfig) -> UNet:
    return UNet(network)


def image_clip(scaling: WaveletScaling, low: float = -1.0, high: float = 1.0) -> Callable[[Tensor], Tensor]:
    """x0 transform: subbands -> image -> clamp to [low, high] -> subbands."""

    def clip(coeffs: Tensor) -> Tensor:
        return scaling(scaling.inverse(coeffs).clamp(low, high))

    return clip


class WaveletDenoiser:
    """Sigma-space denoiser on scaled Haar subbands (B, 8C, D/2, H/2, W/2).

    ``condition`` (cWDM) is given to the calls as ``concat=`` scaled subbands of the
    condition volumes, exactly as in training.
    """

    def __init__(self, net: UNet, diffusion: WDMDiffusionConfig) -> None:
        self.net, self.diffusion = net, diffusion
        self.scaling = WaveletScaling(diffusion.lll_scale)
        self.schedule = diffusion.noise_schedule()
        base = VPDenoiser(net, self.schedule, prediction="x0")
        self.denoiser = TransformX0(base, image_clip(self.scaling, *diffusion.clip_range)) if diffusion.clip else base

    def predict(self, x: Tensor, sigma: Tensor, **cond: Tensor):
        from ...diffusion import predict

        return predict(self.denoiser, x, sigma, **cond)

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        return self.denoiser(x, sigma, **cond)


def training_loss(net: UNet, diffusion: WDMDiffusionConfig, image: Tensor, condition: Tensor | None,
                  generator: torch.Generator | None = None) -> Tensor:
    """MSE between predicted and true scaled subbands (the seed's loss), for image (B, C, D, H, W) in [-1, 1]."""
    scaling = WaveletScaling(diffusion.lll_scale)
    schedule = diffusion.noise_schedule()
    x0 = scaling(image)
    sigma = schedule.sample_training_sigmas(x0.shape[0], generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) if generator is not None \
        else torch.randn_like(x0)
    x = x0 + sigma.view(-1, 1, 1, 1, 1).to(x0.dtype) * noise
    cond = {} if condition is None else {"concat": scaling(condition)}
    x0_hat = VPDenoiser(net, schedule, prediction="x0").predict(x, sigma, **cond).x0
    return F.mse_loss(x0_hat.float(), x0.float())


@torch.no_grad()
def generate(net: UNet, diffusion: WDMDiffusionConfig, size: tuple[int, int, int], samples: int, *,
             condition: Tensor | None = None, steps: int | None = None, sampler: str | None = None,
             generator: torch.Generator | None = None, callback=None) -> Tensor:
    """Sample ``samples`` volumes (B, 1, D, H, W) in ``diffusion.clip_range`` ([-1, 1] unless the model
    says otherwise); ``condition`` (B, K, D, H, W) for cWDM (K condition volumes, each becomes 8
    subband channels). The ancestral sampler uses ``diffusion.variance``; the steps are spaced by
    ``diffusion.spacing``."""
    device = next(net.parameters()).device
    denoiser = WaveletDenoiser(net, diffusion)
    sigmas = diffusion.noise_schedule().sampling_sigmas(steps or diffusion.sampling_steps, diffusion.spacing)
    sigmas = sigmas.to(device)
    shape = (samples, net.config.out_channels, *(n // 2 for n in size))
    x = initial_noise(shape, sigmas, generator, device=device)
    cond = None if condition is None else {"concat": denoiser.scaling(condition.to(device))}
    name = sampler or diffusion.sampler
    options = {"variance": diffusion.variance} if name == "ancestral" else {}
    coeffs = get_sampler(name)(denoiser, x, sigmas, callback=callback, generator=generator, cond=cond, **options)
    image = denoiser.scaling.inverse(coeffs)
    return image.clamp(*diffusion.clip_range) if diffusion.clip else image
