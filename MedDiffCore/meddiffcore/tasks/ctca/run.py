"""The ``ctca.synthesize`` job (CLI ``meddiff synthesize`` and the engine worker).

Inputs: ``labels`` (a label file, a folder holding one DICOM series, or a folder of
label files for a batch) and optionally ``label_mapping`` (JSON/CSV, see :mod:`.labels`).
Outputs: ``volume`` (a file; a folder for a batch; for a DICOM series input, a name
without a volume extension is a new DICOM series folder in the input's study),
optionally ``preview`` (PNG; a folder for a batch).
Params: ``steps``, ``sampler``, ``guidance``, ``samples``, ``hr_model``, ``patch``, ``series`` (the DICOM
series UID to read from a folder that holds several).
Everything is validated before sampling starts, and files are written only
after every volume is done, so a failure leaves no output and never touches
the input.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


from ...errors import BadInputError, ConfigError
from ...io import VOLUME_EXTENSIONS, VOLUME_WRITE_EXTENSIONS, Volume
from ...io.atomic import numbered_paths, split_extension

#: The model used when a job names none.
DEFAULT_MODEL = "ctca-demo"
MIN_AXIS = 8


def read_label_volume(path: Path, mapping: dict[int | str, int] | None, series_uid: str | None = None) -> Volume:
    """Read and validate one label map; returns a Volume of uint8 values of our table.

    A Slicer segmentation (``.seg.nrrd``, or an NRRD whose header names segments) is mapped segment by segment
    BY NAME (:func:`.labels.segmentation_labels`), never by its stored label values or segment order.
    """
    from ...io import is_segmentation_file, read_segmentation, read_volume
    from .labels import segmentation_labels, to_label_array

    try:
        volume = None if is_segmentation_file(path) else read_volume(path, series_uid=series_uid)
        named_segments = volume is None or "Segment0_Name" in volume.metadata.get("nrrd_keyvalues", {})
        segmentation = read_segmentation(path) if named_segments else None
    except BadInputError as exc:
        raise BadInputError(f"label map '{path}': {exc.message}", exc.hint) from exc
    labels, ijk_to_ras = None, (segmentation or volume).ijk_to_ras
    if segmentation is not None:
        labels = segmentation_labels(segmentation, mapping, what=f"segmentation '{path.name}'")
    shape = labels.shape if labels is not None else volume.shape
    if min(shape) < MIN_AXIS:
        if volume is not None and volume.metadata.get("dicom_single_file"):
            raise BadInputError(f"label map '{path}' is one DICOM file ({' x '.join(map(str, shape))} voxels), not a "
                                "3D label map", "pass the folder that holds the whole DICOM series")
        raise BadInputError(f"label map '{path}' has shape {shape}: a 2D image or a thin slab, not a 3D label map",
                            f"pass a 3D label map at least {MIN_AXIS} voxels along every axis")
    if labels is None:
        labels = to_label_array(volume.array, mapping, what=f"label map '{path.name}'")
    return Volume(labels, ijk_to_ras, {"source": str(path)})


def _label_files(path: Path) -> tuple[list[Path], bool]:
    """(label maps, batch?): a file, a folder holding one DICOM series (ONE volume), or a folder of label files
    (a batch: what the user asks for by passing such a folder). DICOM files are never a batch of slices."""
    from ...io import is_dicom_file, is_dicom_folder

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_EXTENSIONS)
                       and not is_dicom_file(p))
        if is_dicom_folder(path):
            if files:
                raise BadInputError(f"label folder '{path}' mixes DICOM files with other label files ({files[0].name}...)",
                                    "put the DICOM series in a folder of its own (it is read as one volume), "
                                    "and the label files for a batch in another")
            return [path], False
        if not files:
            raise BadInputError(f"label folder '{path}' holds no volume files", f"put {', '.join(VOLUME_EXTENSIONS)} files in it")
        return files, True
    if not path.exists():
        raise BadInputError(f"label map '{path}' does not exist", "check the path given to --labels")
    return [path], False


def _dicom_output(path: Path, inputs: list[Path], batch: bool) -> bool:
    """A DICOM series in: an output named without a volume extension is a new DICOM series folder (same study)."""
    return not batch and inputs[0].is_dir() and split_extension(path.name)[1].lower() not in VOLUME_WRITE_EXTENSIONS


def _check_output(path: Path, inputs: list[Path], dicom: bool = False) -> None:
    _, ext = split_extension(path.name)
    if dicom:
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ConfigError(f"output '{path}' exists and is not an empty folder",
                              "name a new folder for the DICOM series (or a .nii.gz/.nrrd file)")
    elif ext.lower() not in VOLUME_WRITE_EXTENSIONS:
        raise ConfigError(f"output '{path}' has an unsupported extension '{ext}'", f"use one of {', '.join(VOLUME_WRITE_EXTENSIONS)}")
    if not path.parent.is_dir():
        raise ConfigError(f"output folder '{path.parent}' does not exist", "create it first")
    if any(path.resolve() == p.resolve() for p in inputs):
        raise ConfigError(f"output '{path}' is the input label map", "write the CT to another file; inputs are never overwritten")


def _plan(job, files: list[Path], samples: int, batch: bool) -> list[list[Path]]:
    """Output paths per input file (one per sample)."""
    out = Path(job.outputs["volume"])
    if not batch:
        paths = [numbered_paths(out, samples)]
    else:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"a folder of label maps needs an output folder, '{out}' is a file", "pass --out FOLDER")
        paths = []
        for f in files:
            stem, _ = split_extension(f.name)
            paths.append(numbered_paths(out / f"{stem}_ct.nii.gz", samples))
    return paths


def run_synthesize(job, reporter) -> dict[str, str]:
    import torch

    from ...devices import resolve_device
    from ...io import write_dicom_series, write_volume
    from ...preview import CT_ANGIO, write_preview
    from .grid import check_field_of_view
    from .labels import load_mapping
    from .model import load_ctca_model
    from .synthesis import SynthesisRecord, SynthesisSettings, synthesize

    if "labels" not in job.inputs:
        raise ConfigError("the job names no 'labels' input", "pass --labels FILE_OR_FOLDER")
    if "volume" not in job.outputs:
        raise ConfigError("the job names no 'volume' output", "pass --out FILE (or FOLDER for a folder of label maps)")
    samples = job.params.get("samples", 1)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ConfigError(f"samples must be a whole number >= 1, got {samples!r}", "ask for 1 or more samples")
    device = resolve_device(job.device)
    model = load_ctca_model(job.model or DEFAULT_MODEL, device)
    hr_model = load_ctca_model(job.params["hr_model"], device) if job.params.get("hr_model") else None
    if model.stage != "lr" or (hr_model is not None and hr_model.stage != "patch"):
        raise ConfigError("--model must be a low-resolution ('lr') CTCA model and --hr-model a 'patch' model",
                          "see the stage in each model card (`meddiff models list`)")
    asked = {"steps": job.params.get("steps"), "sampler": job.params.get("sampler"), "seed": job.seed,
             "guidance": float(job.params["guidance"]) if job.params.get("guidance") is not None else None}
    settings = SynthesisSettings.of_model(model, **asked)
    hr_settings = SynthesisSettings.of_model(hr_model, **asked) if hr_model is not None else None
    mapping = load_mapping(job.inputs["label_mapping"]) if job.inputs.get("label_mapping") else None

    files, batch = _label_files(Path(job.inputs["labels"]))
    series = job.params.get("series")
    if series is not None and (batch or not files[0].is_dir()):
        raise ConfigError("--series picks one DICOM series of a folder", "pass the folder that holds the series as --labels")
    labels = []
    for f in files:
        volume = read_label_volume(f, mapping, series)
        span = check_field_of_view(volume, volume.array, model.fov_mm, what=f"label map '{f.name}'")
        if np.any(span > model.fov_mm[::-1]):
            reporter.log(f"label map '{f.name}': labelled structures span {' x '.join(f'{e:.0f}' for e in span)} mm, "
                         f"more than the model's {' x '.join(f'{v:.0f}' for v in model.fov_mm[::-1])} mm field of "
                         "view: synthesised in overlapping windows at the model's resolution")
        labels.append(volume)
    plan = _plan(job, files, samples, batch)
    for group in plan:
        for p in group:
            if batch:
                if p.parent.exists() and not p.parent.is_dir():
                    raise ConfigError(f"output '{p.parent}' is not a folder", "pass --out FOLDER")
            else:
                _check_output(p, files, _dicom_output(p, files, batch))
    preview = job.outputs.get("preview")
    if preview and not batch and not Path(preview).parent.is_dir():
        raise ConfigError(f"preview folder '{Path(preview).parent}' does not exist", "create it first")

    seed = job.seed if job.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    generator = torch.Generator(device=device).manual_seed(seed)
    reporter.log(f"synthesising {len(files) * samples} volume(s) with model '{model.card.name}'"
                 f"{' + ' + hr_model.card.name if hr_model else ''}: {settings.sampler}, {settings.steps} steps, "
                 f"guidance {settings.guidance:g}"
                 + (f" (high resolution: {hr_settings.sampler}, {hr_settings.steps} steps, guidance {hr_settings.guidance:g})"
                    if hr_settings else "") + f", seed {seed}, on {device}")
    results: list[tuple[Path, Volume]] = []
    record = SynthesisRecord()
    total = len(files) * samples
    for n, (volume, group) in enumerate(zip(labels, plan)):
        for k, path in enumerate(group):
            phase = "sampling" if total == 1 else f"sampling {n * samples + k + 1}/{total}"
            ct = synthesize(volume, model, settings, hr_model=hr_model, device=device, generator=generator,
                            callback=reporter.step_callback(phase), record=record, hr_settings=hr_settings)
            results.append((path, ct))

    provenance = {"model": model.card.name, "model_sha256": model.card.sha256,
                  "hr_model": hr_model.card.name if hr_model else None, "sampler": settings.sampler,
                  "steps": settings.steps, "guidance": settings.guidance, "seed": seed,
                  "guidance_meaning": "1 = conditional model alone, 0 = unconditional, >1 = stronger label adherence",
                  "network_evaluations_per_volume": record.network_evaluations // max(total, 1),
                  "stages": record.stages[: 1 + (hr_model is not None)]}
    outputs: dict[str, str] = {}
    for i, (path, ct) in enumerate(results):
        if batch:
            path.parent.mkdir(parents=True, exist_ok=True)
        if _dicom_output(path, files, batch):
            write_dicom_series(ct, path, reference=files[0], description=f"MedDiff synthetic CT ({model.card.name})")
        else:
            write_volume(ct, path)
        outputs["volume" if len(results) == 1 else f"volume_{i + 1}"] = str(path)
    if preview:
        if batch:
            Path(preview).mkdir(parents=True, exist_ok=True)
            for path, ct in results:
                stem, _ = split_extension(path.name)
                write_preview(Path(preview) / f"{stem}.png", ct, CT_ANGIO)
        else:
            write_preview(preview, [ct for _, ct in results], CT_ANGIO)
        outputs["preview"] = str(preview)
    reporter.log("settings: " + json.dumps(provenance))
    return outputs
