"""Reconstruction commands: ``meddiff recon ct|mri|zsr``, ``meddiff phantom ct|mri``, ``meddiff evaluate recon``.

Exit codes (see the README): 0 done, 2 usage, 3 bad input (angles that do not
match the sinogram, a mask of the wrong shape, NaNs, a factor that does not
divide the slices, a volume too small for the prior), 4 bad parameter, 5 model
problem, 130 cancelled. A failed job writes no output.
"""

from __future__ import annotations

import argparse

from .common import add_job_options, execute


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="reconstructed volume (.nii.gz, .nrrd, .mha)")
    p.add_argument("--baseline-out", default=None, help="also write the classical baseline (FBP / zero-filled / cubic)")
    p.add_argument("--iterative-out", default=None,
                   help="also write the iterative baseline (CT: TV-regularised least squares; MRI: TV compressed sensing)")
    p.add_argument("--mode", choices=["tpdm", "fast"], default="fast",
                   help="tpdm: the seed's predictor-corrector + DPS sampler (thousands of network passes); "
                        "fast: DDS-style few steps with conjugate-gradient data consistency (default)")
    p.add_argument("--steps", type=int, default=None, help="noise levels (default: the model card's)")
    p.add_argument("--K", type=float, default=None,
                   help="prior alternation: integer K = K-1 primary steps then 1 auxiliary; fractional K = primary with "
                        "probability 1-1/K (defaults: tpdm 2.7 as the seed, fast 2)")
    p.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="DPS weight on primary steps (tpdm mode), in units of 1/||A^T A|| (default 1); for an "
                        "imported TPDM model the authors' raw weight (default: theirs for the views, factor or "
                        "acceleration)")
    p.add_argument("--cg-iters", type=int, default=None, help="CG data-consistency iterations per step (fast mode, default 5)")
    p.add_argument("--chunk", type=int, default=None, help="at most this many slices per network call (default: as many as fit "
                   "about 1 GiB of network memory per call: 4 slices of 512x512 for the bundled priors)")
    add_job_options(p)


def _params(args, extra: dict) -> dict:
    params = dict(extra)
    for key, name in (("mode", "mode"), ("steps", "steps"), ("K", "K"), ("lam", "lambda"), ("cg_iters", "cg_iters"),
                      ("chunk", "chunk")):
        value = getattr(args, key, None)
        if value is not None:
            params[name] = value
    return params


def register(subparsers, groups) -> None:
    rec = subparsers.add_parser("recon", help="3D reconstruction with two perpendicular 2D diffusion priors (TPDM)")
    sub = rec.add_subparsers(dest="recon_kind", metavar="PROBLEM", required=True)

    ct = sub.add_parser("ct", help="sparse-view parallel-beam CT",
                        description="Reconstruct from a sinogram volume (z = slice, y = angle, x = detector bin; line "
                                    "integrals of HU+1000 in pixel units) and its angles, or simulate N views from a CT volume.")
    ct.add_argument("--sinogram", default=None, help="sinogram volume file")
    ct.add_argument("--angles", default=None, help="angles in degrees, one per sinogram row (text or .npy)")
    ct.add_argument("--simulate-from", default=None, metavar="VOLUME", help="CT volume (HU) to project")
    ct.add_argument("--views", type=int, default=16, help="views over 180 degrees when simulating")
    ct.add_argument("--filter", default="ramp", help="FBP filter of the baseline: ramp, shepp-logan, hann, cosine")
    _common(ct)
    ct.set_defaults(handler=_ct)

    mri = sub.add_parser("mri", help="compressed-sensing MRI (undersampled Cartesian k-space)")
    mri.add_argument("--kspace", default=None, help="complex k-space, (z, y, x) .npy, centred, orthonormal FFT of axial slices")
    mri.add_argument("--mask", default=None, help="(y, x) sampling mask (.npy or volume file)")
    mri.add_argument("--geometry", default=None, help="reference volume giving the output grid (default 1 mm)")
    mri.add_argument("--simulate-from", default=None, metavar="VOLUME", help="MRI volume to undersample")
    mri.add_argument("--acceleration", type=float, default=8.0, help="acceleration when simulating")
    mri.add_argument("--mask-kind", choices=["uniform", "equispaced", "poisson"], default="uniform")
    _common(mri)
    mri.set_defaults(handler=_mri)

    zsr = sub.add_parser("zsr", help="MRI z-axis super-resolution (thick slices -> thin slices)")
    zsr.add_argument("--volume", required=True, help="thick-slice volume (with --simulate: a thin volume to degrade first)")
    zsr.add_argument("--factor", type=int, default=4, help="thin slices per thick slice")
    zsr.add_argument("--simulate", action="store_true", help="average the input's slices by --factor first (evaluation)")
    _common(zsr)
    zsr.set_defaults(handler=_zsr)

    for modality, kinds in (("ct", "ellipsoid, organ"), ("mri", "brain")):
        ph = groups["phantom"].add_parser(modality, help=f"3D {modality.upper()} phantom for the recon task ({kinds})")
        ph.add_argument("--out", required=True)
        ph.add_argument("--kind", default=None, help=f"phantom kind: {kinds}")
        ph.add_argument("--size", type=int, default=64, help="cube edge in voxels")
        ph.add_argument("--spacing", type=float, default=1.0, help="isotropic voxel size in mm")
        ph.add_argument("--seed", type=int, default=0)
        ph.add_argument("--progress", choices=["bar", "json", "none"], default="bar")
        ph.add_argument("--save-job", default=None)
        ph.set_defaults(handler=_phantom, modality=modality)

    ev = groups["evaluate"].add_parser("recon", help="PSNR/SSIM of the recon priors against FBP, zero-filled, cubic and iterative (TV) "
                                                    "baselines, in full range and in the clinical window")
    ev.add_argument("--model", default=None, help="CT model (default recon-ct-demo)")
    ev.add_argument("--mri-model", default=None, help="MRI model (default recon-mri-demo)")
    ev.add_argument("--tasks", default="ct,mri,zsr", help="comma-separated subset of ct, mri, zsr")
    ev.add_argument("--phantoms", type=int, default=2, help="held-out phantoms per setting (seeds 90000...)")
    ev.add_argument("--size", type=int, default=32, help="phantom cube edge")
    ev.add_argument("--modes", default="fast", help="comma-separated: fast, tpdm")
    ev.add_argument("--steps", type=int, default=None, help="fast-mode steps (default: the model card's)")
    ev.add_argument("--tpdm-steps", type=int, default=None, help="tpdm-mode steps (default 1000)")
    ev.add_argument("--views", default="8,16,32")
    ev.add_argument("--accelerations", default="4,8")
    ev.add_argument("--factors", default="2,4")
    ev.add_argument("--mni", action="store_true", help="also evaluate the MRI tasks on nilearn's MNI152 T1 template")
    ev.add_argument("--real-ct", action="store_true", help="also evaluate CT on pydicom's 512^2 head CT slice (resampled to 2 x --size, 16 slices)")
    ev.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ev.add_argument("--update-card", action="store_true", help="store the figures in the models' cards (metrics.evaluation)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--device", default="auto")
    ev.set_defaults(handler=_evaluate)


