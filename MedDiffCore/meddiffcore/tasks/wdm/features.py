"""Feature extractors for the 3D Fréchet distance, and the distance itself.

The seed measured FID with MedicalNet's ResNet-50 (``resnet_50_23dataset.pth``,
2048-d globally pooled features). Those weights are not redistributable here:
the user supplies the file and its sha256, it is verified, then read with
``torch.load(weights_only=True)`` (never unpickled). Without them a weight-free
extractor (multi-scale intensity and gradient statistics) gives a distance that
is comparable between runs of this package, not with published figures.

An extractor is any callable ``(B, 1, D, H, W) tensor in [-1, 1] -> (B, F) tensor``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import Tensor, nn

from ...errors import BadInputError, ModelError

FeatureExtractor = Callable[[Tensor], Tensor]


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """``|mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2))`` of (N, F) feature sets (N >= 2 each)."""
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise BadInputError("the Fréchet distance needs at least 2 real and 2 generated volumes",
                            "generate more samples (--samples) and give more real volumes")
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = np.atleast_2d(np.cov(real, rowvar=False)), np.atleast_2d(np.cov(fake, rowvar=False))
    with warnings.catch_warnings():  # few samples give singular covariances: handled below, not an error
        warnings.simplefilter("ignore")
        root = linalg.sqrtm(cov_r @ cov_f)
    if not np.isfinite(root).all():
        eye = np.eye(cov_r.shape[0]) * 1e-6
        root = linalg.sqrtm((cov_r + eye) @ (cov_f + eye))
    root = np.real(root)
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(cov_r + cov_f - 2 * root))


def intensity_statistics(volumes: Tensor) -> Tensor:
    """Weight-free features: per scale (1, 1/2, 1/4) the mean, std and 8-bin histogram of intensity and
    of gradient magnitude; (B, 60)."""
    feats = []
    x = volumes.float()
    for _ in range(3):
        grads = torch.stack(torch.gradient(x[:, 0], dim=(1, 2, 3))).square().sum(0).sqrt()[:, None]
        for field in (x, grads):
            flat = field.flatten(1)
            edges = torch.linspace(-1.0, 1.0, 9) if field is x else torch.linspace(0.0, 1.0, 9)
            hist = torch.stack([((flat >= lo) & (flat < hi)).float().mean(1) for lo, hi in zip(edges[:-1], edges[1:])], 1)
            feats += [flat.mean(1, keepdim=True), flat.std(1, keepdim=True), hist]
        x = F.avg_pool3d(x, 2)
    return torch.cat(feats, dim=1)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, dilation: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(width * 4)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class MedicalNetResNet50(nn.Module):
    """MedicalNet's 3D ResNet-50 trunk (shortcut B, dilated layers 3 and 4), parameter names as its checkpoints.

    ``forward`` returns the 2048-d globally average-pooled features of layer 4.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(1, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        self._cin = 64
        self.layer1 = self._layer(64, 3, 1, 1)
        self.layer2 = self._layer(128, 4, 2, 1)
        self.layer3 = self._layer(256, 6, 1, 2)
        self.layer4 = self._layer(512, 3, 1, 4)

    def _layer(self, width: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
        down = None
        if stride != 1 or self._cin != width * 4:
            down = nn.Sequential(nn.Conv3d(self._cin, width * 4, 1, stride=stride, bias=False), nn.BatchNorm3d(width * 4))
        layers = [_Bottleneck(self._cin, width, stride, dilation, down)]
        self._cin = width * 4
        layers += [_Bottleneck(self._cin, width, 1, dilation, None) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3, 4))


def load_medicalnet(path: str | Path, sha256: str, device: torch.device | str = "cpu") -> FeatureExtractor:
    """The MedicalNet ResNet-50 extractor from a user-supplied checkpoint, verified by ``sha256``."""
    from ...models import sha256_file

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"feature extractor weights '{path}' not found",
                            "download resnet_50_23dataset.pth from Tencent/MedicalNet and pass its path")
    if not sha256:
        raise BadInputError("no sha256 given for the feature extractor weights",
                            "pass --features-sha256 HEX so a corrupted or wrong file is caught")
    actual = sha256_file(path)
    if actual.lower() != sha256.lower():
        raise ModelError(f"feature extractor weights '{path}' have sha256 {actual[:12]}..., expected {sha256[:12]}...",
                         "the file is corrupt or not the expected checkpoint; download it again")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read feature extractor weights '{path}': {exc}",
                         "give a plain PyTorch state-dict checkpoint (.pth)") from exc
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    state = {k.removeprefix("module."): v for k, v in state.items()}
    net = MedicalNetResNet50()
    missing, _ = net.load_state_dict(state, strict=False)
    if missing:
        raise ModelError(f"feature extractor weights lack {len(missing)} ResNet-50 tensors (e.g. {missing[0]})",
                         "use MedicalNet's resnet_50 checkpoint")
    net = net.to(device).eval()

    @torch.no_grad()
    def extract(volumes: Tensor) -> Tensor:
        # MedicalNet normalises each volume to zero mean, unit std (its own training convention).
        x = volumes.float().to(device)
        x = (x - x.mean(dim=(2, 3, 4), keepdim=True)) / x.std(dim=(2, 3, 4), keepdim=True).clamp_min(1e-6)
        return net(x).cpu()

    extract.__name__ = "medicalnet"
    return extract
