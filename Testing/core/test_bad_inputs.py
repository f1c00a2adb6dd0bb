"""The bad-input suite: every command refuses what it cannot use, the same way (README, "Exit codes").

One table, :data:`CASES`, of bad inputs as a user (or an attacker) would give them: broken, empty, wrong or
hostile files, sequences without real times, models that are not what their card says, malformed configs and
job files, option values out of range, outputs aimed at inputs. For every case the command must

* exit with the expected class (never INTERNAL: status 1 means a bug),
* print one message that names the problem (the case's words) and a fix (``fix:``),
* leave nothing behind: no output, no temporary file, no new folder,
* leave every input file byte for byte as it was.

Commands run in this process through ``meddiff``'s own ``main`` (the same code as the terminal); the
bundled demo models serve where a case needs a real one. ``python -m pytest -q Testing/core/test_bad_inputs.py``
prints how many cases there are.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from meddiffcore.cli import main as cli_main

USAGE, BAD_INPUT, BAD_CONFIG, MODEL, OUT_OF_MEMORY = 2, 3, 4, 5, 6


# ---- the inputs the cases use, written fresh into each test's folder

def _volume(array, path: Path, spacing=(1.0, 1.0, 1.0)) -> Path:
    from meddiffcore.io import Volume, write_volume

    write_volume(Volume.from_spacing(np.asarray(array), spacing), path)
    return path


def _labels() -> np.ndarray:
    labels = np.zeros((16, 16, 16), np.uint8)
    for value in range(1, 9):
        labels[2:14, 2:14, value] = value
    return labels


def _seq_nrrd(path: Path, extra: str = "", frames: int = 4) -> Path:
    """A 4D NRRD sequence of 8x8x2 frames; ``extra`` adds header lines (index values, units...)."""
    data = np.full((frames, 2, 8, 8), 40, np.int16)
    data[:, :, 2:6, 2:6] += np.arange(frames, dtype=np.int16)[:, None, None, None] * 10
    header = (f"NRRD0004\ntype: short\ndimension: 4\nspace: left-posterior-superior\nsizes: 8 8 2 {frames}\n"
              "space directions: (1,0,0) (0,1,0) (0,0,2) none\nkinds: domain domain domain list\n"
              "endian: little\nencoding: raw\n" + extra + "\n")
    path.write_bytes(header.encode() + np.ascontiguousarray(data).astype("<i2").tobytes())
    return path


def _tiny_network() -> dict:
    from meddiffcore.nets import UNetConfig

    return UNetConfig(spatial_dims=3, base_channels=8, channel_mult=(1,), num_res_blocks=1, norm_groups=4,
                      attention_levels=(), middle_attention=False).to_dict()


def _model_pair(folder: Path, *, weights: bytes | None = None, **card_fields) -> Path:
    """A tiny uncond model (card + weights, sha256 right) in ``folder``; ``card_fields``/``weights`` spoil it."""
    from safetensors.torch import save

    from meddiffcore.nets import UNet, UNetConfig

    folder.mkdir(parents=True, exist_ok=True)
    if weights is None:
        weights = save(UNet(UNetConfig.from_dict(_tiny_network())).state_dict())
    (folder / "tiny.safetensors").write_bytes(weights)
    card = {"name": "tiny", "task": "uncond", "network": _tiny_network(), "weights": "tiny.safetensors",
            "sha256": hashlib.sha256(weights).hexdigest(),
            "task_config": {"size": [8, 8, 8], "intensity_window": [-1000.0, 1000.0]}, **card_fields}
    (folder / "tiny.json").write_text(json.dumps(card))
    return folder / "tiny.json"


def _safetensors_with_header(change: Callable[[dict], dict], tail: bytes = b"") -> bytes:
    from safetensors.torch import save

    from meddiffcore.nets import UNet, UNetConfig

    good = save(UNet(UNetConfig.from_dict(_tiny_network())).state_dict())
    n = struct.unpack("<Q", good[:8])[0]
    header = change(json.loads(good[8:8 + n]))
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + good[8 + n:] + tail


def _shift_first(header: dict) -> dict:
    name = next(k for k in header if k != "__metadata__")
    begin, end = header[name]["data_offsets"]
    return {**header, name: {**header[name], "data_offsets": [begin + 4, end + 4]}}


def _write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _job(path: Path, **fields) -> Path:
    path.write_text(json.dumps(fields))
    return path


class Inputs:
    """Lazily written input files; every attribute access writes the file once and returns its path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, Path] = {}

    def __getattr__(self, name: str) -> str:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._made:
            self._made[name] = getattr(self, f"_make_{name}")(self.root)
        return str(self._made[name])

    def out(self, name: str) -> str:
        return str(self.root / name)

    # volumes and images
    _make_ct = staticmethod(lambda r: _volume(np.linspace(-1000, 1000, 16 * 32 * 32, dtype=np.float32)
                                              .reshape(16, 32, 32), r / "ct.nii.gz"))
    _make_ct_nan = staticmethod(lambda r: _volume(np.where(np.arange(16 * 32 * 32).reshape(16, 32, 32) == 5, np.nan,
                                                           0.0).astype(np.float32), r / "ct_nan.nii.gz"))
    _make_labels = staticmethod(lambda r: _volume(_labels(), r / "labels.nii.gz", (2.0, 2.0, 2.0)))
    _make_labels_huge = staticmethod(lambda r: _volume(np.where(_labels() == 3, 1e300, _labels()).astype(np.float64),
                                                       r / "labels_huge.nii.gz", (2.0, 2.0, 2.0)))
    _make_labels_fraction = staticmethod(lambda r: _volume(_labels() * 0.5, r / "labels_half.nii.gz", (2.0, 2.0, 2.0)))
    _make_labels_unknown = staticmethod(lambda r: _volume(np.where(_labels() == 3, 40, _labels()).astype(np.uint8),
                                                          r / "labels_40.nii.gz", (2.0, 2.0, 2.0)))
    _make_empty_file = staticmethod(lambda r: _write(r / "empty.nii.gz", b""))
    _make_text_as_nifti = staticmethod(lambda r: _write(r / "notes.nii.gz", "not an image"))
    _make_folder = staticmethod(lambda r: (r / "a_folder").mkdir() or r / "a_folder")  # mkdir returns None
    _make_png_garbage = staticmethod(lambda r: _write(r / "slice.png", b"\x89PNG\r\n\x1a\n garbage"))
    _make_slice_32 = staticmethod(lambda r: _volume(np.zeros((1, 24, 24), np.float32), r / "slice24.nii.gz"))
    _make_npy_pickle = staticmethod(lambda r: _write(r / "seq.npy", pickle.dumps({"a": 1})))

    # sequences
    _make_seq = staticmethod(lambda r: _seq_nrrd(r / "seq.seq.nrrd", "axis 3 index type:=numeric\n"
                                                 "axis 3 index values:=0 2 4 6\naxis 3 unit:=s\n"))
    _make_seq_no_times = staticmethod(lambda r: _seq_nrrd(r / "no_times.seq.nrrd"))
    _make_seq_text_times = staticmethod(lambda r: _seq_nrrd(r / "text_times.seq.nrrd", "axis 3 index type:=numeric\n"
                                                            "axis 3 index values:=start a b end\n"))
    _make_seq_frame_unit = staticmethod(lambda r: _seq_nrrd(r / "frames.seq.nrrd", "axis 3 index type:=numeric\n"
                                                            "axis 3 index values:=0 1 2 3\naxis 3 unit:=frame\n"))
    _make_seq_unsorted = staticmethod(lambda r: _seq_nrrd(r / "unsorted.seq.nrrd", "axis 3 index type:=numeric\n"
                                                          "axis 3 index values:=0 4 2 6\naxis 3 unit:=s\n"))
    _make_seq_gap = staticmethod(lambda r: _seq_nrrd(r / "gap.seq.nrrd", "axis 3 index type:=numeric\n"
                                                     "axis 3 index values:=0 2 40 42\naxis 3 unit:=s\n"))

    # models
    _make_model_ok = staticmethod(lambda r: _model_pair(r / "model_ok"))
    _make_model_escape_name = staticmethod(lambda r: _model_pair(r / "model_name", name="../../escaped"))
    _make_model_abs_name = staticmethod(lambda r: _model_pair(r / "model_abs", name=str(r / "abs")))
    _make_model_pickle = staticmethod(lambda r: _model_pair(r / "model_pickle", weights=pickle.dumps({"w": [1.0]})))
    _make_model_truncated = staticmethod(lambda r: _model_pair(r / "model_trunc",
                                                               weights=_safetensors_with_header(lambda h: h)[:-20]))
    _make_model_trailing = staticmethod(lambda r: _model_pair(r / "model_tail",
                                                              weights=_safetensors_with_header(lambda h: h, b"\0" * 8)))
    _make_model_offsets = staticmethod(lambda r: _model_pair(r / "model_offsets",
                                                             weights=_safetensors_with_header(_shift_first)))
    _make_model_unknown_task = staticmethod(lambda r: _model_pair(r / "model_task", task="teleport"))
    _make_model_wrong_network = staticmethod(
        lambda r: _model_pair(r / "model_net", network={**_tiny_network(), "base_channels": 16}))
    _make_model_bad_sha = staticmethod(lambda r: _model_pair(r / "model_sha", sha256="0" * 64))
    _make_model_card_not_json = staticmethod(
        lambda r: (_model_pair(r / "model_cardjson"), (r / "model_cardjson" / "tiny.json").write_text("{ nope"))[0])

    # configs and job files
    _make_job_not_json = staticmethod(lambda r: _write(r / "job.json", "{ not json"))
    _make_job_list = staticmethod(lambda r: _write(r / "job_list.json", "[1, 2]"))
    _make_job_unknown_key = staticmethod(lambda r: _job(r / "job_key.json", task="ctp.phantom", outputs={},
                                                        colour="blue"))
    _make_job_input_number = staticmethod(lambda r: _job(r / "job_number.json", task="recon.ct",
                                                         inputs={"volume": 5}, outputs={"volume": "o.nii.gz"}))
    _make_job_unknown_task = staticmethod(lambda r: _job(r / "job_task.json", task="ctp.teleport"))
    _make_train_unknown_key = staticmethod(
        lambda r: _write(r / "train.toml", 'task = "uncond"\nname = "x"\nwibble = 3\n'))
    _make_train_not_toml = staticmethod(lambda r: _write(r / "bad.toml", "= = ="))
    _make_mapping_bad = staticmethod(lambda r: _write(r / "map.json", '{"1": "spleen"}'))

    def job_out_is_in(self) -> str:
        return str(_job(self.root / "job_over.json", task="ctp.inpaint", inputs={"sequence": self.seq},
                        outputs={"sequence": self.seq}))

    def job_steps(self, value) -> str:
        return str(_job(self.root / f"job_steps_{abs(hash(repr(value)))}.json", task="ctp.inpaint",
                        inputs={"sequence": self.seq}, outputs={"sequence": self.out("filled.seq.nrrd")},
                        params={"steps": value}))

    def job_seed(self) -> str:
        return str(_job(self.root / "job_seed.json", task="ctp.phantom", outputs={"sequence": self.out("p.seq.nrrd")},
                        seed=10**30))

    def link_to(self, target: str, name: str, hard: bool = False) -> str:
        link = self.root / name
        (os.link if hard else os.symlink)(target, link)
        return str(link)


