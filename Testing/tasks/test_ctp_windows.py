"""The CTP authors' model on frames larger than it was trained on: overlapping in-plane windows of its trained size,
blended into one whole-frame estimate at every network evaluation (jointly denoised, no seams), through the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from meddiffcore.cli import main

sys.path.insert(0, str(Path(__file__).parents[1] / "core"))
from published_helpers import CTP, CTP_TINY  # noqa: E402

FAST = ["--device", "cpu", "--progress", "json", "--seed", "1"]  # json: the log lines on stdout
#: A small network of the authors' architecture with their five-level depth below the 8-slice input, so it has
#: their size rule: 192 to 383 rows only (the slice-keeping up-sampling below 24 rows), trained (designed) on 192.
WIDE = {"base_channels": 4, "norm_groups": 4, "channel_mult": [1, 1, 1, 1, 1], "num_res_blocks": 1,
        "design_size": 192, "attention_sizes": [24]}


@pytest.fixture()
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("MEDDIFF_HOME", str(h))
    torch.set_num_threads(1)
    return h


def _tiny_authors_model() -> str:
    from meddiffcore.checkpoints import import_checkpoint

    import_checkpoint("ctp", [CTP / "ctp_tiny_model-tiny.pt"], network=CTP_TINY)
    return "ctp-bae2024"


def _wide_authors_model() -> str:
    """The WIDE network with random weights, written as an imported authors' model (its card and conventions)."""
    from meddiffcore.checkpoints.ctp import build_card
    from meddiffcore.models import save_model_together, user_model_dir
    from meddiffcore.nets.ctp_unet import CTPUNet, CTPUNetConfig, released_config

    config = CTPUNetConfig.from_dict({**released_config().to_dict(), **WIDE})
    torch.manual_seed(3)
    net = CTPUNet(config)
    card = build_card(config, (1500, 1e-6, 1e-2), "ctp-wide", {})
    save_model_together(user_model_dir(), card, {k: v.contiguous() for k, v in net.state_dict().items()})
    return "ctp-wide"


def _sparse(tmp_path: Path, rows: int, cols: int):
    """Every other frame of a head phantom cut to rows x cols in-plane, written as a sequence file."""
    from meddiffcore.io import Sequence, write_sequence
    from meddiffcore.tasks.ctp.phantom import make_ctp_phantom

    size = max(rows, cols)
    seq = make_ctp_phantom(5, slices=8, size=size, frames=5, noise_hu=1.0).sequence
    y0, x0 = (size - rows) // 2, (size - cols) // 2
    array = seq.array[::2, :, y0:y0 + rows, x0:x0 + cols].astype(np.float32)
    sparse = Sequence(np.ascontiguousarray(array), seq.ijk_to_ras, seq.times_s[::2])
    write_sequence(sparse, tmp_path / "sparse.seq.nrrd")
    return sparse


def test_windows_are_of_the_trained_size_overlap_a_quarter_and_only_where_the_frame_is_larger():
    from meddiffcore.nets import UNet, UNetConfig
    from meddiffcore.nets.ctp_unet import CTPUNet, CTPUNetConfig, released_config
    from meddiffcore.tasks.ctp.model import InPlaneWindows, in_plane_layout

    with torch.device("meta"):
        released = CTPUNet(released_config())
        tiny = CTPUNet(CTPUNetConfig.from_dict({**released_config().to_dict(), **CTP_TINY}))
    # a clinical 512^2 frame: 4 x 4 windows of 192^2 (starts 0, 107, 213, 320: at least 48 rows shared), no padding
    assert in_plane_layout(released, 8, 512, 512) == (0, 0, InPlaneWindows((192, 192), (48, 48), 16, 7))
    assert in_plane_layout(released, 8, 64, 64) == (128, 0, None)  # small frames: padded, run whole, as before
    # larger along one axis: windows along it; the other axis padded to what the network takes
    assert in_plane_layout(released, 8, 150, 500) == (42, 0, InPlaneWindows((192, 192), (0, 48), 4, 2))
    assert in_plane_layout(tiny, 8, 80, 96) == (0, 0, InPlaneWindows((64, 64), (16, 16), 4, 1))
    assert in_plane_layout(tiny, 8, 48, 48) == (0, 0, None)
    with torch.device("meta"):
        ours = UNet(UNetConfig(spatial_dims=3, in_channels=1, out_channels=1, cond_channels=2, embedding_channels=5,
                               base_channels=8, channel_mult=(1, 2), norm_groups=4))
    assert in_plane_layout(ours, 8, 512, 500)[2] is None  # MedDiff's own models take any size whole


def _row_jumps(frame: torch.Tensor, axis: int) -> np.ndarray:
    """Mean absolute difference between neighbouring planes along in-plane ``axis`` (1 rows, 2 columns) of (Z, Y, X)."""
    d = (frame.narrow(axis, 1, frame.shape[axis] - 1) - frame.narrow(axis, 0, frame.shape[axis] - 1)).abs()
    return d.mean(dim=tuple(a for a in range(3) if a != axis)).numpy()


def _plain_average(denoiser, x, sigma, cond, regions) -> torch.Tensor:
    """The windows each run on their own and averaged with equal weights: what a blend without ramps gives."""
    total, count = torch.zeros(x.shape[2:]), torch.zeros(x.shape[2:])
    for r in regions:
        part = denoiser(x[(slice(None), slice(None)) + r], sigma, concat=cond["concat"][(slice(None), slice(None)) + r],
                        embedding=cond["embedding"])
        total[r] += part[0, 0]
        count[r] += 1
    return total / count


