"""The CTCA network (SDM-style UNet), its conditioning, and loading a model from its card.

Conditioning is one SPADE map (B, C, D, H, W) on the network's grid:

* channels 0-8: the one-hot label map (``labels.LABELS``);
* patch stage only: channel 9 the low-resolution synthetic CT (in [-1, 1]) resampled
  onto the same grid (so every patch's reference is voxel-aligned by
  construction), then 3 position channels (z, y, x of the voxel in the whole
  high-resolution grid, in [-1, 1]).

The unconditional branch of classifier-free guidance zeroes the labels and the
reference (the first ``droppable_channels``) and keeps the positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...config import to_dict
from ...diffusion import ClassifierFreeGuidance, NoiseSchedule, VPDenoiser, clip_x0
from ...diffusion.denoisers import DenoiserOutput, eps_from_x0, predict
from ...diffusion.schedules import karras_sigmas
from ...errors import ModelError
from ...models import ModelCard, load_model
from ...nets import UNet, UNetConfig
from .config import HU_WINDOW, CTCAConfig
from .labels import NUM_CLASSES, label_names, label_table, one_hot

TASK = "ctca"


def cond_channels(stage: str) -> int:
    return NUM_CLASSES + (4 if stage == "patch" else 0)


def droppable_channels(stage: str) -> int:
    """Channels zeroed for the unconditional branch (labels, and the reference for the patch stage)."""
    return NUM_CLASSES + (1 if stage == "patch" else 0)


def position_channels(shape: tuple[int, int, int], region: tuple[slice, ...] | None = None) -> torch.Tensor:
    """(3, D, H, W) voxel coordinates (z, y, x) in [-1, 1] across the whole grid ``shape``; with ``region`` (one
    slice per axis) only that part of it, as ``position_channels(shape)[:, region]`` without building the whole."""
    axes = [torch.linspace(-1.0, 1.0, n) if n > 1 else torch.zeros(1) for n in shape]
    if region is not None:
        axes = [a[r] for a, r in zip(axes, region)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def condition(labels_zyx: np.ndarray, stage: str, reference: np.ndarray | None = None,
              region: tuple[slice, ...] | None = None) -> torch.Tensor:
    """(C, D, H, W) SPADE map of one volume: one-hot labels (+ reference + positions for the patch stage).

    ``region`` (one slice per axis): the map of that part of the volume only, equal to ``condition(...)[:, region]``
    (positions stay those of the whole grid) at the cost of the region (training crops of large volumes)."""
    if stage == "patch" and (reference is None or reference.shape != labels_zyx.shape):
        raise ValueError("the patch stage needs a reference on the label grid")
    part = (slice(None),) * 3 if region is None else tuple(region)
    parts = [one_hot(labels_zyx[part])]
    if stage == "patch":
        parts += [torch.as_tensor(np.asarray(reference[part], dtype=np.float32))[None],
                  position_channels(labels_zyx.shape, region)]
    return torch.cat(parts)


class PatchCondition:
    """The patch stage's SPADE map of a whole fine grid, built patch by patch: ``self[:, :, z, y, x]`` (slices)
    equals ``condition(labels, "patch", reference)[None][:, :, z, y, x]`` without the whole map ever existing.
    The whole map is 13 float32 channels (52 bytes) per voxel, 416 MB for a 200 mm field of view at 1 mm; this
    keeps the uint8 labels and the float32 reference (5 bytes per voxel). :class:`.patches.PatchedDenoiser`
    cuts it like a tensor of the sample's number of dims."""

    ndim = 5

    def __init__(self, labels_zyx: np.ndarray, reference: np.ndarray, device: torch.device | str = "cpu") -> None:
        if reference.shape != labels_zyx.shape:
            raise ValueError("the patch stage needs a reference on the label grid")
        self.labels, self.reference = labels_zyx, np.asarray(reference, dtype=np.float32)
        self.device = torch.device(device)
        self.shape = (1, cond_channels("patch")) + tuple(labels_zyx.shape)

    def __getitem__(self, index) -> torch.Tensor:
        index = index if isinstance(index, tuple) else (index,)
        batch, channels, region = index[:1], index[1:2], index[2:]
        if batch != (slice(None),) or channels != (slice(None),) or len(region) != 3 \
                or not all(isinstance(r, slice) for r in region):
            raise IndexError("a PatchCondition is cut as [:, :, z, y, x] with slices")
        return condition(self.labels, "patch", self.reference, tuple(region))[None].to(self.device)


