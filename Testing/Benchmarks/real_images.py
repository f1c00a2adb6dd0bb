"""Bundled models on real images that ship in packages (not phantoms): where each wins or loses to its baseline.

SR cascade (``meddiff upscale``, the same job the CLI runs): each image (pydicom's CT slice in HU and MR
slice in scanner units, nibabel's EPI slice, nilearn's MNI152 T1 slice) at 64 x 64 is the truth; its 2x area
downsampling (32 x 32) is upscaled by the model's default stages and by bicubic interpolation; PSNR and SSIM
in the image's own units (data range: the truth's max - min). ``--no-mapping`` adds the figures of the same
model with its card's intensity mapping removed (the input squeezed into the model's window as it was).

    OMP_NUM_THREADS=1 python Testing/Benchmarks/real_images.py [--steps 50] [--seed 0] [--no-mapping]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tasks"))


def upscale(model: str, low: np.ndarray, work: Path, steps: int | None, seed: int, env_home: Path | None = None):
    """Run the ``sr.upscale`` job on one 2D image; the (2H, 2W) result in the input's units, and the warnings."""
    import os

    from meddiffcore.io import Volume, read_volume, write_volume
    from meddiffcore.jobs import Job, run_job
    from meddiffcore.progress import Reporter

    class Collect(Reporter):
        def __init__(self):
            super().__init__()
            self.events = []

        def emit(self, event):
            self.events.append(event)

    src, out = work / "low.nii.gz", work / "up.nii.gz"
    out.unlink(missing_ok=True)
    write_volume(Volume.from_spacing(low[None], spacing_mm=(2.0, 2.0, 2.0)), src)
    old = os.environ.get("MEDDIFF_HOME")
    if env_home is not None:
        os.environ["MEDDIFF_HOME"] = str(env_home)
    try:
        reporter = Collect()
        job = Job(task="sr.upscale", inputs={"image": str(src)}, outputs={"volume": str(out)}, model=model,
                  params={"steps": steps} if steps else {}, device="cpu", seed=seed)
        status = run_job(job, reporter)
    finally:
        if env_home is not None:
            if old is None:
                os.environ.pop("MEDDIFF_HOME", None)
            else:
                os.environ["MEDDIFF_HOME"] = old
    if status != 0:
        raise SystemExit(f"upscale failed: {reporter.events[-1]}")
    warnings = [e["message"] for e in reporter.events if e.get("event") == "log" and e.get("level") == "warning"]
    return read_volume(out).array[0], warnings


def unmapped_home(model: str, folder: Path) -> Path:
    """A MEDDIFF_HOME holding ``model`` with the intensity mapping taken out of its card."""
    from meddiffcore.models import ModelCard, find_model

    files = find_model(model)
    card = ModelCard.from_json_file(files.card_path)
    card.task_config = {k: v for k, v in card.task_config.items() if k != "intensity"}
    (folder / "models").mkdir(parents=True)
    shutil.copy(files.weights_path, folder / "models" / files.weights_path.name)
    (folder / "models" / files.card_path.name).write_text(card.to_json(), encoding="utf-8")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="sr-cascade-demo")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-mapping", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch

    from meddiffcore.metrics import psnr, ssim
    from meddiffcore.tasks.sr.resample import upsample_interpolate
    from real_images import area_down, real_images

    torch.set_num_threads(1)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        home = unmapped_home(args.model, work / "home") if args.no_mapping else None
        for name, image in real_images().items():
            truth = area_down(image, image.shape[0] // 64) if image.shape[0] > 64 else image
            low = area_down(truth, 2)
            rng = float(truth.max() - truth.min())
            up, warnings = upscale(args.model, low, work, args.steps, args.seed)
            bicubic = upsample_interpolate(low[None], truth.shape[0], "bicubic")[0]
            row = {"psnr_model": psnr(truth, up, rng), "ssim_model": ssim(truth, up, rng),
                   "psnr_bicubic": psnr(truth, bicubic, rng), "ssim_bicubic": ssim(truth, bicubic, rng),
                   "mean_truth": float(truth.mean()), "mean_model": float(up.mean()), "warnings": warnings}
            if home is not None:
                raw, _ = upscale(args.model, low, work, args.steps, args.seed, env_home=home)
                row["psnr_without_mapping"] = psnr(truth, raw, rng)
                row["ssim_without_mapping"] = ssim(truth, raw, rng)
            rows[name] = row
            extra = (f"  without mapping {row['psnr_without_mapping']:5.1f} dB / {row['ssim_without_mapping']:.3f}"
                     if home is not None else "")
            print(f"{name:<34} model {row['psnr_model']:5.1f} dB / SSIM {row['ssim_model']:.3f}   bicubic "
                  f"{row['psnr_bicubic']:5.1f} dB / {row['ssim_bicubic']:.3f}   mean {row['mean_model']:8.1f} "
                  f"(truth {row['mean_truth']:8.1f}){extra}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
