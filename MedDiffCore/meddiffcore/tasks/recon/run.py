"""Job runners ``recon.ct``, ``recon.mri`` and ``recon.zsr``.

All inputs and parameters are validated before the reconstruction starts, so a
bad job fails fast with a clear message and writes nothing. Intensities: the
priors work in [0, 1]; CT uses the card's fixed HU scaling, MRI and ZSR scale by
the 99.5th percentile of the measured (zero-filled or thick) image, mapped to 0.8
(white matter in the training phantoms), and the output is scaled back.

Sinogram files (``recon ct --sinogram``) are volumes (z = slice, y = angle,
x = detector bin) of line integrals of ``HU + 1000`` in pixel units (the detector
spacing equals the pixel spacing); their x spacing gives the output pixel size,
their z spacing and origin the slice positions. Angles are a text or ``.npy`` file
of degrees, one per sinogram row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import BadInputError, ConfigError, ModelError
from ...jobs import Job
from ...physics.iterative import ITERATIVE
from ...progress import Reporter

DEFAULT_MODELS = {"ct": "recon-ct-demo", "mri": "recon-mri-demo", "zsr": "recon-mri-demo"}
MODES = ("tpdm", "fast")
STARTS = ("noise", "iterative")
MRI_TARGET = 0.8


@dataclass
class Settings:
    mode: str
    steps: int
    K: float
    lam: float
    snr: float
    cg_iters: int
    gamma: float
    eta: float
    chunk: int | None
    """At most this many slices per network call (None: as many as :data:`~.priors.CALL_BYTES` allows)."""
    batch: int = 6
    start: str = "noise"
    """Fast mode: ``"noise"`` (from pure noise at the prior's largest sigma) or ``"iterative"`` (from the iterative
    baseline with noise ``start_sigma`` added: the prior refines the classical reconstruction it starts from)."""
    start_sigma: float = 0.1
    final_tv: int = 0
    """Fast mode from the iterative baseline: outer iterations of the baseline's own TV-regularised least squares run
    from the sampler's result (0: none), so the result keeps the regulariser the baseline had."""
    authors: bool = False
    """``mode="tpdm"`` on a model whose card names ``"sampler": "authors"`` (imported TPDM pairs): the
    authors' own sampler (:func:`~meddiffcore.tasks.recon.tpdm.sample_tpdm_authors`)."""


def _number(params: dict, key: str, default, kind=float, lo=None, hi=None):
    value = params.get(key, default)
    try:
        value = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"parameter '{key}' must be a number, got {value!r}", f"e.g. {key}={default}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"parameter '{key}' must be finite, got {value}", f"e.g. {key}={default}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"parameter '{key}' = {value} is out of range [{lo}, {hi}]", f"e.g. {key}={default}")
    return value


def _default_lambda(d: dict, lookup: tuple[str, Any] | None) -> float:
    """The card's lambda; an imported model's authors give one per measurement setting
    (``lambda_by_views``, ``lambda_by_factor``, ``lambda_by_acceleration``), looked up with ``lookup``."""
    if lookup is not None and f"lambda_by_{lookup[0]}" in d:
        table = d[f"lambda_by_{lookup[0]}"]
        key = str(int(lookup[1])) if float(lookup[1]).is_integer() else str(lookup[1])
        if key not in table:
            raise ConfigError(f"the model's authors give no DPS weight for {lookup[0]} {lookup[1]} "
                              f"(they give one for {', '.join(table)})",
                              "pass --lambda (tuned per problem; the authors' weights are a starting point)")
        return float(table[key])
    return d.get("lambda", 1.0)


