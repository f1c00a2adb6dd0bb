"""The published-model fixtures (Testing/data/published) and the deterministic-weight rule they were made with."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1] / "data" / "published"
WDM, TPDM, CTP, MRNET = DATA / "wdm", DATA / "tpdm", DATA / "ctp", DATA / "mrnet"

#: --set options that describe the tiny fixture checkpoints (all else is the released configuration).
WDM_TINY = {"base_channels": 8, "channel_mult": [1, 2, 2], "norm_groups": 4}
TPDM_TINY = {"base_channels": 8, "num_res_blocks": 1}
#: The tiny CTP container (the authors' create_model with model_channels 32, num_res_blocks 1, channel_mult (1,),
#: input_size 64).
CTP_TINY = {"base_channels": 32, "channel_mult": [1], "num_res_blocks": 1, "design_size": 64, "attention_sizes": [8]}


def as_set_options(fields: dict) -> list[str]:
    return [item for key, value in fields.items() for item in ("--set", f"{key}={json.dumps(value)}")]


def det_tensor(name: str, shape, seed: int = 0) -> torch.Tensor:
    """The fixtures' deterministic weight of parameter ``name`` (see data/published/README.md)."""
    gen = torch.Generator().manual_seed((zlib.crc32(name.encode("utf-8")) + seed) % (2**63))
    v = torch.randn(tuple(shape), generator=gen, dtype=torch.float64)
    if len(shape) >= 2:
        v = v / math.sqrt(float(np.prod(shape[1:])))
    elif name.endswith("weight"):
        v = 1.0 + 0.1 * v
    else:
        v = 0.1 * v
    return v.float()


def manifest(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def det_parameters(manifest_path: Path) -> dict[str, torch.Tensor]:
    """Every parameter of a manifest, filled with the fixtures' deterministic weights (seed 0)."""
    return {e["key"]: det_tensor(e["key"], e["shape"]) for e in manifest(manifest_path)["state_dict"]
            if e["kind"] == "param"}


def assert_parity(out: torch.Tensor, ref, what: str) -> float:
    """The issue's criterion: allclose(rtol=1e-4, atol=1e-5 max|ref|) in float32; returns the max abs error."""
    ref = torch.as_tensor(np.asarray(ref))
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} vs {tuple(ref.shape)}"
    atol = 1e-5 * float(ref.abs().max())
    err = float((out.float() - ref.float()).abs().max())
    assert torch.allclose(out.float(), ref.float(), rtol=1e-4, atol=atol), f"{what}: max abs error {err:.3g} (atol {atol:.3g})"
    return err


def save_tiny_cwdm_checkpoint(path: Path) -> dict:
    """A small cWDM generator saved in the authors' layout (guided-diffusion key names, plain state dict);
    returns the network fields to import it with."""
    from meddiffcore.checkpoints.wdm import reference_key, released_network
    from meddiffcore.nets import UNet, UNetConfig

    fields = {**WDM_TINY, "channel_mult": [1, 2]}
    net = UNet(UNetConfig.from_dict({**released_network(True).to_dict(), **fields}))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    torch.save({reference_key(k): v for k, v in net.state_dict().items()}, path)
    return fields


#: --set options of the small MRNet stages the import tests write (the released widths are 64..512).
MRNET_SMALL = {"widths": [8, 16, 32, 64]}


def mrnet_det_weights(net) -> None:
    """Fill an MRNetUNet with the fixtures' rule: det_tensor on the authors' bare UNet names (seed 0) for the
    parameters, BatchNorm running_mean = det_tensor and running_var = |det_tensor| + 0.5."""
    from meddiffcore.nets.mrnet import reference_key

    params = {k for k, _ in net.named_parameters()}
    state = {}
    for key, value in net.state_dict().items():
        ref = reference_key(key)
        if key in params or key.endswith("running_mean"):
            state[key] = det_tensor(ref, value.shape)
        elif key.endswith("running_var"):
            state[key] = det_tensor(ref, value.shape).abs() + 0.5
        else:
            state[key] = value
    net.load_state_dict(state)


def save_mrnet_checkpoint(path: Path, net, steps: int, epoch: int = 7) -> None:
    """``net`` saved as the authors' pipeline saves a stage: ``{'epoch', 'model_state_dict'}`` of the DDPM
    wrapper (UNet under ``model.`` with the Swin's integer position index, the five schedule tables)."""
    from meddiffcore.nets.mrnet import reference_key

    betas = torch.linspace(0.00085, 0.012, steps)
    ab = torch.cumprod(1 - betas, dim=0)
    state = {"betas": betas, "alphas": 1 - betas, "alphas_cumprod": ab, "sqrt_alphas_cumprod": ab.sqrt(),
             "sqrt_one_minus_alphas_cumprod": (1 - ab).sqrt()}
    state.update({"model." + reference_key(k): v for k, v in net.state_dict().items()})
    if net.config.swin:
        state["model.swin_block.attn.relative_position_index"] = net.swin_block.attn.bias_index.clone()
    torch.save({"epoch": epoch, "model_state_dict": state}, path)


def save_small_mrnet_release(folder: Path, swin: bool = True, steps=(2000, 1000, 2000)) -> list[Path]:
    """Small stand-ins (widths MRNET_SMALL) for the three released MRNet stage files, under their released names,
    in the authors' container layout; T per file as given (the released SR 128->256 notebook trains with 2000)."""
    from meddiffcore.checkpoints.mrnet import RELEASES, stage_network
    from meddiffcore.nets.mrnet import MRNetUNet, MRNetUNetConfig

    release = RELEASES["swin" if swin else "noswin"]
    torch.manual_seed(0)
    paths = []
    for (stage, size), file_name, n in zip(release.stages, release.files, steps):
        config = MRNetUNetConfig.from_dict({**stage_network(stage, size, swin).to_dict(), **MRNET_SMALL})
        path = Path(folder) / file_name
        save_mrnet_checkpoint(path, MRNetUNet(config), n)
        paths.append(path)
    return paths