def _make_model_weights_outside(r: Path) -> Path:
    _model_pair(r / "model_outside_src")
    card = _model_pair(r / "model_outside")
    data = json.loads(card.read_text())
    data["weights"] = "../model_outside_src/tiny.safetensors"
    card.write_text(json.dumps(data))
    (r / "model_outside" / "tiny.safetensors").unlink()
    return card


Inputs._make_model_weights_outside = staticmethod(_make_model_weights_outside)


@dataclass(frozen=True)
class Case:
    kind: str  # files, sequences, models, configs, jobs, values, outputs
    argv: Callable[[Inputs], list[str]]
    status: int
    says: tuple[str, ...]  # words the message must contain (the problem)


CASES: dict[str, Case] = {
    # ---- files
    "synthesize: missing label map": Case("files", lambda i: ["synthesize", "--labels", i.out("nope.nii.gz"), "--out",
                                                              i.out("ct.nii.gz")], BAD_INPUT, ("nope.nii.gz",)),
    "synthesize: empty file": Case("files", lambda i: ["synthesize", "--labels", i.empty_file, "--out",
                                                       i.out("o.nii.gz")], BAD_INPUT, ("empty.nii.gz",)),
    "synthesize: text named .nii.gz": Case("files", lambda i: ["synthesize", "--labels", i.text_as_nifti, "--out",
                                                               i.out("o.nii.gz")], BAD_INPUT, ("notes.nii.gz",)),
    "synthesize: label 1e300": Case("files", lambda i: ["synthesize", "--labels", i.labels_huge, "--out",
                                                        i.out("o.nii.gz")], BAD_INPUT, ("1e+300", "too large")),
    "synthesize: fractional labels": Case("files", lambda i: ["synthesize", "--labels", i.labels_fraction, "--out",
                                                              i.out("o.nii.gz")], BAD_INPUT, ("non-integer", "0.5")),
    "synthesize: unknown label value": Case("files", lambda i: ["synthesize", "--labels", i.labels_unknown, "--out",
                                                                i.out("o.nii.gz")], BAD_INPUT, ("40",)),
    "synthesize: mapping to an unknown name": Case("configs", lambda i: [
        "synthesize", "--labels", i.labels, "--label-mapping", i.mapping_bad, "--out", i.out("o.nii.gz")],
        BAD_CONFIG, ("spleen",)),
    "upscale: unreadable PNG": Case("files", lambda i: ["upscale", "--input", i.png_garbage, "--out", i.out("o.png"),
                                                        "--model", "sr-cascade-demo"], BAD_INPUT, ("slice.png", "image")),
    "upscale: a folder as the image": Case("files", lambda i: ["upscale", "--input", i.folder, "--out",
                                                               i.out("o.nii.gz"), "--model", "sr-cascade-demo"],
                                           BAD_INPUT, ("a_folder",)),
    "upscale: a slice size no stage takes": Case("files", lambda i: ["upscale", "--input", i.slice_32, "--out",
                                                                     i.out("o.nii.gz"), "--model", "sr-cascade-demo"],
                                                 BAD_INPUT, ("24x24",)),
    "recon ct: NaN in the volume": Case("files", lambda i: ["recon", "ct", "--simulate-from", i.ct_nan, "--out",
                                                            i.out("r.nii.gz")], BAD_INPUT, ("NaN",)),
    "inpaint: a pickle named .npy": Case("files", lambda i: ["inpaint", "--sequence", i.npy_pickle, "--times", "2",
                                                             "--out", i.out("f.npy")], BAD_INPUT, ("seq.npy",)),
    # ---- sequences
    "inpaint: no frame times": Case("sequences", lambda i: ["inpaint", "--sequence", i.seq_no_times, "--out",
                                                            i.out("f.seq.nrrd")], BAD_INPUT,
                                    ("no frame index values", "--times")),
    "inpaint: times that are not numbers": Case("sequences", lambda i: [
        "inpaint", "--sequence", i.seq_text_times, "--out", i.out("f.seq.nrrd")], BAD_INPUT, ("not numbers", "'a'")),
    "inpaint: times in frames": Case("sequences", lambda i: ["inpaint", "--sequence", i.seq_frame_unit, "--out",
                                                             i.out("f.seq.nrrd")], BAD_INPUT, ("'frame'", "time unit")),
    "perfusion: no frame times": Case("sequences", lambda i: ["perfusion", i.seq_no_times, "--out-dir",
                                                              i.out("maps")], BAD_INPUT, ("no frame index values",)),
    "inpaint: unsorted times": Case("sequences", lambda i: ["inpaint", "--sequence", i.seq_unsorted, "--out",
                                                            i.out("f.seq.nrrd")], BAD_INPUT, ("not sorted",)),
    "inpaint: a gap longer than the model's": Case("sequences", lambda i: [
        "inpaint", "--sequence", i.seq_gap, "--out", i.out("f.seq.nrrd")], BAD_INPUT, ("38 s", "longer")),
    "inpaint: --times of the wrong count": Case("sequences", lambda i: [
        "inpaint", "--sequence", i.seq_no_times, "--times", "0,1,2", "--out", i.out("f.seq.nrrd")], BAD_INPUT,
        ("3 frame times", "4 frames")),
    "inpaint: --interval 1e-6 (millions of frames)": Case("sequences", lambda i: [
        "inpaint", "--sequence", i.seq, "--interval", "1e-6", "--out", i.out("f.seq.nrrd")], BAD_CONFIG,
        ("output frames", "interval")),
    "inpaint: bad frame out of range": Case("sequences", lambda i: [
        "inpaint", "--sequence", i.seq, "--bad-frames", "9", "--out", i.out("f.seq.nrrd")], BAD_INPUT,
        ("out of range",)),
    # ---- models
    **{f"models import: {what}": Case("models", lambda i, made=made: ["models", "import", getattr(i, made)], MODEL,
                                      (words,))
       for what, made, words in (
           ("name with ../", "model_escape_name", "not a plain name"),
           ("absolute name", "model_abs_name", "not a plain name"),
           ("weights outside the card's folder", "model_weights_outside", "outside the card's folder"),
           ("a pickle as weights", "model_pickle", "not a safetensors file"),
           ("truncated weights", "model_truncated", "truncated"),
           ("trailing bytes", "model_trailing", "bytes after its last tensor"),
           ("offsets with a gap", "model_offsets", "gap"),
           ("unknown task", "model_unknown_task", "unknown task 'teleport'"),
           ("weights of another network", "model_wrong_network", "has shape"),
           ("checksum mismatch", "model_bad_sha", "do not match"),
           ("card not JSON", "model_card_not_json", "cannot be read"))},
    "generate: a pickle as weights": Case("models", lambda i: ["generate", "--model", i.model_pickle, "--out",
                                                               i.out("g.nii.gz")], MODEL, ("not a safetensors file",)),
    "generate: a model of another task": Case("models", lambda i: ["generate", "--model", "ctca-demo", "--out",
                                                                   i.out("g.nii.gz")], MODEL, ("'ctca' model",)),
    "generate: no such model": Case("models", lambda i: ["generate", "--model", "no-such-model", "--out",
                                                         i.out("g.nii.gz")], MODEL, ("no-such-model",)),
    "upscale: a recon model": Case("models", lambda i: ["upscale", "--input", i.ct, "--out", i.out("u.nii.gz"),
                                                        "--model", "recon-ct-demo"], MODEL, ("'recon'",)),
    "inpaint: a CTCA model": Case("models", lambda i: ["inpaint", "--sequence", i.seq, "--model", "ctca-demo",
                                                       "--out", i.out("f.seq.nrrd")], MODEL, ("'ctca'",)),
    # ---- configs and job files
    "run: job file not JSON": Case("jobs", lambda i: ["run", i.job_not_json], BAD_CONFIG, ("not valid JSON",)),
    "run: job file a list": Case("jobs", lambda i: ["run", i.job_list], BAD_CONFIG, ("JSON object",)),
    "run: job file missing": Case("jobs", lambda i: ["run", i.out("none.json")], BAD_CONFIG, ("does not exist",)),
    "run: unknown job key": Case("jobs", lambda i: ["run", i.job_unknown_key], BAD_CONFIG, ("colour",)),
    "run: unknown job task": Case("jobs", lambda i: ["run", i.job_unknown_task], BAD_CONFIG, ("ctp.teleport",)),
    "run: job output onto its input": Case("jobs", lambda i: ["run", i.job_out_is_in()], BAD_CONFIG,
                                           ("is the input",)),
    "run: job steps 0": Case("jobs", lambda i: ["run", i.job_steps(0)], BAD_CONFIG, ("params.steps", "range")),
    "run: job steps as text": Case("jobs", lambda i: ["run", i.job_steps("many")], BAD_CONFIG,
                                   ("params.steps", "number")),
    "run: job input not a path": Case("jobs", lambda i: ["run", i.job_input_number], BAD_CONFIG,
                                      ("inputs.volume", "must be a path")),
    "run: job seed 10**30": Case("jobs", lambda i: ["run", i.job_seed()], BAD_CONFIG, ("seed", "range")),
    "train: unknown config key": Case("configs", lambda i: ["train", i.train_unknown_key], BAD_CONFIG, ("wibble",)),
    "train: config not TOML": Case("configs", lambda i: ["train", i.train_not_toml], BAD_CONFIG, ("bad.toml",)),
    "train: config missing": Case("configs", lambda i: ["train", i.out("none.toml")], BAD_CONFIG, ("none.toml",)),
    # ---- CLI values
    "synthesize --steps 0": Case("values", lambda i: ["synthesize", "--labels", i.labels, "--out", i.out("o.nii.gz"),
                                                      "--steps", "0"], BAD_CONFIG, ("--steps is 0", "range")),
    "synthesize --steps 5000000": Case("values", lambda i: ["synthesize", "--labels", i.labels, "--out",
                                                            i.out("o.nii.gz"), "--steps", "5000000"], BAD_CONFIG,
                                       ("--steps is 5000000",)),
    "synthesize --seed 10**30": Case("values", lambda i: ["synthesize", "--labels", i.labels, "--out",
                                                          i.out("o.nii.gz"), "--seed", str(10**30)], BAD_CONFIG,
                                     ("--seed", "range")),
    "synthesize --seed -1": Case("values", lambda i: ["synthesize", "--labels", i.labels, "--out", i.out("o.nii.gz"),
                                                      "--seed", "-1"], BAD_CONFIG, ("--seed is -1",)),
    "synthesize --guidance nan": Case("values", lambda i: ["synthesize", "--labels", i.labels, "--out",
                                                           i.out("o.nii.gz"), "--guidance", "nan"], BAD_CONFIG,
                                      ("--guidance", "finite")),
    "synthesize --samples 0": Case("values", lambda i: ["synthesize", "--labels", i.labels, "--out",
                                                        i.out("o.nii.gz"), "--samples", "0"], BAD_CONFIG,
                                   ("--samples is 0",)),
    "synthesize --sampler unknown": Case("values", lambda i: ["synthesize", "--labels", i.labels, "--out",
                                                              i.out("o.nii.gz"), "--sampler", "warp"], BAD_CONFIG,
                                         ("warp",)),
    "synthesize --steps abc": Case("values", lambda i: ["synthesize", "--labels", i.labels, "--out", i.out("o.nii.gz"),
                                                        "--steps", "abc"], USAGE, ("--steps",)),
    "inpaint --interval 0": Case("values", lambda i: ["inpaint", "--sequence", i.seq, "--interval", "0", "--out",
                                                      i.out("f.seq.nrrd")], BAD_CONFIG, ("--interval is 0",)),
    "inpaint --batch-size 0": Case("values", lambda i: ["inpaint", "--sequence", i.seq, "--batch-size", "0", "--out",
                                                        i.out("f.seq.nrrd")], BAD_CONFIG, ("--batch-size is 0",)),
    "inpaint --estimate bogus": Case("values", lambda i: ["inpaint", "--sequence", i.seq, "--estimate", "bogus",
                                                          "--out", i.out("f.seq.nrrd")], USAGE, ("--estimate",)),
    "recon ct --views 0": Case("values", lambda i: ["recon", "ct", "--simulate-from", i.ct, "--views", "0", "--out",
                                                    i.out("r.nii.gz")], BAD_CONFIG, ("--views is 0",)),
    "recon mri --acceleration 1000": Case("values", lambda i: ["recon", "mri", "--simulate-from", i.ct,
                                                               "--acceleration", "1000", "--out", i.out("r.nii.gz")],
                                          BAD_CONFIG, ("--acceleration is 1000",)),
    "recon ct --lambda -1": Case("values", lambda i: ["recon", "ct", "--simulate-from", i.ct, "--lambda", "-1",
                                                      "--out", i.out("r.nii.gz")], BAD_CONFIG, ("--lambda is -1",)),
    "perfusion --svd-threshold 2": Case("values", lambda i: ["perfusion", i.seq, "--svd-threshold", "2", "--out-dir",
                                                             i.out("maps")], BAD_CONFIG, ("--svd-threshold is 2",)),
    "generate --spacing 0 0 0": Case("values", lambda i: ["generate", "--model", "wdm-demo", "--spacing", "0", "0",
                                                          "0", "--out", i.out("g.nii.gz")], BAD_CONFIG,
                                     ("--spacing is 0",)),
    "phantom ctca --shape 0 64 64": Case("values", lambda i: ["phantom", "ctca", "--out", i.out("p.nii.gz"), "--shape",
                                                              "0", "64", "64"], BAD_CONFIG, ("--shape is 0",)),
    "phantom ct --size 100000": Case("values", lambda i: ["phantom", "ct", "--out", i.out("p.nii.gz"), "--size",
                                                          "100000"], BAD_CONFIG, ("--size is 100000",)),
    "phantom ctp --frames 1": Case("values", lambda i: ["phantom", "ctp", "--out", i.out("p.seq.nrrd"), "--frames",
                                                        "1"], BAD_CONFIG, ("--frames is 1",)),
    "evaluate ctca --phantoms 0": Case("values", lambda i: ["evaluate", "ctca", "--phantoms", "0"], BAD_CONFIG,
                                       ("--phantoms is 0",)),
    "upscale without --model": Case("values", lambda i: ["upscale", "--input", i.ct, "--out", i.out("u.nii.gz")],
                                    USAGE, ("--model",)),
    # ---- outputs onto inputs
    "upscale --out = --input": Case("outputs", lambda i: ["upscale", "--input", i.ct, "--out", i.ct, "--model",
                                                          "sr-cascade-demo"], BAD_CONFIG, ("is the input",)),
    "recon ct --out = --simulate-from": Case("outputs", lambda i: ["recon", "ct", "--simulate-from", i.ct, "--out",
                                                                   i.ct], BAD_CONFIG, ("is the input",)),
    "recon ct --baseline-out = --out": Case("outputs", lambda i: ["recon", "ct", "--simulate-from", i.ct, "--out",
                                                                  i.out("r.nii.gz"), "--baseline-out",
                                                                  i.out("r.nii.gz")], BAD_CONFIG, ("same path",)),
    "synthesize --out = --labels": Case("outputs", lambda i: ["synthesize", "--labels", i.labels, "--out", i.labels],
                                        BAD_CONFIG, ("is the input",)),
    "synthesize --preview = --label-mapping": Case("outputs", lambda i: [
        "synthesize", "--labels", i.labels, "--label-mapping", i.mapping_bad, "--preview", i.mapping_bad, "--out",
        i.out("o.nii.gz")], BAD_CONFIG, ("is the input",)),
    "inpaint --out = --sequence": Case("outputs", lambda i: ["inpaint", "--sequence", i.seq, "--out", i.seq],
                                       BAD_CONFIG, ("is the input",)),
    "inpaint --out through a symlink": Case("outputs", lambda i: ["inpaint", "--sequence", i.seq, "--out",
                                                                  i.link_to(i.seq, "link.seq.nrrd")], BAD_CONFIG,
                                            ("is the input",)),
    "upscale --out is a hard link of --input": Case("outputs", lambda i: [
        "upscale", "--input", i.ct, "--out", i.link_to(i.ct, "hard.nii.gz", hard=True), "--model", "sr-cascade-demo"],
        BAD_CONFIG, ("is the input",)),
    "synthesize --out onto the model's card": Case("outputs", lambda i: [
        "synthesize", "--labels", i.labels, "--model", i.model_ok, "--out", i.model_ok], BAD_CONFIG,
        ("is the input",)),
    "generate --out onto the model's weights": Case("outputs", lambda i: [
        "generate", "--model", i.model_ok, "--out", str(Path(i.model_ok).with_suffix(".safetensors"))], BAD_CONFIG,
        ("is the input",)),
    "inpaint --out in a missing folder": Case("outputs", lambda i: ["inpaint", "--sequence", i.seq, "--out",
                                                                    i.out("no/such/dir/f.seq.nrrd")], BAD_INPUT,
                                              ("no/such/dir", "does not exist")),
}


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: file bytes (None for a folder or link target listing)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = path.read_bytes() if path.is_file() else None
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_cleanly(name, tmp_path, monkeypatch, capsys):
    case = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("MEDDIFF_HOME", str(work / "meddiff_home"))
    monkeypatch.chdir(work)
    inputs = Inputs(work)
    argv = case.argv(inputs)
    before = _snapshot(work)
    try:
        status = cli_main([*argv, "--progress", "none"] if _takes_progress(argv) else argv)
    except SystemExit as exit_:  # argparse refuses a malformed command line itself (usage, exit 2)
        status = exit_.code
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert status == case.status, f"{name}: exit {status}, expected {case.status}\n{text}"
    for words in case.says:
        assert words.lower() in text.lower(), f"{name}: the message does not say {words!r}:\n{text}"
    if case.status != USAGE:
        assert "error:" in text and "fix:" in text, f"{name}: no problem-and-fix message:\n{text}"
    after = _snapshot(work)
    assert sorted(set(after) - set(before)) == [], f"{name}: left {sorted(set(after) - set(before))}"
    changed = [p for p in before if before[p] != after.get(p)]
    assert changed == [], f"{name}: changed or removed {changed}"


def _takes_progress(argv: list[str]) -> bool:
    from meddiffcore.cli import build_parser

    return "--progress" in _parser_options(build_parser(), argv)


def _parser_options(parser, argv):
    import argparse

    for token in argv:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or token not in sub.choices:
            break
        parser = sub.choices[token]
    return {s for a in parser._actions for s in a.option_strings}


def test_every_kind_of_input_and_every_command_is_covered():
    assert {case.kind for case in CASES.values()} == {"files", "sequences", "models", "configs", "jobs", "values",
                                                      "outputs"}
    covered = {name.split()[0].rstrip(":") for name in CASES}  # each case is named after its command
    assert {"synthesize", "inpaint", "perfusion", "upscale", "generate", "recon", "models", "run", "train",
            "phantom", "evaluate"} <= covered


def test_readme_states_the_number_of_cases():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert f"holds {len(CASES)} cases" in readme and f'"{len(CASES) + 2} tests collected"' in readme
