"""The trainable CTCA task: network, dataset, hybrid loss with condition dropout, preview, card."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from ...models import ModelCard
from ...nets import UNet
from .config import CTCAConfig
from .data import CTCADataset
from .model import build_network, drop_condition, model_card, schedule_of


@lru_cache(maxsize=4)
def _tables(schedule_key: tuple) -> dict[str, torch.Tensor]:
    """Posterior tables of a discrete VP schedule (float64), for the variational bound."""
    from ...diffusion import NoiseSchedule

    schedule = NoiseSchedule(kind=schedule_key[0], num_timesteps=schedule_key[1])
    ab = schedule.alphas_cumprod
    ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
    beta = 1 - ab / ab_prev
    post_var = beta * (1 - ab_prev) / (1 - ab)
    return {
        "ab": ab, "beta": beta,
        "log_post": torch.log(torch.cat([post_var[1:2], post_var[1:]])),
        "coef_x0": beta * ab_prev.sqrt() / (1 - ab),
        "coef_xt": (1 - ab_prev) * (1 - beta).sqrt() / (1 - ab),
    }


def hybrid_loss(net, x0: torch.Tensor, segmap: torch.Tensor, *, schedule_kind: str, num_timesteps: int,
                vb_weight: float = 1.0, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Improved-DDPM hybrid loss: eps MSE + ``vb_weight`` * variational bound (learned-range variance).

    The network outputs (eps, v) with ``var_interp = (v + 1) / 2`` and
    ``log var = f log beta_t + (1 - f) log beta_tilde_t`` (what
    :class:`~meddiffcore.diffusion.VPDenoiser` and the ancestral sampler use).
    The bound's mean uses the stopped eps, so it only trains the variance; it is
    scaled by ``T / 1000`` as in Nichol & Dhariwal (2021). At ``t = 0`` a Gaussian
    negative log-likelihood of ``x0`` replaces the discretised decoder.
    """
    tab = {k: v.to(x0.device, torch.float32) for k, v in _tables((schedule_kind, num_timesteps)).items()}
    b = x0.shape[0]
    t = torch.randint(0, num_timesteps, (b,), device=x0.device, generator=generator)
    shape = (b,) + (1,) * (x0.ndim - 1)
    ab = tab["ab"][t].view(shape)
    eps = torch.randn(x0.shape, device=x0.device, generator=generator)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    out = net(x_t, t.float(), segmap=segmap)
    eps_hat, v = out.float().chunk(2, dim=1)
    mse = ((eps - eps_hat) ** 2).mean()
    x0_hat = (x_t - (1 - ab).sqrt() * eps_hat.detach()) / ab.sqrt()
    c0, ct = tab["coef_x0"][t].view(shape), tab["coef_xt"][t].view(shape)
    mu_q, mu_p = c0 * x0 + ct * x_t, c0 * x0_hat + ct * x_t
    frac = (v + 1) / 2
    log_post = tab["log_post"][t].view(shape)
    log_var = frac * tab["beta"][t].log().view(shape) + (1 - frac) * log_post
    kl = 0.5 * (-1.0 + log_var - log_post + torch.exp(log_post - log_var) + (mu_q - mu_p) ** 2 * torch.exp(-log_var))
    nll = 0.5 * (math.log(2 * math.pi) + log_var + (x0 - mu_p) ** 2 * torch.exp(-log_var))
    per = torch.where((t == 0).view(shape), nll, kl).flatten(1).mean(1) / math.log(2.0)
    vb = (per * num_timesteps / 1000.0).mean()
    return mse + vb_weight * vb, {"mse": float(mse.detach()), "vb": float(vb.detach())}


class CTCATask:
    name = "ctca"
    config_class = CTCAConfig

    def build_network(self, config: CTCAConfig) -> UNet:
        return build_network(config)

    def build_dataset(self, config: CTCAConfig) -> CTCADataset:
        return CTCADataset(config)

    def training_loss(self, net, batch, config: CTCAConfig, generator):
        segmap = batch["segmap"]
        p = config.diffusion.cond_drop_prob
        if p > 0:
            drop = torch.rand(segmap.shape[0], device=segmap.device, generator=generator) < p
            if drop.any():
                segmap = torch.where(drop.view(-1, *([1] * (segmap.ndim - 1))), drop_condition(segmap, config.stage), segmap)
        return hybrid_loss(net, batch["x"], segmap, schedule_kind=config.diffusion.schedule,
                           num_timesteps=config.diffusion.num_timesteps, vb_weight=config.diffusion.vb_weight,
                           generator=generator)

    def preview(self, net, config: CTCAConfig, device) -> np.ndarray:
        """Mid-slices of the training item 0 (top) and a 10-step sample from its labels (bottom)."""
        from ...diffusion import ClassifierFreeGuidance, VPDenoiser, clip_x0, get_sampler, initial_noise
        from ...preview import CT_ANGIO, preview_array
        from .config import model_to_hu

        dataset = CTCADataset(config)
        item = dataset[0]
        segmap = item["segmap"][None].to(device)
        den = clip_x0(ClassifierFreeGuidance(VPDenoiser(net, schedule_of(config), "eps", learned_variance=True), 1.0, {}))
        sigmas = schedule_of(config).sampling_sigmas(10)
        x = initial_noise(item["x"][None].shape, sigmas, torch.Generator().manual_seed(0)).to(device)
        sample = get_sampler("dpmpp_2m")(den, x, sigmas.to(device), cond={"segmap": segmap})
        rows = [preview_array(model_to_hu(v[0, 0].cpu().numpy()), CT_ANGIO) for v in (item["x"][None], sample)]
        width = max(r.shape[1] for r in rows)
        return np.concatenate([np.pad(r, ((0, 2), (0, width - r.shape[1]))) for r in rows])

    def model_card(self, config: CTCAConfig) -> ModelCard:
        return model_card(config)


TASK = CTCATask()
