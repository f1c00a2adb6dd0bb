"""Imported published models run through the one diffusion core: WDM/cWDM `meddiff generate`, TPDM
`meddiff recon`, the CTP authors' model `meddiff inpaint`, with the authors' data conventions in and out
and the fast samplers (few network calls)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from meddiffcore.checkpoints import import_checkpoint
from meddiffcore.cli import main
from meddiffcore.errors import EXIT_STATUS, ErrorCode
from meddiffcore.io import Volume, read_volume, write_volume
from meddiffcore.tasks.recon.phantoms import make_phantom
from meddiffcore.tasks.recon.planes import from_slices, to_slices

sys.path.insert(0, str(Path(__file__).parents[1] / "core"))
from published_helpers import TPDM, TPDM_TINY, WDM, WDM_TINY, save_tiny_cwdm_checkpoint  # noqa: E402

FAST = ["--device", "cpu", "--progress", "none", "--seed", "1"]


@pytest.fixture()
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("MEDDIFF_HOME", str(h))
    return h


def test_imported_wdm_generates_with_the_fast_and_the_authors_sampler(home, tmp_path):
    import_checkpoint("wdm", [WDM / "wdm_tiny_brats_1200000.pt"], variant="brats", network=WDM_TINY)
    fast, authors = tmp_path / "fast.nii.gz", tmp_path / "authors.nii.gz"
    size = ["--param", "size=[16,16,16]"]  # the tiny fixture network on a small grid
    assert main(["generate", "--model", "wdm-brats", "--out", str(fast), "--steps", "4", *size, *FAST]) == 0
    assert main(["generate", "--model", "wdm-brats", "--out", str(authors), "--sampler", "authors", "--steps", "3",
                 *size, *FAST]) == 0
    for path in (fast, authors):
        volume = read_volume(path)
        assert volume.shape == (16, 16, 16)
        np.testing.assert_allclose(volume.spacing, (2.0, 2.0, 2.0))  # the authors' 2 mm grid
        assert 0.0 <= volume.array.min() and volume.array.max() <= 1.0 and volume.array.std() > 0  # (x + 1) / 2
    assert not np.allclose(read_volume(fast).array, read_volume(authors).array)


def test_imported_cwdm_translates_brats_like_contrasts_back_onto_their_grid(home, tmp_path):
    fields = save_tiny_cwdm_checkpoint(tmp_path / "cwdm_t1c.pt")
    import_checkpoint("cwdm", [tmp_path / "cwdm_t1c.pt"], network=fields)  # variant t1c from the file name
    rng = np.random.default_rng(0)
    geometry = np.diag([-1.0, -1.0, 1.0, 1.0])
    geometry[:3, 3] = (10.0, 20.0, -30.0)
    brain = np.zeros((10, 24, 24), np.float32)
    brain[2:9, 5:19, 4:20] = 1.0
    args = []
    for name in ("t1n", "t2w", "t2f"):  # BraTS-like: 1 mm, any intensity scale (normalised per volume inside)
        write_volume(Volume(brain * rng.uniform(200, 900, brain.shape).astype(np.float32), geometry),
                     tmp_path / f"{name}.nii.gz")
        args += ["--condition", f"{name}={tmp_path / f'{name}.nii.gz'}"]
    out = tmp_path / "t1c.nii.gz"
    grid = ["--param", "size=[16,16,16]"]  # model grid (z, y, x): z padded at the end, y and x centre-cropped
    assert main(["generate", "--model", "cwdm-t1c", "--out", str(out), "--steps", "3", *grid, *args, *FAST]) == 0
    result = read_volume(out)
    assert result.same_grid(read_volume(tmp_path / "t1n.nii.gz"))
    assert 0.0 <= result.array.min() and result.array.max() <= 1.0
    assert not result.array[:, :4].any() and not result.array[:, -4:].any()  # outside the 16-wide crop: zero
    values = result.array[result.array != 0]
    assert values.size and values.min() > 0.04  # the authors zero everything at or below 0.04
    rc = main(["generate", "--model", "cwdm-t1c", "--out", str(tmp_path / "x.nii.gz"), *grid, *args[:4], *FAST,
               "--progress", "json"])
    assert rc == EXIT_STATUS[ErrorCode.BAD_INPUT] and not (tmp_path / "x.nii.gz").exists()


def _ct(path: Path, shape=(16, 16, 16)) -> Volume:
    geometry = np.diag([0.7, 0.7, 1.5, 1.0])
    volume = Volume(make_phantom("ct", "organ", shape, seed=4), geometry)
    write_volume(volume, path)
    return volume


def _install_tpdm(variant: str) -> str:
    path = TPDM / "tpdm_tiny_checkpoint.pth"
    return import_checkpoint("tpdm", [path, path], variant=variant, network=TPDM_TINY).card_path.stem


def test_imported_tpdm_reconstructs_ct_in_hu_on_the_input_grid_fast_and_with_the_authors_sampler(home, tmp_path):
    name = _install_tpdm("aapm")
    source = _ct(tmp_path / "ct.nii.gz")
    outputs = {}
    for mode, steps in (("fast", "4"), ("tpdm", "3")):
        out = tmp_path / f"{mode}.nii.gz"
        assert main(["recon", "ct", "--model", name, "--simulate-from", str(tmp_path / "ct.nii.gz"), "--views", "36",
                     "--mode", mode, "--steps", steps, "--out", str(out), "--baseline-out", str(tmp_path / "fbp.nrrd"),
                     *FAST]) == 0
        volume = read_volume(out)
        assert volume.same_grid(source) and np.isfinite(volume.array).all()
        outputs[mode] = volume.array
    assert not np.allclose(outputs["fast"], outputs["tpdm"])
    # HU in, (HU + 1000) / 1000 for the priors, HU out: the FBP baseline of the same measurement is in HU again
    fbp = read_volume(tmp_path / "fbp.nrrd").array
    assert np.abs(fbp - source.array).mean() < 0.15 * np.abs(source.array).mean()


def test_authors_dps_weight_follows_the_measurement_setting(home, tmp_path):
    name = _install_tpdm("bmr")
    write_volume(Volume.from_spacing(make_phantom("mri", None, (16, 16, 16), seed=2)), tmp_path / "mr.nii.gz")
    base = ["recon", "zsr", "--model", name, "--volume", str(tmp_path / "mr.nii.gz"), "--simulate", "--mode", "tpdm",
            "--steps", "2", *FAST]
    assert main([*base, "--factor", "2", "--out", str(tmp_path / "z2.nii.gz")]) == 0  # the authors' lambda 1.0
    assert main([*base, "--factor", "8", "--out", str(tmp_path / "z8.nii.gz")]) == EXIT_STATUS[ErrorCode.BAD_CONFIG]
    assert not (tmp_path / "z8.nii.gz").exists()
    assert main([*base, "--factor", "8", "--lambda", "0.5", "--out", str(tmp_path / "z8.nii.gz")]) == 0


@pytest.mark.parametrize("plane, image_axes", [("zyx", (1, 2)), ("yxz", (2, 0)), ("xyz", (1, 0)), ("zxy", (2, 1))])
def test_axis_string_planes_round_trip(plane, image_axes):
    volume = torch.arange(2 * 3 * 4).reshape(2, 3, 4)
    slices = to_slices(volume, plane)
    assert tuple(slices.shape[1:]) == tuple(volume.shape[a] for a in image_axes)
    assert torch.equal(from_slices(slices, plane), volume)


def test_authors_tpdm_sampler_carries_the_predictor_mean_on_the_authors_grid():
    """Data N(0, 1) per voxel: the denoiser is x / (1 + sigma^2), the score -x / (1 + sigma^2). With no
    corrector move (snr 0) and no DPS, two steps of the authors' sampler scale x by exactly
    (1 - G_0^2 / (1 + sigma(1)^2)) (1 - G_1^2 / (1 + sigma(eps)^2)): no predictor noise is added."""
    from meddiffcore.tasks.recon.priors import VolumePrior
    from meddiffcore.tasks.recon.problems import ZSRProblem
    from meddiffcore.tasks.recon.tpdm import sample_tpdm_authors

    def gaussian(x, sigma):
        return x / (1 + sigma.view(-1, 1, 1, 1) ** 2)

    priors = [VolumePrior(gaussian, plane) for plane in ("zyx", "yxz")]
    shape, smin, smax = (4, 6, 8), 0.5, 3.0  # a short range: no float32 cancellation in the check
    result = sample_tpdm_authors(*priors, ZSRProblem(1), torch.zeros(shape), shape, sigma_min=smin, sigma_max=smax,
                                 steps=2, K=2, lam=0.0, snr=0.0, generator=torch.Generator().manual_seed(5))
    x0 = smax * torch.randn(shape, generator=torch.Generator().manual_seed(5))
    s_end = smin * (smax / smin) ** 1e-5
    expected = x0 * (1 - (smax**2 - smin**2) / (1 + smax**2)) * (1 - smin**2 / (1 + s_end**2))
    torch.testing.assert_close(result.x, expected, rtol=1e-4, atol=1e-6)
    assert result.nfe == 4  # two passes per step


# -- the CTP authors' inpainting model -----------------------------------------------------------------------------

def _ctp_authors_model() -> str:
    from published_helpers import CTP, CTP_TINY

    import_checkpoint("ctp", [CTP / "ctp_tiny_model-tiny.pt"], network=CTP_TINY)
    return "ctp-bae2024"


def _sparse_ctp(tmp_path: Path, every: int = 2):
    from meddiffcore.io import Sequence, write_sequence
    from meddiffcore.tasks.ctp.phantom import make_ctp_phantom

    phantom = make_ctp_phantom(5, slices=8, size=48, frames=9, noise_hu=1.0)
    seq = phantom.sequence
    sparse = Sequence(seq.array[::every].astype(np.float32), seq.ijk_to_ras, seq.times_s[::every])
    write_sequence(sparse, tmp_path / "sparse.seq.nrrd")
    return sparse


def test_imported_ctp_model_fills_frames_with_the_authors_window_mask_and_sampler(home, tmp_path):
    from meddiffcore.io import read_sequence
    from meddiffcore.tasks.ctp import authors
    from meddiffcore.tasks.ctp.inpaint import linear_fill
    from meddiffcore.tasks.ctp.plan import make_plan

    torch.set_num_threads(1)
    model = _ctp_authors_model()
    sparse = _sparse_ctp(tmp_path)
    outs = {}
    for name, extra in (("fast", ["--estimate", "sample", "--steps", "2"]),
                        ("authors", ["--sampler", "authors", "--steps", "2"]), ("mean", ["--estimate", "mean"])):
        outs[name] = tmp_path / f"{name}.seq.nrrd"
        assert main(["inpaint", "--model", model, "--sequence", str(tmp_path / "sparse.seq.nrrd"), "--out",
                     str(outs[name]), *extra, *FAST]) == 0
    mask = authors.tissue_mask(sparse.array, 40.0, 80.0)
    assert 0.2 < mask.mean() < 0.9  # the head, without the air around it
    plan = make_plan(sparse.times_s)
    linear = linear_fill(sparse.array, plan)
    for path in outs.values():
        filled = read_sequence(path)
        assert len(filled) == 9 and np.array_equal(filled.times_s, np.arange(9.0) + sparse.times_s[0])
        for k in range(5):  # acquired frames copied bit-exactly
            assert np.array_equal(filled.array[2 * k], sparse.array[k])
        synthesized = filled.array[1::2]
        np.testing.assert_array_equal(synthesized[:, ~mask], linear[:, ~mask])  # outside the authors' mask
        inside = synthesized[:, mask & (sparse.array.min(0) >= 0) & (sparse.array.max(0) <= 80)]
        assert inside.min() >= 0.0 and inside.max() <= 80.0  # the network's frame, in the [0, 80] window
        assert np.abs(synthesized[:, mask] - linear[:, mask]).mean() > 1.0  # ... and not the interpolation
    assert not np.array_equal(read_sequence(outs["fast"]).array, read_sequence(outs["authors"]).array)


def test_authors_sampler_of_an_imported_ctp_model_is_1500_ancestral_steps_and_a_sample(home):
    from meddiffcore.jobs import Job
    from meddiffcore.tasks.ctp.model import load_for_inference
    from meddiffcore.tasks.ctp.run import sampling_settings

    model = load_for_inference(_ctp_authors_model(), torch.device("cpu"))
    assert sampling_settings(Job(task="ctp.inpaint", params={"sampler": "authors"}), model) == \
        ("ancestral", 1500, "uniform", "sample")
    assert sampling_settings(Job(task="ctp.inpaint", params={}), model) == ("dpmpp_2m", 50, None, "sample")
    assert sampling_settings(Job(task="ctp.inpaint", params={"estimate": "mean"}), model)[3] == "mean"


def test_padding_names_the_frames_the_ctp_network_cannot_take_whole_and_windows_take_them(home, tmp_path, capsys):
    from meddiffcore.nets.ctp_unet import CTPUNet, released_config
    from meddiffcore.tasks.ctp.model import in_plane_layout, in_plane_padding

    with torch.device("meta"):
        net = CTPUNet(released_config())
    assert in_plane_padding(net, 8, 64, 64) == (128, 0)  # rows padded up to the 192 it was trained on
    assert in_plane_padding(net, 8, 192, 200) == (0, 24)
    with pytest.raises(Exception, match="cannot take a 8x512x512 slab"):
        in_plane_padding(net, 8, 512, 512)
    assert in_plane_layout(net, 8, 512, 512)[2].size == (192, 192)  # inpaint runs it in windows (test_ctp_windows)


# -- the MRNet knee-MRI cascade ------------------------------------------------------------------------------------

def _mrnet_cascade(tmp_path: Path) -> str:
    from published_helpers import MRNET_SMALL, save_small_mrnet_release

    import_checkpoint("mrnet", save_small_mrnet_release(tmp_path, steps=(2000, 1000, 1000)), network=MRNET_SMALL)
    return "sr-mrnet"


def test_imported_mrnet_cascade_generates_native_256_slices_in_0_1_with_both_samplers(home, tmp_path):
    torch.set_num_threads(1)
    model = _mrnet_cascade(tmp_path)
    fast, authors = tmp_path / "fast.nii.gz", tmp_path / "authors.nii.gz"
    assert main(["generate", "--model", model, "--out", str(fast), "--steps", "2", *FAST]) == 0
    assert main(["generate", "--model", model, "--out", str(authors), "--sampler", "authors", "--steps", "2",
                 *FAST]) == 0
    a, b = read_volume(fast), read_volume(authors)
    assert a.shape == b.shape == (1, 256, 256)
    np.testing.assert_allclose(a.spacing[:2], (1.0, 1.0))  # nominal 1 mm at 256^2
    for volume in (a, b):
        assert 0.0 <= volume.array.min() and volume.array.max() <= 1.0 and volume.array.std() > 0
    assert not np.allclose(a.array, b.array)


def test_imported_mrnet_cascade_upscales_a_64_png_and_refuses_other_sizes_and_ranges(home, tmp_path, capsys):
    from PIL import Image

    torch.set_num_threads(1)
    model = _mrnet_cascade(tmp_path)
    png = tmp_path / "knee64.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(png)
    out = tmp_path / "knee256.png"
    assert main(["upscale", "--model", model, "--input", str(png), "--out", str(out), "--steps", "2", *FAST]) == 0
    with Image.open(out) as image:
        assert image.size == (256, 256)
    mid = tmp_path / "knee128.nii.gz"
    write_volume(Volume.from_spacing(np.random.default_rng(1).random((2, 128, 128), dtype=np.float32),
                                     spacing_mm=(1.0, 1.0, 3.0)), tmp_path / "k128.nii.gz")
    assert main(["upscale", "--model", model, "--input", str(tmp_path / "k128.nii.gz"), "--out", str(mid),
                 "--steps", "2", *FAST]) == 0
    result = read_volume(mid)
    assert result.shape == (2, 256, 256) and 0.0 <= result.array.min() and result.array.max() <= 1.0
    capsys.readouterr()
    write_volume(Volume.from_spacing(np.zeros((1, 100, 100), np.float32)), tmp_path / "k100.nii.gz")
    assert main(["upscale", "--model", model, "--input", str(tmp_path / "k100.nii.gz"), "--out",
                 str(tmp_path / "x.nii.gz"), *FAST]) == EXIT_STATUS[ErrorCode.BAD_INPUT]
    assert "super-resolves square slices of 64, 128 pixels" in capsys.readouterr().err
    write_volume(Volume.from_spacing(np.full((1, 64, 64), 300.0, np.float32)), tmp_path / "mri.nii.gz")
    assert main(["upscale", "--model", model, "--input", str(tmp_path / "mri.nii.gz"), "--out",
                 str(tmp_path / "y.nii.gz"), *FAST]) == EXIT_STATUS[ErrorCode.BAD_INPUT]
    assert "takes slices in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists() and not (tmp_path / "y.nii.gz").exists()