def _ct(args) -> int:
    from ..jobs import Job

    if args.simulate_from:
        inputs = {"volume": args.simulate_from}
    else:
        if not (args.sinogram and args.angles):
            return _usage("recon ct needs --sinogram and --angles, or --simulate-from VOLUME")
        inputs = {"sinogram": args.sinogram, "angles": args.angles}
    outputs = _outputs(args)
    job = Job(task="recon.ct", inputs=inputs, outputs=outputs, model=args.model,
              params=_params(args, {"views": args.views, "filter": args.filter}), device=args.device, seed=args.seed)
    return execute(job, args)


def _mri(args) -> int:
    from ..jobs import Job

    if args.simulate_from:
        inputs = {"volume": args.simulate_from}
    else:
        if not (args.kspace and args.mask):
            return _usage("recon mri needs --kspace and --mask, or --simulate-from VOLUME")
        inputs = {"kspace": args.kspace, "mask": args.mask, **({"geometry": args.geometry} if args.geometry else {})}
    outputs = _outputs(args)
    job = Job(task="recon.mri", inputs=inputs, outputs=outputs, model=args.model,
              params=_params(args, {"acceleration": args.acceleration, "mask_kind": args.mask_kind}),
              device=args.device, seed=args.seed)
    return execute(job, args)


def _zsr(args) -> int:
    from ..jobs import Job

    outputs = _outputs(args)
    job = Job(task="recon.zsr", inputs={"volume": args.volume}, outputs=outputs, model=args.model,
              params=_params(args, {"factor": args.factor, "simulate": bool(args.simulate)}), device=args.device,
              seed=args.seed)
    return execute(job, args)


def _phantom(args) -> int:
    from ..jobs import Job

    params = {"modality": args.modality, "size": args.size, "spacing": args.spacing}
    if args.kind:
        params["kind"] = args.kind
    job = Job(task="recon.phantom", outputs={"volume": args.out}, params=params, device="cpu", seed=args.seed)
    return execute(job, args)


def _outputs(args) -> dict:
    return {"volume": args.out, **({"baseline": args.baseline_out} if args.baseline_out else {}),
            **({"iterative": args.iterative_out} if getattr(args, "iterative_out", None) else {})}


def _usage(message: str) -> int:
    import sys

    print(f"error: {message}", file=sys.stderr)
    return 2


def _evaluate(args) -> int:
    import sys

    from ..errors import MedDiffError

    try:
        from ..tasks.recon.evaluate import main_from_args

        return main_from_args(args)
    except MedDiffError as error:
        print(f"error: {error.message}", file=sys.stderr)
        if error.hint:
            print(f"  fix: {error.hint}", file=sys.stderr)
        return error.exit_status
