"""Building and loading the CTP network, its denoiser and its training loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from meddiffcore.config import from_dict
from meddiffcore.diffusion import VPDenoiser, clip_x0, training_loss
from meddiffcore.errors import BadInputError, ModelError
from meddiffcore.models import ModelCard, load_model
from meddiffcore.nets import UNet, UNetConfig

from .config import NAME, PHASES, CTPDiffusionConfig


def check_network(config: UNetConfig) -> None:
    """The CTP layout: 1 noisy channel, 2 known frames concatenated, 2 + 3 context values, 3D."""
    want = {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "cond_channels": 2,
            "embedding_channels": 2 + len(PHASES)}
    bad = {k: getattr(config, k) for k, v in want.items() if getattr(config, k) != v}
    if bad:
        raise ModelError(f"not a CTP inpainting network: {bad} (expected {want})",
                         "use a network config with these values (see meddiffcore/configs/ctp-demo.toml)")


def denoiser_for(net: torch.nn.Module, diffusion: CTPDiffusionConfig):
    """The network as a denoiser of its diffusion variable (the scaled residual, or the frame for the
    authors' model, whose x0 estimates are clamped to [-1, 1]), with SR3 continuous noise-level input."""
    denoiser = VPDenoiser(net, diffusion.noise_schedule(), prediction=diffusion.prediction, time_input="noise_level")
    return clip_x0(denoiser, -1.0, 1.0) if diffusion.clip_x0 else denoiser


def build_network(network: dict) -> torch.nn.Module:
    """The network a card describes: MedDiff's UNet, or the CTP authors' UNet for an imported release."""
    from meddiffcore.checkpoints.ctp import ARCHITECTURE
    from meddiffcore.nets.ctp_unet import CTPUNet, CTPUNetConfig

    if network.get("architecture") == ARCHITECTURE:
        return CTPUNet(CTPUNetConfig.from_dict(network))
    config = UNetConfig.from_dict(network)
    check_network(config)
    return UNet(config)


def linear_between(known: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, 1, ...) linear interpolation of the (B, 2, ...) known frames at fraction ``weight`` (B,) of the gap."""
    w = weight.reshape(-1, *([1] * (known.ndim - 1))).to(known.dtype)
    return (1 - w) * known[:, :1] + w * known[:, 1:2]


def in_plane_padding(net: torch.nn.Module, slab: int, n_y: int, n_x: int) -> tuple[int, int]:
    """Rows and columns to add (edge padding) so the network takes a ``slab`` x n_y x n_x input.

    MedDiff's UNet needs multiples of its size multiple; the CTP authors' UNet also
    needs its down and up paths to meet (for the release: 192-352 rows, trained on
    192), so small frames are padded up to the first size it takes and larger ones
    are refused with the sizes it does take."""
    if isinstance(net.config, UNetConfig):
        mult = net.config.size_multiple
        return (-n_y) % mult[1], (-n_x) % mult[2]
    step = 2 ** (len(net.config.channel_mult) - 1)
    width = n_x + (-n_x) % step
    first = height = n_y + (-n_y) % step
    while height < first + 8 * net.config.design_size:
        try:
            net.check_input((slab, height, width))
            return height - n_y, width - n_x
        except BadInputError:
            height += step
    net.check_input((slab, first, width))  # no padding helps: name the problem
    return first - n_y, width - n_x


#: Share of an in-plane window its neighbour overlaps (at least), where the authors' network runs on windows.
WINDOW_OVERLAP = 0.25


@dataclass(frozen=True)
class InPlaneWindows:
    """Overlapping in-plane windows the network runs on, blended at every evaluation
    (:class:`meddiffcore.diffusion.patches.PatchedDenoiser`).

    ``size`` (rows, columns) is a size the network takes, ``overlap`` the least
    number of rows and columns neighbours share, ``count`` the windows covering
    the frame and ``per_call`` the windows of one item evaluated together (as many
    as hold no more voxels than the whole frame, so a batch chosen for whole frames
    still fits)."""

    size: tuple[int, int]
    overlap: tuple[int, int]
    count: int
    per_call: int


def in_plane_layout(net: torch.nn.Module, slab: int, n_y: int, n_x: int) -> tuple[int, int, InPlaneWindows | None]:
    """(rows to pad, columns to pad, windows or None) for running the network on ``slab`` x n_y x n_x frames.

    MedDiff's UNet and the CTP authors' UNet on frames no larger than its trained
    (design) size run on the whole padded frame (:func:`in_plane_padding`). On a
    larger frame the authors' network runs on windows of its trained size (192 x
    192 for the release, padded to a size it takes where the frame is smaller along
    one axis) that overlap by at least :data:`WINDOW_OVERLAP`; the frame is padded
    only where it is smaller than a window."""
    from meddiffcore.diffusion.patches import patch_grid

    design = getattr(net.config, "design_size", None)
    if isinstance(net.config, UNetConfig) or design is None or max(n_y, n_x) <= design:
        return (*in_plane_padding(net, slab, n_y, n_x), None)
    want = (min(n_y, design), min(n_x, design))
    pad = in_plane_padding(net, slab, *want)
    size = (want[0] + pad[0], want[1] + pad[1])
    frame = (max(n_y, size[0]), max(n_x, size[1]))
    overlap = tuple(int(round(WINDOW_OVERLAP * w)) if n > w else 0 for n, w in zip(frame, size))
    count = len(patch_grid((slab, *frame), (slab, *size), (0, *overlap)))
    per_call = max(1, (frame[0] * frame[1]) // (size[0] * size[1]))
    return frame[0] - n_y, frame[1] - n_x, InPlaneWindows(size, overlap, count, min(per_call, count))


def residual_loss(net: torch.nn.Module, batch: dict[str, torch.Tensor], diffusion: CTPDiffusionConfig,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The configured diffusion loss on the scaled residual of the target frame from the linear interpolation.

    A ``mean_fraction`` of the items is noised to the top of the schedule (see :class:`CTPDiffusionConfig`).
    """
    residual = diffusion.residual_scale * (batch["target"] - linear_between(batch["known"], batch["weight"]))
    schedule = diffusion.noise_schedule()
    b = residual.shape[0]
    sigma = schedule.sample_training_sigmas(b, generator)
    top = torch.rand(b, generator=generator, device=sigma.device) < diffusion.mean_fraction
    sigma = torch.where(top, schedule.sampling_sigmas(1)[0].to(sigma), sigma)
    return training_loss(diffusion.loss, net, residual, schedule, {"concat": batch["known"], "embedding": batch["context"]},
                         generator=generator, sigma=sigma.to(residual.device))


@dataclass
class LoadedModel:
    card: ModelCard
    net: torch.nn.Module
    diffusion: CTPDiffusionConfig
    window_level_hu: float
    window_width_hu: float
    slab_slices: int
    max_gap_s: float


def load_for_inference(ref: str, device: torch.device) -> LoadedModel:
    """A verified CTP model from its card (network, schedule, window, slab size, gap limit)."""
    card, tensors = load_model(ref, task=NAME)
    net = build_network(card.network)
    try:
        net.load_state_dict(tensors)
    except RuntimeError as exc:
        raise ModelError(f"weights of model '{card.name}' do not fit its network config: {exc}",
                         "re-export the model from training") from exc
    tc = card.task_config
    try:
        return LoadedModel(card, net.to(device).eval(), from_dict(CTPDiffusionConfig, card.diffusion, where="diffusion"),
                           float(tc["window_level_hu"]), float(tc["window_width_hu"]), int(tc["slab_slices"]),
                           float(tc["max_gap_s"]))
    except KeyError as exc:
        raise ModelError(f"model card of '{card.name}' lacks {exc}", "re-export the model with this version of MedDiff") from exc
