"""``meddiff models import-checkpoint``: the authors' released WDM, cWDM, TPDM, CTP and MRNet files as MedDiff models.

Added to the ``models`` command by :mod:`meddiffcore.cli.core`; nothing heavy is imported here.
"""

from __future__ import annotations

import argparse

from ..checkpoints import FORMATS
from .common import parse_params

EPILOG = """examples:
  meddiff models import-checkpoint --format wdm brats_unet_128_1200k.pt
  meddiff models import-checkpoint --format cwdm --variant t1c CWDM_T1C_FILE.pt
  meddiff models import-checkpoint --format tpdm --variant aapm AAPM_256_CUBE_SCLIP_XY/checkpoint.pth AAPM_256_CUBE_SCLIP_YZ/checkpoint.pth
  meddiff models import-checkpoint --format ctp model-600.pt
  meddiff models import-checkpoint --format mrnet --variant swin swinddpm64RAW_checkpoint.pth cascadedddpm64200epochs_checkpoint.pth "cascadedddpm128(225epoch)_checkpoint.pth"

ctp: the CT perfusion inpainting trainer's model-<n>.pt (its EMA weights are imported) -> ctp-bae2024, run with
  meddiff inpaint (frames larger than 192 x 192 in windows; --sampler authors for their 1500 steps).
mrnet: the three stage files of the knee-MRI cascade, base then 64->128 then 128->256 (swin | noswin), or the one
  256 px file (swin256) -> sr-mrnet..., run with meddiff generate / meddiff upscale.

Files are read with torch.load(weights_only=True): a file that would need to run code is refused.
Exit codes: 0 imported, 3 a file is missing, 4 bad option, 5 the file is unsafe, unreadable or does not
fit the network (the first mismatching keys are named); nothing is written on error."""


def add_import_checkpoint(models_sub) -> None:
    p = models_sub.add_parser(
        "import-checkpoint", help="convert an author's released checkpoint (WDM, cWDM, TPDM, CTP, MRNet) into a MedDiff model",
        description="Read a released checkpoint safely, check every key and shape against the authors' network, "
                    "and write NAME.safetensors + NAME.json (the card records the source sha256, the paper, the "
                    "data conventions and the authors' sampler).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="FILE",
                   help="the .pt file (WDM, cWDM, CTP), the primary then the auxiliary checkpoint.pth (TPDM), or "
                        "the MRNet stage files in cascade order")
    p.add_argument("--format", required=True, choices=list(FORMATS), dest="fmt")
    p.add_argument("--variant", default=None,
                   help="wdm: brats | lidc; cwdm: the synthesised contrast t1n | t1c | t2w | t2f; tpdm: aapm | bmr; "
                        "ctp: bae2024; mrnet: swin | noswin | swin256 (guessed from the file names when they say it)")
    p.add_argument("--name", default=None, help="model name (default: wdm-brats, cwdm-t1c, tpdm-aapm, ctp-bae2024, sr-mrnet...)")
    p.add_argument("--out-dir", default=None, help="folder to write to (default: $MEDDIFF_HOME/models)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a network field that differs from the released configuration (repeatable)")
    p.add_argument("--replace", action="store_true", help="overwrite a model of the same name")
    p.set_defaults(handler=_import_checkpoint)


def _import_checkpoint(args: argparse.Namespace) -> int:
    from ..checkpoints import import_checkpoint
    from ..errors import MedDiffError
    from .core import _fail

    try:
        files = import_checkpoint(args.fmt, args.paths, variant=args.variant, name=args.name, out_dir=args.out_dir,
                                  network=parse_params(args.set), replace=args.replace)
    except MedDiffError as error:
        return _fail(error)
    print(f"imported {files.card_path.stem} into {files.card_path.parent}")
    return 0
