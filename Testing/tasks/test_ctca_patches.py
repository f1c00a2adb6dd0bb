"""High-resolution patches: coverage, seam-free blending, voxel-aligned references, positions."""

import numpy as np
import torch

from meddiffcore.diffusion import DenoiserOutput, eps_from_x0, get_sampler, initial_noise
from meddiffcore.io import Volume
from meddiffcore.tasks.ctca.grid import resample, synthesis_grid
from meddiffcore.tasks.ctca.model import position_channels
from meddiffcore.tasks.ctca.patches import PatchedDenoiser, patch_grid, patch_starts, region_weight


def test_patch_grid_covers_every_voxel_with_overlap():
    shape, patch, overlap = (40, 33, 64), (16, 16, 32), (4, 4, 8)
    count = np.zeros(shape, int)
    for r in patch_grid(shape, patch, overlap):
        assert all(s.stop - s.start == p for s, p in zip(r, patch))
        count[r] += 1
    assert count.min() >= 1
    for n, p, o in zip(shape, patch, overlap):
        starts = patch_starts(n, p, o)
        assert starts[0] == 0 and starts[-1] == n - p
        assert all(b - a <= p - o for a, b in zip(starts, starts[1:]))
    assert patch_starts(10, 16, 4) == [0]


def test_blending_weights_are_positive_and_normalise_to_one():
    shape, patch, overlap = (24, 24, 24), (12, 12, 12), (4, 4, 4)
    total = torch.zeros(shape)
    regions = patch_grid(shape, patch, overlap)
    for r in regions:
        total[r] += region_weight(r, regions)
        assert region_weight(r, regions).min() > 0
    assert torch.all(total > 0)
    # two neighbours fade over all they share (not only the 4 asked for), mirrored: their weights sum to one
    pair = patch_grid((20, 1, 1), (12, 1, 1), (2, 0, 0))
    assert [r[0].start for r in pair] == [0, 8]
    first, second = (region_weight(r, pair)[:, 0, 0] for r in pair)
    assert torch.allclose(first[8:] + second[:4], torch.ones(4)) and first[:6].eq(1).all() and second[6:].eq(1).all()


