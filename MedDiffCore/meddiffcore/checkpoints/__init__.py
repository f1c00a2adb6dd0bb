"""Import the authors' published checkpoints as normal MedDiff models (safetensors + JSON card).

``meddiff models import-checkpoint --format wdm|cwdm|tpdm|ctp|mrnet`` reads the released files
with ``torch.load(weights_only=True)`` (nothing that would run code is accepted),
checks every key and shape against the configured network, renames the tensors to
MedDiff's networks and writes one model whose card records the source files'
sha256, the paper, the data conventions and the authors' sampler. A TPDM pair
(primary + auxiliary checkpoint) becomes one ``recon`` model; WDM and cWDM become
``wdm`` models; the CTP inpainting checkpoint a ``ctp`` model; the three MRNet
stages (64^2 generator, 64->128 and 128->256 super-resolution) one ``sr`` cascade.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError
from ..models import ModelFiles

#: --format -> module with ``RELEASES`` and ``import_files``.
FORMATS = {"wdm": "meddiffcore.checkpoints.wdm", "cwdm": "meddiffcore.checkpoints.wdm",
           "tpdm": "meddiffcore.checkpoints.tpdm", "ctp": "meddiffcore.checkpoints.ctp",
           "mrnet": "meddiffcore.checkpoints.mrnet"}


def variants(fmt: str) -> list[str]:
    """The released models of ``fmt`` (``--variant`` values)."""
    module = _module(fmt)
    releases = module.RELEASES[fmt] if fmt in module.RELEASES else module.RELEASES
    return list(releases)


def _module(fmt: str):
    if fmt not in FORMATS:
        raise ConfigError(f"unknown checkpoint format '{fmt}'", f"use one of {', '.join(FORMATS)}")
    return importlib.import_module(FORMATS[fmt])


def _guess_variant(fmt: str, paths: list[Path]) -> str:
    known = variants(fmt)
    module = _module(fmt)
    if hasattr(module, "guess_variant"):
        guess = module.guess_variant(paths)
        if guess is not None:
            return guess
    if len(known) == 1:
        return known[0]
    text = " ".join(str(p).lower() for p in paths)
    hits = [v for v in known if v in text]
    if len(hits) == 1:
        return hits[0]
    raise ConfigError(f"cannot tell which {fmt} model '{paths[0].name}' is", f"give --variant ({', '.join(known)})")


def import_checkpoint(fmt: str, paths: list[str | Path], *, variant: str | None = None, name: str | None = None,
                      out_dir: str | Path | None = None, network: Mapping[str, Any] | None = None,
                      replace: bool = False) -> ModelFiles:
    """Read the checkpoint file(s) of a released model and write it as a MedDiff model.

    Args:
        fmt: ``"wdm"``, ``"cwdm"``, ``"tpdm"``, ``"ctp"`` or ``"mrnet"``.
        paths: the file (WDM, cWDM, CTP), the primary then the auxiliary checkpoint (TPDM), or the base,
            64->128 and 128->256 checkpoints of an MRNet cascade (one file for the single-stage 256^2 model).
        variant: which release (``brats``/``lidc``; the cWDM target contrast; ``aapm``/``bmr``); guessed
            from the file names when they say it.
        name: the model's name (default: the release's, e.g. ``wdm-brats``).
        out_dir: where to write (default: the user's model folder, ``$MEDDIFF_HOME/models``).
        network: network fields that differ from the released configuration (a smaller test checkpoint).
        replace: overwrite a model of the same name.
    """
    from ..models import save_model_together, sha256_file, user_model_dir

    from ..errors import BadInputError

    module = _module(fmt)
    files = [Path(p).expanduser() for p in paths]
    for path in files:
        if not path.is_file():
            raise BadInputError(f"checkpoint '{path}' does not exist", "give the path of the file you downloaded")
    variant = variant or _guess_variant(fmt, files)
    if variant not in variants(fmt):
        raise ConfigError(f"unknown {fmt} variant '{variant}'", f"use one of {', '.join(variants(fmt))}")
    if name is not None and not _plain_name(name):
        raise ConfigError(f"model name '{name}' is not a plain name",
                          "use letters, digits, '-' and '_' only, starting with a letter or digit")
    source = {"source_files": [p.name for p in files], "source_sha256": [sha256_file(p) for p in files]}
    card, tensors = module.import_files(fmt, files, variant, name, dict(network or {}), source)
    return save_model_together(Path(out_dir) if out_dir else user_model_dir(), card, tensors, replace=replace)


def _plain_name(name: str) -> bool:
    return bool(name) and name[0].isalnum() and all(c.isalnum() or c in "-_" for c in name) and name.isascii()
