"""What every job-running command shares: options, the reporter, running the job."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..jobs import Job, run_cancellable
from ..progress import JsonLinesReporter, Reporter, TerminalReporter


#: Shown in --help where the model card decides a default (its steps, sampler, guidance...).
CARD_DEFAULT = "default: the model card's"

#: Destinations of the options that name a file or folder a command WRITES; every other path-valued option is
#: an input, and no output may be one of them (checked for every command before it runs, see cli.main).
OUTPUT_OPTIONS = ("out", "out_dir", "baseline_out", "preview", "json", "image", "truth_dir", "save_job")


def add_job_options(parser: argparse.ArgumentParser, *, seed: bool = True, model: bool | str = True) -> None:
    """--device, --progress, and optionally --seed and --model (``model="required"``: the command needs one;
    a string other than that names the default model shown in the help)."""
    parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads (default: the cores free now, from the load average and CPU affinity)")
    parser.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                        help="bar: a terminal progress bar; json: the engine's JSON-lines events on stdout")
    if seed:
        parser.add_argument("--seed", type=int, default=None, help="random seed, for a reproducible result")
    if model:
        what = "model name (see `meddiff models list`) or path to a .safetensors/.json pair"
        if model == "required":
            parser.add_argument("--model", required=True, help=what)
        else:
            parser.add_argument("--model", default=None,
                                help=what + (f" (default: {model})" if isinstance(model, str) else ""))
    parser.add_argument("--save-job", metavar="JOB.json", default=None,
                        help="write the job file instead of running it (run later with `meddiff run` or the engine worker)")


def reporter_for(progress: str) -> Reporter:
    if progress == "json":
        return JsonLinesReporter(sys.stdout)
    if progress == "none":
        return TerminalReporter(sys.stderr, show_progress=False)  # errors and results are never silent
    return TerminalReporter(sys.stderr)


def execute(job: Job, args: argparse.Namespace) -> int:
    """Run ``job`` in this process with the reporter chosen by --progress (or save it with --save-job).

    SIGINT and SIGTERM cancel it: one CANCELLED error (an event with ``--progress json``), status 130, no output.
    """
    if getattr(args, "threads", None) is not None:
        job.threads = args.threads
    if getattr(args, "save_job", None):
        Path(args.save_job).write_text(job.to_json(), encoding="utf-8")
        print(f"wrote job {args.save_job}", file=sys.stderr)
        return 0
    return run_cancellable(job, reporter_for(args.progress))


def parse_params(items: list[str]) -> dict:
    """``key=value`` pairs (values parsed as JSON when they can be) into a dict."""
    params = {}
    for item in items or []:
        key, _, raw = item.partition("=")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params