def test_blended_windows_leave_no_seam_where_the_plain_average_of_the_same_windows_does(home):
    from meddiffcore.diffusion.patches import PatchedDenoiser, patch_grid
    from meddiffcore.tasks.ctp.model import denoiser_for, in_plane_layout, load_for_inference

    model = load_for_inference(_tiny_authors_model(), torch.device("cpu"))
    yy, xx = np.meshgrid(np.linspace(-0.4, 0.4, 80), np.linspace(-0.3, 0.4, 96), indexing="ij")
    # two slices (this network takes any number; its attention over the whole frame is what costs)
    frame = torch.from_numpy(np.broadcast_to(yy * xx + 0.3 * yy, (2, 80, 96)).astype(np.float32).copy())
    known = torch.stack([frame, frame + 0.1])[None]
    cond = {"concat": known, "embedding": torch.tensor([[0.1, 0.2, 0.0, 1.0, 0.0]])}
    x, sigma = frame[None, None] + 0.05, torch.tensor([0.3])
    denoiser = denoiser_for(model.net, model.diffusion)
    windows = in_plane_layout(model.net, 2, 80, 96)[2]
    assert windows is not None and windows.count == 4  # rows 0-63 and 16-79; columns 0-63 and 32-95
    with torch.inference_mode():
        whole = denoiser(x, sigma, **cond)[0, 0]  # this network also takes the whole frame: the reference
        blended = PatchedDenoiser(denoiser, (2, *windows.size), (0, *windows.overlap), windows.per_call)(x, sigma, **cond)[0, 0]
        plain = _plain_average(denoiser, x, sigma, cond, patch_grid((2, 80, 96), (2, *windows.size), (0, *windows.overlap)))
    # Random weights give each window a strong border artefact (zero padding, attention over the window), the
    # worst case for a seam; a trained network's is far weaker. The frame's own border is not a window edge.
    border = 12
    for axis in (1, 2):
        reference = _row_jumps(whole, axis)[border:-border].max()
        seam = _row_jumps(blended, axis)[border:-border].max()
        control = _row_jumps(plain, axis)[border:-border].max()
        assert control > 4.0 * reference  # the measure sees a seam: the same windows averaged without the ramps
        assert seam < 2.0 * reference, (axis, seam, control, reference)  # as whole frames are, nearly
    assert torch.isfinite(blended).all() and blended.abs().max() <= 1.0  # x0 clamped in every window: blend too


def test_authors_model_fills_frames_larger_than_it_was_trained_on_with_every_sampler(home, tmp_path, capsys):
    from meddiffcore.io import read_sequence
    from meddiffcore.tasks.ctp import authors
    from meddiffcore.tasks.ctp.inpaint import linear_fill
    from meddiffcore.tasks.ctp.plan import make_plan

    model = _tiny_authors_model()  # trained (designed) on 64^2: a 72 x 40 frame runs as 2 blended windows
    sparse = _sparse(tmp_path, 72, 40)
    mask = authors.tissue_mask(sparse.array, 40.0, 80.0)
    linear = linear_fill(sparse.array, make_plan(sparse.times_s))
    outs = {}
    for name, extra in (("mean", ["--estimate", "mean"]), ("fast", ["--estimate", "sample", "--steps", "2"]),
                        ("authors", ["--sampler", "authors", "--steps", "2"])):
        outs[name] = tmp_path / f"{name}.seq.nrrd"
        assert main(["inpaint", "--model", model, "--sequence", str(tmp_path / "sparse.seq.nrrd"), "--out",
                     str(outs[name]), *extra, *FAST]) == 0
        assert "2 in-plane windows of 64x40" in capsys.readouterr().out
    for path in outs.values():
        filled = read_sequence(path)
        assert filled.array.shape == (5, 8, 72, 40)
        for k in range(3):  # acquired frames copied bit-exactly
            assert np.array_equal(filled.array[2 * k], sparse.array[k])
        synthesized = filled.array[1::2]
        np.testing.assert_array_equal(synthesized[:, ~mask], linear[:, ~mask])
        assert np.abs(synthesized[:, mask] - linear[:, mask]).mean() > 1.0  # the network's frames
    assert not np.array_equal(read_sequence(outs["fast"]).array, read_sequence(outs["authors"]).array)


def test_a_frame_the_authors_network_cannot_take_whole_runs_through_windows(home, tmp_path, capsys):
    from meddiffcore.io import read_sequence
    from meddiffcore.nets.ctp_unet import CTPUNet, CTPUNetConfig, released_config
    from meddiffcore.tasks.ctp.model import in_plane_padding

    model = _wide_authors_model()
    net = CTPUNet(CTPUNetConfig.from_dict({**released_config().to_dict(), **WIDE}))
    with pytest.raises(Exception, match="cannot take a 8x400x64 slab"):
        in_plane_padding(net, 8, 400, 64)  # no padding helps: 400 rows is too many for this network whole
    sparse = _sparse(tmp_path, 400, 64)
    out = tmp_path / "filled.seq.nrrd"
    code = main(["inpaint", "--model", model, "--sequence", str(tmp_path / "sparse.seq.nrrd"), "--out", str(out),
                 "--estimate", "sample", "--steps", "2", *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "3 in-plane windows of 192x64" in captured.out
    filled = read_sequence(out)
    assert filled.array.shape == (5, 8, 400, 64) and np.isfinite(filled.array).all()
    for k in range(3):
        assert np.array_equal(filled.array[2 * k], sparse.array[k])