def drop_condition(segmap: torch.Tensor, stage: str) -> torch.Tensor:
    """The unconditional SPADE map: labels (and reference) zeroed, positions kept."""
    out = segmap.clone()
    out[:, : droppable_channels(stage)] = 0
    return out


def build_network(config: CTCAConfig) -> UNet:
    net_cfg = config.network
    want = cond_channels(config.stage)
    if net_cfg.spade_channels != want or net_cfg.out_channels != 2 or net_cfg.in_channels != 1:
        from ...errors import ConfigError

        raise ConfigError(
            f"network of a '{config.stage}' CTCA model needs in_channels 1, out_channels 2 (learned variance) and "
            f"spade_channels {want}, got {net_cfg.in_channels}, {net_cfg.out_channels}, {net_cfg.spade_channels}",
            "fix the [network] section")
    return UNet(net_cfg)


def schedule_of(config: CTCAConfig) -> NoiseSchedule:
    return NoiseSchedule(kind=config.diffusion.schedule, num_timesteps=config.diffusion.num_timesteps)


def model_card(config: CTCAConfig) -> ModelCard:
    d = config.diffusion
    return ModelCard(
        name=config.name,
        task=TASK,
        description=("CTCA synthesis: coronary + heart label map -> contrast-enhanced cardiac CT "
                     f"({config.stage} stage, {'x'.join(map(str, config.data.shape))} at {config.data.spacing_mm} mm)"),
        network=config.network.to_dict(),
        diffusion={"schedule": schedule_of(config).to_dict(), "prediction": "eps", "learned_variance": True,
                   "loss": "hybrid", "vb_weight": d.vb_weight, "cond_drop_prob": d.cond_drop_prob,
                   "sampler": d.sampler, "steps": d.steps, "guidance": d.guidance, "target": d.target,
                   **({"residual_scale": d.residual_scale} if d.target == "residual" else {}),
                   **({"start_sigma": d.start_sigma} if d.start_sigma is not None else {})},
        task_config={"stage": config.stage, "labels": label_table(), "label_names": label_names(), "hu_window": list(HU_WINDOW),
                     "spacing_mm": config.data.spacing_mm, "shape": list(config.data.shape),
                     "crop": None if config.data.crop is None else list(config.data.crop),
                     "reference_spacing_mm": config.data.reference_spacing_mm if config.stage == "patch" else None,
                     "data": to_dict(config.data)},
    )