def settings_from(params: dict, card_defaults: dict, lookup: tuple[str, Any] | None = None) -> Settings:
    """Sampler settings from the job's parameters over the card's defaults; ``lookup`` (e.g.
    ``("factor", 4)``) picks an imported model's per-setting DPS weight."""
    mode = params.get("mode", "fast")
    if mode not in MODES:
        raise ConfigError(f"unknown mode '{mode}'", "use --mode tpdm (the seed's sampler) or --mode fast (DDS-style)")
    d = card_defaults.get(mode, {})
    start = params.get("start", d.get("start", "noise"))
    if start not in STARTS:
        raise ConfigError(f"unknown fast-mode start '{start}'",
                          "use start=iterative (refine the iterative baseline) or start=noise (sample from noise)")
    lam_default = _default_lambda(d, lookup) if mode == "tpdm" and "lambda" not in params else d.get("lambda", 1.0)
    return Settings(
        mode=mode,
        steps=_number(params, "steps", d.get("steps", 1000 if mode == "tpdm" else 50), int, 1, 100000),
        K=_number(params, "K", d.get("K", 2.7 if mode == "tpdm" else 2.0), float, 1.0, 1000.0),
        lam=_number(params, "lambda", lam_default, float, 0.0, 1000.0),
        snr=_number(params, "snr", d.get("snr", 0.16), float, 0.0, 10.0),
        cg_iters=_number(params, "cg_iters", d.get("cg_iters", 5), int, 0, 1000),
        gamma=_number(params, "gamma", d.get("gamma", 0.0), float, 0.0, 1e6),
        eta=_number(params, "eta", d.get("eta", 0.85), float, 0.0, 1.0),
        chunk=_number(params, "chunk", 64, int, 1, 100000) if params.get("chunk") is not None else None,
        batch=_number(params, "batch", d.get("batch", 6), int, 1, 100000),
        start=start,
        start_sigma=_number(params, "start_sigma", d.get("start_sigma", 0.1), float, 1e-6, 1e6),
        final_tv=_number(params, "final_tv", d.get("final_tv", 0), int, 0, 1000),
        authors=mode == "tpdm" and d.get("sampler") == "authors",
    )


def _load(job: Job, kind: str, device):
    from .model import load_recon_model

    ref = job.model or DEFAULT_MODELS[kind]
    model = load_recon_model(ref, device=device)
    want = "ct" if kind == "ct" else "mri"
    if model.modality != want:
        raise ModelError(f"model '{model.card.name}' is a {model.modality.upper()} prior, this job needs a {want.upper()} prior",
                         f"use a {want} recon model, e.g. {DEFAULT_MODELS[kind]}")
    return model


def _check_size(shape: tuple[int, ...], model, what: str) -> None:
    min_size = int(model.card.task_config.get("min_size", 16))
    if min(shape) < min_size:
        raise BadInputError(f"the {what} is {'x'.join(map(str, shape))} voxels; the prior needs at least {min_size} "
                            "voxels along every axis", f"use a volume of at least {min_size}^3 voxels")


def _check_finite(array: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(array)):
        raise BadInputError(f"the {what} contains NaN or infinite values", "fix or mask the bad values before reconstructing")


def _outputs(job: Job) -> tuple[Path, Path | None]:
    out = job.outputs.get("volume")
    if not out:
        raise ConfigError("the job names no 'volume' output", "set outputs.volume (--out) to a .nii.gz/.nrrd/.mha path")
    from ...io import VOLUME_WRITE_EXTENSIONS
    from ...io.atomic import split_extension

    for p in filter(None, (out, job.outputs.get("baseline"), job.outputs.get("iterative"))):
        if split_extension(Path(p).name)[1].lower() not in VOLUME_WRITE_EXTENSIONS:
            raise ConfigError(f"cannot write '{p}': unknown volume extension",
                              f"use one of {', '.join(VOLUME_WRITE_EXTENSIONS)}")
        if not Path(p).parent.is_dir():
            raise BadInputError(f"the output folder of '{p}' does not exist", "create it first")
    base = job.outputs.get("baseline")
    return Path(out), Path(base) if base else None


def _iterative_output(job: Job) -> Path | None:
    path = job.outputs.get("iterative")
    return Path(path) if path else None


