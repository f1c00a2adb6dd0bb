"""The diffusion core: schedules, denoiser wrappers, guidance hooks, samplers, losses.

Sigma space throughout (Karras et al. 2022): ``x = x0 + sigma * eps``. Every
network becomes a denoiser ``D(x, sigma, **cond) -> x0_hat``; samplers are plain
functions over ``(denoiser, x, sigmas)``.
"""

from meddiffcore.diffusion.analytic import AnalyticVPNet, GaussianDenoiser, PointSetDenoiser
from meddiffcore.diffusion.denoisers import (
    DenoiserOutput,
    TransformX0,
    VEDenoiser,
    VPDenoiser,
    append_dims,
    clip_x0,
    eps_from_x0,
    predict,
)
from meddiffcore.diffusion.guidance import ClassifierFreeGuidance, DataConsistency, dps_gradient
from meddiffcore.diffusion.losses import LOSS_KINDS, LossConfig, training_loss
from meddiffcore.diffusion.samplers import (
    DEFAULT_SAMPLER,
    SAMPLERS,
    get_sampler,
    initial_noise,
    network_evaluations,
    noise_like,
    sample_ancestral,
    sample_ddim,
    sample_dpmpp_2m,
    sample_dpmpp_3m,
    sample_euler,
    sample_heun,
    sample_pc,
)
from meddiffcore.diffusion.schedules import (
    DEFAULT_SPACING,
    NoiseSchedule,
    cosine_schedule,
    linear_schedule,
    sr3_linear_schedule,
    ve_geometric_schedule,
)

__all__ = [
    "AnalyticVPNet",
    "ClassifierFreeGuidance",
    "DEFAULT_SAMPLER",
    "DEFAULT_SPACING",
    "DataConsistency",
    "DenoiserOutput",
    "GaussianDenoiser",
    "LOSS_KINDS",
    "LossConfig",
    "NoiseSchedule",
    "PointSetDenoiser",
    "SAMPLERS",
    "TransformX0",
    "VEDenoiser",
    "VPDenoiser",
    "append_dims",
    "clip_x0",
    "cosine_schedule",
    "dps_gradient",
    "eps_from_x0",
    "get_sampler",
    "initial_noise",
    "linear_schedule",
    "network_evaluations",
    "noise_like",
    "predict",
    "sample_ancestral",
    "sample_ddim",
    "sample_dpmpp_2m",
    "sample_dpmpp_3m",
    "sample_euler",
    "sample_heun",
    "sample_pc",
    "sr3_linear_schedule",
    "training_loss",
    "ve_geometric_schedule",
]