@dataclass
class CTCAModel:
    """A loaded model: the card, the EMA network in eval mode, and what sampling needs."""

    card: ModelCard
    net: UNet
    schedule: NoiseSchedule
    stage: str
    spacing_mm: float
    shape: tuple[int, int, int]
    hu_window: tuple[float, float]
    residual_scale: float | None = None
    """Patch stage trained on the residual from its reference (card ``diffusion.target = "residual"``): the
    network denoises ``residual_scale * (CT - reference)``; None: it denoises the CT itself."""
    start_sigma: float | None = None
    """Card ``diffusion.start_sigma``: the noise level sampling starts from (None: the top of the schedule)."""

    def sampling_sigmas(self, steps: int) -> torch.Tensor:
        """The (steps + 1,) descending sigmas this model samples with, ending with 0: the schedule's (Karras
        spacing), or Karras spacing from :attr:`start_sigma` down to the smallest training sigma."""
        if self.start_sigma is None:
            return self.schedule.sampling_sigmas(steps)
        lo = float(self.schedule.train_sigmas[0])
        hi = max(float(self.start_sigma), lo)
        sig = karras_sigmas(hi, lo, steps)
        return torch.cat([sig, sig.new_zeros(1)])

    @property
    def fov_mm(self) -> np.ndarray:
        return np.array(self.shape, dtype=np.float64) * self.spacing_mm

    def denoiser(self, guidance: float):
        """The guided denoiser ``D(x, sigma, segmap=...)``; ``guidance`` is applied as given (see ClassifierFreeGuidance).

        The estimate is clamped to the HU window ([-1, 1]) after guidance, as guided-diffusion's ``clip_denoised``:
        at the largest noise levels an eps model's x0 is its eps error times sigma, far outside the data.
        A residual model's estimate is clamped so that reference + residual stays in the window."""
        base = VPDenoiser(self.net, self.schedule, prediction="eps", learned_variance=True)
        stage = self.stage
        guided = ClassifierFreeGuidance(base, guidance, {"segmap": lambda s: drop_condition(s, stage)})
        return clip_x0(guided) if self.residual_scale is None else ClipResidual(guided, self.residual_scale)

    def to_image(self, x: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """The CT in model units from a sample of this model's diffusion variable (``reference``: the patch
        stage's reference on the same grid; unused for an image model)."""
        if self.residual_scale is None:
            return x
        return np.clip(reference + x / self.residual_scale, -1.0, 1.0)


class ClipResidual:
    """A residual denoiser's estimate clamped to ``[(-1 - ref) s, (1 - ref) s]``: reference + residual / s in
    [-1, 1], the residual counterpart of :func:`clip_x0` (``ref``: the reference channel of the segmap)."""

    def __init__(self, denoiser, scale: float) -> None:
        self.denoiser, self.scale = denoiser, float(scale)

    def predict(self, x: torch.Tensor, sigma: torch.Tensor, **cond: torch.Tensor) -> DenoiserOutput:
        out = predict(self.denoiser, x, sigma, **cond)
        ref = cond["segmap"][:, NUM_CLASSES: NUM_CLASSES + 1].to(x.dtype)
        x0 = torch.maximum(torch.minimum(out.x0, (1.0 - ref) * self.scale), (-1.0 - ref) * self.scale)
        return DenoiserOutput(x0=x0, eps=eps_from_x0(x, x0, sigma), var_interp=out.var_interp)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        return self.predict(x, sigma, **cond).x0


def load_ctca_model(ref: str, device: torch.device | str = "cpu") -> CTCAModel:
    """Verify and load a CTCA model by name or path (card + safetensors)."""
    card, tensors = load_model(ref, task=TASK, device="cpu")
    try:
        net_cfg = UNetConfig.from_dict(card.network)
        tc: dict[str, Any] = card.task_config
        stage = tc["stage"]
        if tc.get("labels") != label_table():
            raise ModelError(f"model '{card.name}' was trained with another label table", "use a CTCA model of this version")
        net = UNet(net_cfg)
        net.load_state_dict(tensors)
        schedule = NoiseSchedule.from_dict(card.diffusion["schedule"])
        target = card.diffusion.get("target", "image")
        if target not in ("image", "residual") or (target == "residual" and stage != "patch"):
            raise ModelError(f"model '{card.name}' has diffusion target {target!r} for a '{stage}' model",
                             "re-export the model (the residual target is for the patch stage only)")
        model = CTCAModel(card, net.to(device).eval().requires_grad_(False), schedule, stage, float(tc["spacing_mm"]),
                          tuple(int(n) for n in tc["shape"]), tuple(float(v) for v in tc["hu_window"]),
                          float(card.diffusion["residual_scale"]) if target == "residual" else None,
                          None if card.diffusion.get("start_sigma") is None else float(card.diffusion["start_sigma"]))
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"model '{card.name}' cannot be built from its card: {exc}", "re-export it with this MedDiff version") from exc
    if net_cfg.spade_channels != cond_channels(stage):
        raise ModelError(f"model '{card.name}' has {net_cfg.spade_channels} condition channels, a '{stage}' model needs "
                         f"{cond_channels(stage)}", "re-export the model")
    return model