#: The card's metrics that a warning compares with the iterative baseline, and what each one measures.
_WARN_METRICS = {"psnr": "PSNR (full range)", "ssim": "SSIM (full range)", "psnr_w80": "PSNR in the W 80 / L 40 window",
                 "ssim_w80": "SSIM in the W 80 / L 40 window", "psnr_window": "PSNR in the card's window",
                 "ssim_window": "SSIM in the card's window", "psnr_mask": "PSNR inside the head",
                 "ssim_mask": "SSIM inside the head"}


def _setting_value(key: str, task: str) -> float | None:
    """``"ct 16 views (phantoms)"`` -> 16; ``"mri x4 (mni)"`` -> 4; None for another task or a special row."""
    head = key.split(" (", 1)[0].split()
    if not head or head[0] != task or len(head) < 2:
        return None
    if task == "ct" and len(head) == 3 and head[2] == "views" and head[1].isdigit():
        return float(head[1])
    if task == "mri" and len(head) == 2 and head[1].startswith("x"):
        try:
            return float(head[1][1:])
        except ValueError:
            return None
    return None


def card_warnings(model, task: str, setting: float, mode: str) -> list[str]:
    """Where the card's measured figures show this prior worse than the iterative baseline, at the measured
    setting nearest to ``setting`` (views or acceleration), per kind of data (phantoms, real CT, MNI)."""
    evaluation = (model.card.metrics or {}).get("evaluation", {})
    rows = [(k, v, _setting_value(k, task)) for k, v in evaluation.items() if isinstance(v, dict)]
    rows = [(k, v, value) for k, v, value in rows if value is not None]
    if not rows:
        return []
    nearest = min({value for _, _, value in rows}, key=lambda v: abs(math.log(v / max(setting, 1e-9))))
    out = []
    for key, figures, value in rows:
        if value != nearest:
            continue
        worse = [f"{what} {figures[f'{mode}_{m}']:g} vs {figures[f'iterative_{m}']:g}" for m, what in _WARN_METRICS.items()
                 if f"{mode}_{m}" in figures and f"iterative_{m}" in figures
                 and figures[f"{mode}_{m}"] < figures[f"iterative_{m}"]]
        if worse:
            out.append(f"model '{model.card.name}' ({mode} mode) measured worse than the iterative baseline on {key}: "
                       + "; ".join(worse) + " (its card's figures)")
    return out


WARNING_HINT = ("compare the result with the iterative baseline (--iterative-out; the Slicer panel shows it beside the "
                "result) before trusting it; the prior was trained on phantoms")


def _warn(reporter: Reporter, messages: list[str], info: dict) -> None:
    for message in messages:
        reporter.warning(message, WARNING_HINT)
    if messages:
        info["warnings"] = messages


