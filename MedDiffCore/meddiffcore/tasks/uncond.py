"""The smallest complete task: unconditional image diffusion, 2D or 3D.

It trains a UNet on procedural shapes (or a folder of volumes mapped through a
fixed intensity window) and generates new images. It exists so the engine's
whole path (config -> training -> EMA export -> model card -> job -> worker ->
volume file) is exercised and tested without any domain task, and it is the
template a new task starts from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..config import from_dict, to_dict
from ..diffusion import NoiseSchedule, VPDenoiser, get_sampler, initial_noise, training_loss
from ..errors import ConfigError
from ..io.atomic import numbered_paths
from ..models import ModelCard, load_model
from ..nets import UNet, UNetConfig
from ..train import TrainConfig

NAME = "uncond"


@dataclass
class DiffusionConfig:
    """How the network is trained and sampled."""

    schedule: Literal["linear", "cosine"] = "cosine"
    num_timesteps: int = 1000
    prediction: Literal["eps", "v", "x0"] = "eps"
    loss: str = "eps_mse"
    sampler: str = "dpmpp_2m"
    sampling_steps: int = 20

    def noise_schedule(self) -> NoiseSchedule:
        return NoiseSchedule(kind=self.schedule, num_timesteps=self.num_timesteps)


@dataclass
class DataConfig:
    """Training images: procedural shapes, or a folder of volumes cropped to ``size``."""

    source: Literal["shapes", "folder"] = "shapes"
    folder: str = ""
    size: tuple[int, ...] = (32, 32)
    """Spatial size (H, W) or (D, H, W)."""
    num_items: int = 256
    intensity_window: tuple[float, float] = (0.0, 1.0)
    """Fixed input range mapped to [-1, 1] (never per-image min/max)."""


@dataclass
class UncondConfig:
    name: str = "uncond-model"
    network: UNetConfig = field(default_factory=lambda: UNetConfig(spatial_dims=2, base_channels=32, channel_mult=(1, 2)))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def to_unit_range(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    return (np.asarray(values, dtype=np.float32) - low) / (high - low) * 2.0 - 1.0


def from_unit_range(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    return (np.asarray(values, dtype=np.float32) + 1.0) / 2.0 * (high - low) + low


class ShapesDataset(torch.utils.data.Dataset):
    """Bright ellipses (2D) or ellipsoids (3D) on a dark background; item ``i`` is always the same image."""

    def __init__(self, size: tuple[int, ...], num_items: int, seed: int = 0) -> None:
        self.size, self.num_items, self.seed = tuple(size), num_items, seed

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(self.seed * 1_000_003 + index)
        grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in self.size], indexing="ij")
        image = np.full(self.size, -1.0, dtype=np.float32)
        for _ in range(rng.integers(1, 3)):
            centre = rng.uniform(-0.4, 0.4, len(self.size))
            radii = rng.uniform(0.2, 0.5, len(self.size))
            inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0
            image[inside] = rng.uniform(0.3, 1.0)
        return {"image": torch.from_numpy(image)[None]}


class FolderDataset(torch.utils.data.Dataset):
    """Centre crops (zero-padded) of the volumes in a folder, through a fixed intensity window."""

    def __init__(self, folder: str, size: tuple[int, ...], window: tuple[float, float]) -> None:
        from ..io import read_volume, volume_files

        paths = volume_files(folder)
        self.arrays = [self._crop(to_unit_range(read_volume(p).array, window), size) for p in paths]

    @staticmethod
    def _crop(array: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
        if len(size) == 2:
            array = array[array.shape[0] // 2]
        out = np.full(size, -1.0, dtype=np.float32)
        src, dst = [], []
        for n, m in zip(array.shape, size):
            take = min(n, m)
            src.append(slice((n - take) // 2, (n - take) // 2 + take))
            dst.append(slice((m - take) // 2, (m - take) // 2 + take))
        out[tuple(dst)] = array[tuple(src)]
        return out

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": torch.from_numpy(self.arrays[index])[None]}


def denoiser_for(net: torch.nn.Module, diffusion: DiffusionConfig) -> VPDenoiser:
    return VPDenoiser(net, diffusion.noise_schedule(), prediction=diffusion.prediction)


@torch.no_grad()
def generate(net: torch.nn.Module, diffusion: DiffusionConfig, shape: tuple[int, ...], *, steps: int | None = None,
             sampler: str | None = None, generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
    """Sample a batch of images (B, C, *spatial) in [-1, 1]-ish units."""
    device = next(net.parameters()).device
    schedule = diffusion.noise_schedule()
    sigmas = schedule.sampling_sigmas(steps or diffusion.sampling_steps).to(device)
    x = initial_noise(shape, sigmas, generator, device=device)
    return get_sampler(sampler or diffusion.sampler)(denoiser_for(net, diffusion), x, sigmas, callback=callback,
                                                     generator=generator)


class UncondTask:
    """The :class:`~meddiffcore.tasks.base.TrainableTask` of unconditional generation."""

    name = NAME
    config_class = UncondConfig

    def build_network(self, config: UncondConfig) -> torch.nn.Module:
        if config.network.spatial_dims != len(config.data.size):
            raise ConfigError(f"network.spatial_dims is {config.network.spatial_dims} but data.size has {len(config.data.size)} axes",
                              "make them agree (2 for images, 3 for volumes)")
        return UNet(config.network)

    def network_from_card(self, card: ModelCard) -> torch.nn.Module:
        """The network whose tensors a model of this task holds, from its card (for the model checks)."""
        return UNet(UNetConfig.from_dict(card.network))

    def build_dataset(self, config: UncondConfig) -> torch.utils.data.Dataset:
        if config.data.source == "folder":
            return FolderDataset(config.data.folder, config.data.size, config.data.intensity_window)
        return ShapesDataset(config.data.size, config.data.num_items, seed=config.train.seed)

    def training_loss(self, net, batch, config: UncondConfig, generator):
        loss, terms = training_loss(config.diffusion.loss, net, batch["image"], config.diffusion.noise_schedule(), {},
                                    generator=generator)
        return loss, terms

    def preview(self, net, config: UncondConfig, device) -> np.ndarray:
        from ..preview import Window, montage, preview_array

        gen = torch.Generator(device=device).manual_seed(0)
        images = generate(net, config.diffusion, (4, config.network.in_channels, *config.data.size), generator=gen)
        images = images[:, 0].float().cpu().numpy()
        window = Window(level=0.0, width=2.0)
        if images.ndim == 3:
            tiles = [window.to_uint8(np.kron(im, np.ones((4, 4)))) for im in images]
            return montage(tiles)
        return np.concatenate([preview_array(im, window, min_height=0) for im in images], axis=0)

    def model_card(self, config: UncondConfig) -> ModelCard:
        return ModelCard(
            name=config.name,
            task=NAME,
            description=f"unconditional {len(config.data.size)}D diffusion on {config.data.source}",
            network=to_dict(config.network),
            diffusion=to_dict(config.diffusion),
            task_config={"size": list(config.data.size), "intensity_window": list(config.data.intensity_window)},
        )


TASK = UncondTask()


def load_for_inference(ref: str, device: torch.device) -> tuple[ModelCard, torch.nn.Module, DiffusionConfig]:
    card, tensors = load_model(ref, task=NAME)
    net = UNet(UNetConfig.from_dict(card.network))
    net.load_state_dict(tensors)
    return card, net.to(device).eval(), from_dict(DiffusionConfig, card.diffusion, where="diffusion")


def run_generate(job, reporter) -> dict[str, str]:
    """Job ``uncond.generate``: ``params`` samples, steps, sampler, spacing; outputs ``volume`` [, ``preview``]."""
    from ..devices import resolve_device
    from ..io import Volume, write_volume
    from ..preview import write_preview

    job.require_model()
    job.require_output("volume")
    samples = job.sample_count()
    device = resolve_device(job.device)
    card, net, diffusion = load_for_inference(job.model, device)
    size = tuple(card.task_config["size"])
    window = tuple(card.task_config["intensity_window"])
    spacing = tuple(job.params.get("spacing") or (1.0, 1.0, 1.0))
    steps = int(job.params.get("steps") or diffusion.sampling_steps)
    sampler = job.params.get("sampler") or diffusion.sampler
    generator = torch.Generator(device=device).manual_seed(job.seed) if job.seed is not None else None
    reporter.log(f"generating {samples} sample(s) of {'x'.join(map(str, size))} with {sampler}, {steps} steps on {device}")
    images = generate(net, diffusion, (samples, net.config.in_channels, *size), steps=steps, sampler=sampler,
                      generator=generator, callback=reporter.step_callback("sampling"))
    arrays = from_unit_range(images[:, 0].float().cpu().numpy(), window)
    volumes = [Volume.from_spacing(a if a.ndim == 3 else a[None], spacing_mm=spacing) for a in arrays]
    paths = numbered_paths(Path(job.outputs["volume"]), samples)
    for volume, path in zip(volumes, paths):
        write_volume(volume, path)
    outputs = {"volume": str(paths[0])} if samples == 1 else {f"volume_{i + 1}": str(p) for i, p in enumerate(paths)}
    if job.outputs.get("preview"):
        if all(v.shape[0] > 1 for v in volumes):
            write_preview(job.outputs["preview"], volumes)
            outputs["preview"] = job.outputs["preview"]
    return outputs