class _Recorder:
    """A denoiser whose x0 is a function of the voxel position channels it is given (so any misplacement shows)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def predict(self, x, sigma, segmap):
        self.calls += 1
        x0 = self.fn(segmap[:, -3:]).to(x.dtype)
        return DenoiserOutput(x0=x0, eps=eps_from_x0(x, x0, sigma), var_interp=torch.full_like(x, 0.3))

    def __call__(self, x, sigma, segmap):
        return self.predict(x, sigma, segmap).x0


def test_constant_and_smooth_estimates_pass_through_unchanged():
    shape = (20, 24, 28)
    pos = position_channels(shape)[None]
    x = torch.randn((1, 1) + shape)
    sigma = torch.tensor([2.0])
    const = PatchedDenoiser(_Recorder(lambda p: torch.full((p.shape[0], 1) + p.shape[2:], 0.25)), (8, 8, 8), (3, 3, 3), 5)
    out = const.predict(x, sigma, segmap=pos)
    assert torch.allclose(out.x0, torch.full_like(x, 0.25), atol=1e-6)
    assert torch.allclose(out.var_interp, torch.full_like(x, 0.3), atol=1e-6)
    smooth = lambda p: (torch.sin(3 * p[:, 0]) * p[:, 1] + p[:, 2] ** 2)[:, None]  # noqa: E731
    full = smooth(pos)
    patched = PatchedDenoiser(_Recorder(smooth), (8, 12, 8), (2, 4, 3), 3)
    assert torch.allclose(patched(x, sigma, segmap=pos), full, atol=1e-5)
    assert patched.denoiser.calls == len(patched.regions(shape)) // 3 + (len(patched.regions(shape)) % 3 > 0)


def test_whole_sampler_run_has_no_seams():
    """Sampling through patches equals sampling the whole volume when the estimate depends only on position."""
    shape = (16, 16, 24)
    pos = position_channels(shape)[None]
    fn = lambda p: (0.5 * p[:, 0] - 0.3 * p[:, 2])[:, None]  # noqa: E731
    sigmas = torch.tensor([10.0, 3.0, 1.0, 0.3, 0.0])
    x = initial_noise((1, 1) + shape, sigmas, torch.Generator().manual_seed(0))
    sampler = get_sampler("dpmpp_2m")
    whole = sampler(_Recorder(fn), x.clone(), sigmas, cond={"segmap": pos})
    patched = sampler(PatchedDenoiser(_Recorder(fn), (8, 8, 8), (2, 2, 2), 4), x.clone(), sigmas, cond={"segmap": pos})
    assert torch.allclose(whole, patched, atol=1e-5)
    # no jump across any patch border: neighbouring voxels differ as little at borders as inside
    grad = (patched[0, 0, :, :, 1:] - patched[0, 0, :, :, :-1]).abs()
    assert grad.max() < 0.05


def test_reference_crop_is_voxel_aligned_in_physical_space():
    """The reference each patch sees is the LR volume at the patch voxels' own RAS positions."""
    direction = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    labels = Volume.from_spacing(np.ones((30, 36, 40), np.uint8), (1.1, 0.9, 1.7), (5.0, -3.0, 20.0), direction)
    lr_grid, lr_shape = synthesis_grid(labels, 4.0, (2, 2, 2))
    hr_grid, hr_shape = synthesis_grid(labels, 2.0, (2, 2, 2))

    def field(ras):  # a linear function of position: linear interpolation reproduces it exactly
        return 0.01 * ras[..., 0] - 0.02 * ras[..., 1] + 0.005 * ras[..., 2]

    def ras_of(grid, shape):
        k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
        ijk = np.stack([i, j, k], -1).reshape(-1, 3).astype(float)
        return (ijk @ grid[:3, :3].T + grid[:3, 3]).reshape(shape + (3,))

    lr = field(ras_of(lr_grid, lr_shape)).astype(np.float32)
    ref = resample(lr, lr_grid, hr_grid, hr_shape, order=1, mode="nearest")
    hr_ras = ras_of(hr_grid, hr_shape)
    inside = (slice(3, -3),) * 3  # away from the LR border where "nearest" extends the edge
    np.testing.assert_allclose(ref[inside], field(hr_ras)[inside], atol=1e-4)
    for r in patch_grid(hr_shape, (12, 12, 12), (4, 4, 4)):
        crop = ref[r]
        # physical coordinates of the crop's voxels are those of the same voxels of the whole grid
        np.testing.assert_allclose(crop[2:-2, 2:-2, 2:-2], field(hr_ras[r])[2:-2, 2:-2, 2:-2], atol=1e-3)


def test_patch_size_adapts_to_free_gpu_memory(monkeypatch):
    import meddiffcore.devices as devices
    from meddiffcore.tasks.ctca.patches import choose_patching

    shape, trained, multiple, bpv = (128, 128, 128), (32, 32, 32), (8, 8, 8), 1000.0
    monkeypatch.setattr(devices, "free_gpu_memory_bytes", lambda device: None)
    assert choose_patching(shape, trained, multiple, "cpu", bpv) == ((32, 32, 32), 2)
    monkeypatch.setattr(devices, "free_gpu_memory_bytes", lambda device: 80 * 2**30)  # an H100
    patch, batch = choose_patching(shape, trained, multiple, "cuda", bpv)
    assert patch == (128, 128, 128) and batch >= 1
    monkeypatch.setattr(devices, "free_gpu_memory_bytes", lambda device: 300 * 2**20)  # 300 MiB free
    patch, batch = choose_patching(shape, trained, multiple, "cuda", bpv)
    assert patch == (32, 32, 32) and batch * 32**3 * bpv <= 0.5 * 300 * 2**20 and batch >= 1