def _generator(job: Job, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(job.seed if job.seed is not None else 0)
    return g


def _solve(model, problem, y: torch.Tensor, shape: tuple[int, int, int], s: Settings, job: Job, reporter: Reporter,
           device) -> tuple[torch.Tensor, dict[str, Any]]:
    from .fast import sample_fast
    from .problems import operator_norm
    from .tpdm import geometric_sigmas, sample_tpdm, sample_tpdm_authors

    primary, auxiliary = model.prior_pair(s.chunk)
    sig_min, sig_max = model.sigma_range()
    gen = _generator(job, device)
    callback = reporter.step_callback("reconstruction")
    reporter.log(f"{s.mode} reconstruction of a {'x'.join(map(str, shape))} volume, {s.steps} steps, K={s.K}, on {device}")
    if s.authors:
        reporter.log("the authors' TPDM sampler: x_mean carried, DPS on the residual norm with their weight")
        result = sample_tpdm_authors(primary, auxiliary, problem, y, shape, sigma_min=sig_min, sigma_max=sig_max,
                                     steps=s.steps, K=s.K, lam=s.lam, snr=s.snr, batch=s.batch, generator=gen,
                                     callback=callback)
    elif s.mode == "tpdm":
        lip = operator_norm(problem, shape, device)
        result = sample_tpdm(primary, auxiliary, problem, y, shape, geometric_sigmas(sig_max, sig_min, s.steps), K=s.K,
                             lam=s.lam, lipschitz=lip, snr=s.snr, generator=gen, callback=callback)
    else:
        x_start = None
        if s.start == "iterative":
            top = min(s.start_sigma, sig_max)
            sigmas = [float(v) for v in np.geomspace(top, min(sig_min, top), s.steps)] + [0.0]

            def x_start() -> torch.Tensor:  # made inside the sampler, which then holds its only reference
                return problem.start_image(y).to(y.real.dtype if y.is_complex() else y.dtype)
            reporter.log(f"fast mode refines the iterative baseline from sigma {top:g}")
        else:
            sigmas = [float(v) for v in model.schedule.sampling_sigmas(s.steps)]
        result = sample_fast(primary, auxiliary, problem, y, shape, sigmas, K=s.K, cg_iters=s.cg_iters, gamma=s.gamma,
                             eta=s.eta, generator=gen, callback=callback, x_start=x_start)
        if s.start == "iterative" and s.final_tv > 0 and hasattr(problem, "iterative"):
            result.x = problem.iterative(y, start=result.x, outer=s.final_tv)
    if not bool(torch.isfinite(result.x).all()):
        raise ModelError(f"the {s.mode} reconstruction diverged (non-finite values); nothing was written",
                         "lower --lambda, use more --steps, or check that the model fits this data")
    r = problem.forward(result.x) - y
    info = {"mode": s.mode, "steps": s.steps, **({"start": s.start} if s.mode == "fast" else {}), "network_evaluations": result.nfe, "gradient_evaluations": result.grad_evaluations,
            "seconds": round(result.seconds, 2), "relative_residual": float(r.abs().norm() / y.abs().norm().clamp(min=1e-12))}
    reporter.log(f"done: {result.nfe} network passes, {result.seconds:.1f} s, relative data residual {info['relative_residual']:.4f}")
    return result.x, info


def geometry_template(volume):
    """``volume``'s geometry and metadata without its voxels (a zero-byte view), for the outputs' ``with_array``:
    the input array is not kept alive through the reconstruction."""
    return volume.with_array(np.broadcast_to(np.zeros((), np.float32), volume.shape))


def output_array(t: torch.Tensor, scale: float, offset: float = 0.0, low: float | None = None) -> np.ndarray:
    """Prior units -> output units (``t * scale + offset``, at least ``low``) as ONE new float32 array on the CPU:
    no temporaries of the volume (in-place arithmetic on the copy)."""
    moved = t.detach().to("cpu", torch.float32)
    out = moved.numpy() if moved.data_ptr() != t.data_ptr() else moved.numpy().copy()  # never the solver's tensor
    if low is not None:
        np.maximum(out, low, out=out)
    np.multiply(out, scale, out=out)
    if offset:
        np.add(out, offset, out=out)
    return out


def _write(volumes: list[tuple[Any, Path]]) -> None:
    from ...io import write_volume

    for volume, path in volumes:
        write_volume(volume, path)


# ---------------------------------------------------------------------------------------------- CT
def _read_angles(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"angles file '{path}' does not exist", "give a text or .npy file of angles in degrees")
    try:
        angles = np.load(p) if p.suffix == ".npy" else np.loadtxt(p, dtype=np.float64, ndmin=1)
    except Exception as exc:
        raise BadInputError(f"angles file '{path}' cannot be read: {exc}", "write one angle in degrees per line") from exc
    angles = np.asarray(angles, dtype=np.float64).ravel()
    _check_finite(angles, "angles file")
    return angles


def ct_problem_from_job(job: Job, model, device):
    """(problem, y in [0, 1] units, shape, template Volume for the output). A simulated job's ground truth is
    not returned: it would stay alive, a volume, through the whole reconstruction."""
    from ...io import Volume, read_volume
    from ...physics import ParallelBeam
    from .problems import CTProblem

    tc = model.intensity
    if "volume" in job.inputs:
        vol = read_volume(job.inputs["volume"])
        arr = np.asarray(vol.array, dtype=np.float32)
        _check_finite(arr, "input volume")
        _check_size(arr.shape, model, "input volume")
        if tc.get("unit") == "HU":
            from ...units import check_hu

            check_hu(arr, "the input volume")
        if arr.shape[1] != arr.shape[2]:
            raise BadInputError(f"axial slices are {arr.shape[1]}x{arr.shape[2]}; parallel-beam CT needs square slices",
                                "crop or pad the volume to square axial slices")
        views = _number(job.params, "views", 16, int, 1, 10000)
        beam = ParallelBeam.uniform(arr.shape[1], views, _number(job.params, "arc", 180.0, float, 1.0, 360.0))
        np.subtract(arr, tc["offset"], out=arr)  # [0, 1] units in place: no float temporaries of the volume
        np.divide(arr, tc["scale"], out=arr)
        x_true = torch.from_numpy(arr).to(device)
        problem = CTProblem(beam)
        y = problem.forward(x_true)
        noise = _number(job.params, "noise", 0.0, float, 0.0, 1.0)
        if noise > 0:
            g = torch.Generator(device=device).manual_seed(1234)
            y = y + noise * y.abs().mean() * torch.randn(y.shape, generator=g, device=device)
        return problem, y, tuple(arr.shape), geometry_template(vol)
    if "sinogram" not in job.inputs or "angles" not in job.inputs:
        raise ConfigError("a CT job needs inputs 'sinogram' and 'angles', or 'volume' to simulate from",
                          "use --sinogram S --angles A, or --simulate-from VOLUME --views N")
    sino_vol = read_volume(job.inputs["sinogram"])
    sino = np.asarray(sino_vol.array, dtype=np.float32)  # (z, angles, detectors)
    _check_finite(sino, "sinogram")
    angles = _read_angles(job.inputs["angles"])
    if angles.size != sino.shape[1]:
        raise BadInputError(f"the angles file has {angles.size} angles but the sinogram has {sino.shape[1]} rows (y axis)",
                            "give exactly one angle (degrees) per sinogram row")
    det = sino.shape[2]
    size = int(job.params.get("size") or round(det / math.sqrt(2)))
    if ParallelBeam(size, tuple(angles)).detectors != det:
        size = next((n for n in range(max(1, size - 3), size + 4) if ParallelBeam(n, (0.0,)).detectors == det), None)
        if size is None:
            raise BadInputError(f"a sinogram {det} bins wide matches no square image (ceil(sqrt(2) N) bins)",
                                "pad the detector rows to ceil(sqrt(2) N) bins for an N x N image")
    _check_size((sino.shape[0], size, size), model, "reconstruction")
    beam = ParallelBeam(size, tuple(angles))
    y = torch.from_numpy(sino / tc["scale"]).to(device)
    sp = sino_vol.spacing
    m = sino_vol.ijk_to_ras.copy()
    direction = m[:3, :3] / sp[None, :]
    geo = np.eye(4)
    geo[:3, :3] = direction * np.array([sp[0], sp[0], sp[2]])[None, :]
    geo[:3, 3] = m[:3, 3] - geo[:3, 0] * (size // 2) - geo[:3, 1] * (size // 2)
    template = Volume(np.zeros((sino.shape[0], size, size), np.float32), geo, {})
    return CTProblem(beam), y, (sino.shape[0], size, size), template


def run_ct(job: Job, reporter: Reporter) -> dict[str, str]:
    """Job ``recon.ct``: inputs ``sinogram`` + ``angles`` or ``volume`` (simulate ``views``); outputs ``volume`` [, ``baseline``]."""
    from ...devices import resolve_device

    out, base_out = _outputs(job)
    device = resolve_device(job.device)
    model = _load(job, "ct", device)
    settings_from(job.params, {})  # a bad mode or number fails before any input is read
    filt = job.params.get("filter", "ramp")
    from ...physics import FILTERS

    if filt not in FILTERS:
        raise ConfigError(f"unknown FBP filter '{filt}'", f"use one of {', '.join(FILTERS)}")
    problem, y, shape, template = ct_problem_from_job(job, model, device)
    s = settings_from(job.params, model.card.task_config.get("defaults", {}), ("views", len(problem.beam.angles_deg)))
    x, info = _solve(model, problem, y, shape, s, job, reporter, device)
    _warn(reporter, card_warnings(model, "ct", problem.beam.n_angles, s.mode), info)
    tc = model.intensity
    to_hu = lambda t: output_array(t, tc["scale"], tc["offset"])  # noqa: E731
    vols = [(template.with_array(to_hu(x), metadata={"meddiff": _meta(model, info)}), out)]
    if base_out:
        vols.append((template.with_array(to_hu(problem.baseline(y, filt))), base_out))
    iter_out = _iterative_output(job)
    if iter_out:
        reporter.log(f"iterative baseline: {ITERATIVE['ct'].describe()}")
        vols.append((template.with_array(to_hu(problem.iterative(y))), iter_out))
    _write(vols)
    return {"volume": str(out), **({"baseline": str(base_out)} if base_out else {}),
            **({"iterative": str(iter_out)} if iter_out else {})}


def _meta(model, info: dict) -> str:
    import json

    return json.dumps({"model": model.card.name, **info})


# ---------------------------------------------------------------------------------------------- MRI
def _mri_scale(image: np.ndarray) -> float:
    p = float(np.percentile(np.abs(image), 99.5))
    return p / MRI_TARGET if p > 0 else 1.0


def _read_array(path: str, what: str) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"{what} file '{path}' does not exist", "check the path")
    if p.suffix == ".npy":
        try:
            return np.load(p, allow_pickle=False)
        except Exception as exc:
            raise BadInputError(f"{what} file '{path}' cannot be read: {exc}", "save it with numpy.save") from exc
    from ...io import read_volume

    return np.asarray(read_volume(path).array)


def mri_problem_from_job(job: Job, model, device):
    from ...io import Volume, read_volume
    from ...physics import make_mask
    from ...physics.mri import MASK_KINDS, ifft2c
    from .problems import MRIProblem

    if "volume" in job.inputs:
        vol = read_volume(job.inputs["volume"])
        arr = np.asarray(vol.array, dtype=np.float32)
        _check_finite(arr, "input volume")
        _check_size(arr.shape, model, "input volume")
        acc = _number(job.params, "acceleration", 8.0, float, 1.0, 64.0)
        kind = job.params.get("mask_kind", "uniform")
        if kind not in MASK_KINDS:
            raise ConfigError(f"unknown mask kind '{kind}'", f"use one of {', '.join(MASK_KINDS)}")
        mask = make_mask(arr.shape[1:], acc, kind, _number(job.params, "center_fraction", 0.08, float, 0.0, 1.0),
                         seed=job.seed or 0)
        mask_t = torch.from_numpy(mask).to(device)
        problem = MRIProblem(mask_t)
        k = problem.forward(torch.from_numpy(arr).to(device))  # complex64 k-space: no float64/complex128 copies
        shape = tuple(arr.shape)
        del arr
        scale = _mri_scale(problem.baseline(k).cpu().numpy())
        y = k.div_(scale)
        return problem, y, shape, geometry_template(vol), scale
    if "kspace" not in job.inputs or "mask" not in job.inputs:
        raise ConfigError("an MRI job needs inputs 'kspace' and 'mask', or 'volume' to simulate from",
                          "use --kspace K.npy --mask M, or --simulate-from VOLUME --acceleration 8")
    k = _read_array(job.inputs["kspace"], "k-space")
    if k.ndim == 2:
        k = k[None]
    if k.ndim != 3:
        raise BadInputError(f"k-space must be (z, y, x) or (y, x), got shape {k.shape}", "save one 2D k-space per axial slice")
    if not np.all(np.isfinite(k)):
        raise BadInputError("the k-space contains NaN or infinite values", "fix the bad samples before reconstructing")
    mask = _read_array(job.inputs["mask"], "mask")
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.shape != k.shape[1:]:
        raise BadInputError(f"the mask has shape {mask.shape}, the k-space slices are {k.shape[1:]}",
                            "give a (y, x) mask with the shape of one k-space slice")
    if not np.all(np.isfinite(mask.astype(np.float64))):
        raise BadInputError("the mask contains NaN values", "use a 0/1 mask")
    _check_size(k.shape, model, "k-space volume")
    mask_t = torch.from_numpy(mask != 0).to(device)
    kt = torch.from_numpy(k.astype(np.complex64)).to(device) * mask_t
    zf = ifft2c(kt).abs().cpu().numpy()
    scale = _mri_scale(zf)
    if "geometry" in job.inputs:
        template = read_volume(job.inputs["geometry"])
        if template.shape != k.shape:
            raise BadInputError(f"the geometry volume has shape {template.shape}, the k-space {k.shape}",
                                "give a reference volume on the image grid of the k-space")
    else:
        template = Volume.from_spacing(np.zeros(k.shape, np.float32))
    return MRIProblem(mask_t), kt / scale, tuple(k.shape), template, scale


def run_mri(job: Job, reporter: Reporter) -> dict[str, str]:
    """Job ``recon.mri``: inputs ``kspace`` + ``mask`` [+ ``geometry``] or ``volume`` (simulate ``acceleration``)."""
    from ...devices import resolve_device

    out, base_out = _outputs(job)
    device = resolve_device(job.device)
    model = _load(job, "mri", device)
    settings_from(job.params, {})
    problem, y, shape, template, scale = mri_problem_from_job(job, model, device)
    acceleration = (job.params.get("acceleration", 8.0) if "volume" in job.inputs
                    else round(1.0 / max(float(problem.mask.float().mean()), 1e-6)))
    s = settings_from(job.params, model.card.task_config.get("defaults", {}), ("acceleration", acceleration))
    x, info = _solve(model, problem, y, shape, s, job, reporter, device)
    _warn(reporter, card_warnings(model, "mri", float(acceleration), s.mode), info)
    to_out = lambda t: output_array(t, scale)  # noqa: E731
    vols = [(template.with_array(output_array(x, scale, low=0.0), metadata={"meddiff": _meta(model, info)}), out)]
    if base_out:
        vols.append((template.with_array(to_out(problem.baseline(y))), base_out))
    iter_out = _iterative_output(job)
    if iter_out:
        reporter.log(f"iterative baseline: {ITERATIVE['mri'].describe()}")
        vols.append((template.with_array(to_out(problem.iterative(y))), iter_out))
    _write(vols)
    return {"volume": str(out), **({"baseline": str(base_out)} if base_out else {}),
            **({"iterative": str(iter_out)} if iter_out else {})}


# ---------------------------------------------------------------------------------------------- ZSR
def zsr_problem_from_job(job: Job, model, device):
    from ...io import Volume, read_volume
    from ...physics import SliceAverage
    from .problems import ZSRProblem

    factor = job.params.get("factor", 4)
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        if not (isinstance(factor, float) and factor.is_integer() and factor >= 1):
            raise ConfigError(f"the z factor must be a positive integer, got {factor!r}", "use e.g. --factor 2 or 4")
        factor = int(factor)
    vol = read_volume(job.inputs["volume"])
    arr = np.asarray(vol.array, dtype=np.float32)
    _check_finite(arr, "input volume")
    if job.params.get("simulate"):
        # the input is a thin ground-truth volume: average it into thick slices first
        if arr.shape[0] % factor:
            raise BadInputError(f"{arr.shape[0]} slices cannot be averaged in groups of {factor}",
                                f"use a factor that divides the number of slices ({arr.shape[0]})")
        _check_size(arr.shape, model, "input volume")
        thick = arr.reshape(arr.shape[0] // factor, factor, *arr.shape[1:]).mean(1)
        thick_geo = vol.ijk_to_ras.copy()
        thick_geo[:3, 2] *= factor
        thick_geo[:3, 3] = vol.ijk_to_ras[:3, 3] + vol.ijk_to_ras[:3, 2] * (factor - 1) / 2.0
        template = geometry_template(vol)
    else:
        thick = arr
        thick_geo = vol.ijk_to_ras
        template = Volume(np.zeros((arr.shape[0] * factor, *arr.shape[1:]), np.float32),
                          SliceAverage.thin_geometry(vol.ijk_to_ras, factor), {})
    shape = (thick.shape[0] * factor, *thick.shape[1:])
    _check_size(shape, model, "super-resolved volume")
    scale = _mri_scale(thick)
    y = torch.from_numpy(thick / scale).to(device)
    return ZSRProblem(factor), y, shape, template, scale, thick_geo


def run_zsr(job: Job, reporter: Reporter) -> dict[str, str]:
    """Job ``recon.zsr``: input ``volume`` (thick slices; with params.simulate, a thin volume to degrade), ``factor``."""
    from ...devices import resolve_device

    out, base_out = _outputs(job)
    if "volume" not in job.inputs:
        raise ConfigError("a ZSR job needs input 'volume'", "use --volume THICK.nii.gz")
    if job.outputs.get("iterative"):
        raise ConfigError("z-axis super-resolution has no iterative baseline (its baseline is cubic interpolation)",
                          "drop --iterative-out; --baseline-out writes the cubic interpolation")
    device = resolve_device(job.device)
    model = _load(job, "zsr", device)
    settings_from(job.params, {})
    problem, y, shape, template, scale, _ = zsr_problem_from_job(job, model, device)
    s = settings_from(job.params, model.card.task_config.get("defaults", {}), ("factor", problem.factor))
    x, info = _solve(model, problem, y, shape, s, job, reporter, device)
    to_out = lambda t: output_array(t, scale)  # noqa: E731
    vols = [(template.with_array(output_array(x, scale, low=0.0), metadata={"meddiff": _meta(model, info)}), out)]
    if base_out:
        vols.append((template.with_array(to_out(problem.baseline(y))), base_out))
    _write(vols)
    return {"volume": str(out), **({"baseline": str(base_out)} if base_out else {})}


def run_phantom(job: Job, reporter: Reporter) -> dict[str, str]:
    """Job ``recon.phantom``: params modality (ct|mri), kind, size, seed, spacing; output ``volume``."""
    from ...io import Volume, write_volume
    from .phantoms import KINDS, make_phantom

    modality = job.params.get("modality", "ct")
    if modality not in KINDS:
        raise ConfigError(f"unknown phantom modality '{modality}'", "use ct or mri")
    kind = job.params.get("kind")
    if kind is not None and kind not in KINDS[modality]:
        raise ConfigError(f"unknown {modality} phantom kind '{kind}'", f"use one of {', '.join(KINDS[modality])}")
    size = _number(job.params, "size", 64, int, 8, 1024)
    seed = job.seed if job.seed is not None else 0
    spacing = float(job.params.get("spacing", 1.0))
    out = job.outputs.get("volume")
    if not out:
        raise ConfigError("the job names no 'volume' output", "pass --out")
    arr = make_phantom(modality, kind, (size, size, size), seed)
    write_volume(Volume.from_spacing(arr, (spacing,) * 3), out)
    return {"volume": str(out)}
