"""CTP Temporal Inpaint speed: fill a 60 s sequence sampled every 4 s to 1 s, against the seed's sampling.

Ours: every missing frame of every slab in batches, as the posterior mean (one
network evaluation per batch, the demo model's default) and as a sample with
``--steps`` steps of one sampler (default: the model card's, DPM-Solver++(2M)
20 steps). The seed: each
missing frame sampled on its own (batch 1) with 1500 ancestral steps. The seed's
time is measured on ``--seed-calls`` network calls and extrapolated to
``missing x 1500`` calls (running it in full takes hours on a CPU); pass
``--seed-calls 0`` to skip it.

    OMP_NUM_THREADS=1 python Testing/Benchmarks/ctp.py --size 64            # CPU, full run
    python Testing/Benchmarks/ctp.py --size 192 --device cuda               # the issue's size on a GPU

Timing is independent of the weights: without the bundled ``ctp-demo`` model
(``--model``), a random-weight network of the demo config is used.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def _model(ref: str | None, device: torch.device):
    from meddiffcore.errors import ModelError
    from meddiffcore.tasks.ctp.model import load_for_inference

    try:
        return load_for_inference(ref or "ctp-demo", device), "ctp-demo" if not ref else ref
    except ModelError:
        import dataclasses
        from pathlib import Path

        from meddiffcore.config import read_config_file
        from meddiffcore.nets import UNetConfig
        from meddiffcore.tasks.ctp.config import CTPConfig, CTPDiffusionConfig
        from meddiffcore.tasks.ctp.model import LoadedModel
        from meddiffcore.tasks.ctp.train import TASK

        import meddiffcore

        toml = Path(meddiffcore.__file__).parent / "configs" / "ctp-demo.toml"
        cfg = CTPConfig(network=UNetConfig.from_dict(read_config_file(toml)["network"]))
        card = TASK.model_card(cfg)
        tc = card.task_config
        net = TASK.build_network(cfg).to(device).eval()
        return LoadedModel(dataclasses.replace(card, name="random"), net, CTPDiffusionConfig(), tc["window_level_hu"],
                           tc["window_width_hu"], tc["slab_slices"], tc["max_gap_s"]), "random weights (demo config)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64, help="in-plane size (the issue: 192)")
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--duration", type=int, default=60, help="sequence length in s (frames at 0..duration)")
    ap.add_argument("--every", type=int, default=4, help="sparse sampling interval in s")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--sampler", default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed-calls", type=int, default=5, help="network calls timed for the seed's extrapolation")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default=None)
    args = ap.parse_args()

    from meddiffcore.devices import resolve_device
    from meddiffcore.tasks.ctp.inpaint import inpaint_frames
    from meddiffcore.tasks.ctp.model import denoiser_for
    from meddiffcore.tasks.ctp.phantom import make_ctp_phantom
    from meddiffcore.tasks.ctp.plan import context_vector, make_plan

    device = resolve_device(args.device)
    model, which = _model(args.model, device)
    steps = args.steps or model.diffusion.sampling_steps
    sampler = args.sampler or model.diffusion.sampler
    ph = make_ctp_phantom(0, slices=args.slices, size=args.size, frames=args.duration + 1)
    known = list(range(0, args.duration + 1, args.every))
    times = ph.sequence.times_s[known]
    hu = ph.sequence.array[known]
    plan = make_plan(times, interval_s=1.0, max_gap_s=model.max_gap_s)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    print(f"device {device} ({torch.get_num_threads()} CPU threads), model {which}, sequence {args.duration} s "
          f"{args.slices}x{args.size}x{args.size}, known every {args.every} s: {len(known)} known, {plan.n_missing} missing")
    gen = torch.Generator(device=device).manual_seed(0)
    # warm-up (kernel selection, allocator) on one small batch
    inpaint_frames(hu[:2], times[:2], make_plan(times[:2], max_gap_s=model.max_gap_s), model, steps=1,
                   sampler=sampler, device=device, generator=gen, batch_size=1)
    sync()
    ours = {}
    for estimate in ("mean", "sample"):
        t0 = time.perf_counter()
        _, stats = inpaint_frames(hu, times, plan, model, steps=steps, sampler=sampler, device=device, generator=gen,
                                  estimate=estimate, batch_size=args.batch_size)
        sync()
        ours[estimate] = (time.perf_counter() - t0, stats["network_evaluations"])
        how = "posterior mean" if estimate == "mean" else f"{sampler} {steps} steps"
        print(f"ours, {how}, batch {args.batch_size}: {ours[estimate][0]:.1f} s, {stats['network_evaluations']} batched "
              f"network calls ({stats['items']} frame-slab items x {stats['steps']} steps)")

    if args.seed_calls > 0:
        g = plan.targets[0]
        x = torch.randn(1, 1, args.slices, args.size, args.size, device=device)
        from meddiffcore.tasks.ctp.config import hu_to_model

        cond = {"concat": torch.from_numpy(np.stack([hu_to_model(hu[g.left]), hu_to_model(hu[g.right])])[None]).to(device),
                "embedding": torch.from_numpy(context_vector(g.left_gap_s, g.right_gap_s, 0)[None]).to(device)}
        den = denoiser_for(model.net, model.diffusion)
        sigma = torch.tensor([1.0], device=device)
        with torch.no_grad():
            den(x, sigma, **cond)
            sync()
            t0 = time.perf_counter()
            for _ in range(args.seed_calls):
                den(x, sigma, **cond)
            sync()
        per_call = (time.perf_counter() - t0) / args.seed_calls
        seed_calls = 1500 * plan.n_missing
        seed_time = per_call * seed_calls
        print(f"seed: 1500 ancestral steps per missing frame, batch 1: {seed_calls} network calls x {per_call * 1000:.1f} ms "
              f"= {seed_time:.0f} s (extrapolated from {args.seed_calls} calls)")
        for estimate, (seconds, calls) in ours.items():
            print(f"speed-up ({estimate}) {seed_time / seconds:.0f}x; network calls {seed_calls} -> {calls} "
                  f"(batched {args.batch_size})")


if __name__ == "__main__":
    main()
