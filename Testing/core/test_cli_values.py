"""Every value a user gives has a documented range, shown in --help and checked before any work; the help says
"the model card's" where the card decides a default, and an option a command needs is required."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from meddiffcore.checks import MAX_SEED, VALUE_RANGES, check_outputs_not_inputs, check_value
from meddiffcore.cli import build_parser, main as cli_main
from meddiffcore.errors import ConfigError, ModelError, OutOfMemoryError


def _commands():
    """(name, parser) of every command and sub-command."""
    def walk(parser, name):
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield from walk(sub, f"{name} {sub_name}".strip())

    return list(walk(build_parser(), ""))


def _option(parser, dest):
    return next((a for a in parser._actions if a.dest == dest and a.option_strings), None)


def _job_commands():
    return [(name, p) for name, p in _commands() if _option(p, "save_job") is not None]


def test_card_decided_defaults_say_so_and_state_no_number():
    """`synthesize --help` said 25 steps, dpmpp_2m and guidance 1 while the run used the card's 40 ancestral steps
    and guidance 3: where the card decides, the help names the card, not a number of its own."""
    checked = 0
    for name, parser in _job_commands():
        for dest in ("steps", "sampler", "guidance", "estimate"):
            action = _option(parser, dest)
            if action is None or action.default is not None:
                continue
            text = action.help or ""
            assert "card" in text, f"meddiff {name} --{dest}: the help does not say the model card decides: {text!r}"
            assert "dpmpp_2m (default)" not in text and "(default)" not in text, f"meddiff {name} --{dest}: {text!r}"
            assert "25" not in text and "alone (default)" not in text, f"meddiff {name} --{dest}: {text!r}"
            checked += 1
    assert checked >= 10


def test_help_names_every_published_format_and_variant_and_the_authors_sampler():
    """`import-checkpoint --help` named only WDM, cWDM and TPDM, and `inpaint`/`upscale --help` did not say that
    `--sampler authors` exists, though both imported models run it."""
    from meddiffcore.checkpoints import FORMATS, variants

    commands = dict(_commands())
    text = " ".join(commands["models import-checkpoint"].format_help().split())
    for fmt in FORMATS:
        assert f"--format {fmt}" in text or f"{fmt}:" in text, fmt
        for variant in variants(fmt):
            assert variant in text, (fmt, variant)
    for name in ("inpaint", "upscale", "generate"):
        assert "authors" in (_option(commands[name], "sampler").help or ""), name
    assert "1500" in _option(commands["inpaint"], "sampler").help  # what authors means for the CTP model


@pytest.mark.parametrize("command", ["upscale", "generate"])
def test_a_command_that_needs_a_model_requires_it(command, capsys):
    parser = dict(_commands())[command]
    assert _option(parser, "model").required
    with pytest.raises(SystemExit) as exit_:
        cli_main([command, "--out", "x.nii.gz"] + (["--input", "y.nii.gz"] if command == "upscale" else []))
    assert exit_.value.code == 2 and "--model" in capsys.readouterr().err


def test_every_ranged_option_shows_its_range_in_help():
    shown = 0
    for name, parser in _commands():
        for action in parser._actions:
            dest = {"lam": "lambda"}.get(action.dest, action.dest)
            if action.option_strings and dest in VALUE_RANGES:
                assert "[" in (action.help or "") and " to " in action.help, f"meddiff {name} {action.option_strings}"
                shown += 1
    assert shown >= 30


@pytest.mark.parametrize("name, value, words", [
    ("steps", 0, "out of range"), ("steps", 5_000_000, "out of range"), ("seed", 10**30, "1e+30"),
    ("seed", -1, "out of range"), ("guidance", math.nan, "finite"), ("steps", 2.5, "whole number"),
    ("steps", True, "must be a number"), ("steps", "12", "must be a number"), ("interval", 0.0, "above 0"),
    ("spacing", [1.0, 0.0, 1.0], "out of range"),
])
def test_values_outside_their_range_are_config_errors(name, value, words):
    with pytest.raises(ConfigError) as error:
        check_value(name, value)
    assert words in str(error.value) and error.value.hint


def test_values_inside_their_range_pass():
    for name, spec in VALUE_RANGES.items():
        assert check_value(name, spec.kind(spec.high)) == spec.high
    assert check_value("seed", MAX_SEED) == MAX_SEED and check_value("steps", None) is None


def test_an_output_is_never_an_input_even_through_links(tmp_path):
    source = tmp_path / "in.nii.gz"
    source.write_bytes(b"data")
    (tmp_path / "soft.nii.gz").symlink_to(source)
    (tmp_path / "hard.nii.gz").hardlink_to(source)
    for out in (source, tmp_path / "soft.nii.gz", tmp_path / "hard.nii.gz", tmp_path / "sub" / ".." / "in.nii.gz"):
        with pytest.raises(ConfigError, match="is the input"):
            check_outputs_not_inputs([("--input", source)], [("--out", out)])
    check_outputs_not_inputs([("--input", source)], [("--out", tmp_path / "new.nii.gz")])
    assert source.read_bytes() == b"data"


def test_a_job_file_gets_the_same_checks_as_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDDIFF_HOME", str(tmp_path / "home"))
    volume = tmp_path / "ct.nii.gz"
    volume.write_bytes(b"not read: refused before")
    job = tmp_path / "job.json"
    for fields, words in (({"inputs": {"volume": str(volume)}, "outputs": {"volume": str(volume)}}, "is the input"),
                          ({"outputs": {"volume": str(tmp_path / "o.nii.gz")}, "seed": 10**30}, "seed"),
                          ({"outputs": {"volume": str(tmp_path / "o.nii.gz")}, "params": {"steps": 0}},
                           "params.steps")):
        job.write_text(json.dumps({"task": "recon.ct", **fields}))
        assert cli_main(["run", str(job), "--progress", "json"]) == 4
        event = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert event["code"] == "BAD_CONFIG" and words in event["message"] and event["hint"]
    assert volume.read_bytes() == b"not read: refused before"


def test_generate_names_the_task_of_a_model_that_does_not_generate(capsys):
    assert cli_main(["generate", "--model", "ctp-demo", "--out", "never.nii.gz"]) == ModelError.code.exit_status
    err = capsys.readouterr().err
    assert "'ctp' model" in err and "unknown job task" not in err and "fix:" in err


# ---- sequence times are never guessed; the number of output frames and their memory are bounded

def _nrrd_sequence(path, extra: str = ""):
    data = np.zeros((3, 2, 3, 4), np.uint8)
    path.write_bytes(b"NRRD0004\ntype: uchar\ndimension: 4\nspace: LPS\nsizes: 4 3 2 3\n"
                     b"space directions: (1,0,0) (0,1,0) (0,0,1) none\nkinds: space space space list\n"
                     + extra.encode() + b"encoding: raw\n\n" + data.tobytes())
    return path


@pytest.mark.parametrize("extra, words", [
    ("", "no frame index values"),
    ("axis 3 index type:=numeric\naxis 3 index values:=0 x 4\n", "not numbers ('x')"),
    ("axis 3 index type:=text\naxis 3 index values:=a b c\n", "of type 'text'"),
    ("axis 3 index type:=numeric\naxis 3 index values:=0 1 2\naxis 3 unit:=frame\n", "'frame'"),
])
def test_a_sequence_without_real_times_is_refused_unless_times_are_given(tmp_path, extra, words):
    from meddiffcore.errors import BadInputError
    from meddiffcore.tasks.ctp.sequences import read_ctp_sequence

    path = _nrrd_sequence(tmp_path / "s.seq.nrrd", extra)
    with pytest.raises(BadInputError, match="--times") as error:
        read_ctp_sequence(path)
    assert words in error.value.message
    assert read_ctp_sequence(path, times="0,2,4").times_s.tolist() == [0.0, 2.0, 4.0]


def test_a_real_time_index_is_read_in_seconds(tmp_path):
    from meddiffcore.tasks.ctp.sequences import read_ctp_sequence

    path = _nrrd_sequence(tmp_path / "s.seq.nrrd", "axis 3 index type:=numeric\naxis 3 index values:=0 500 1000\n"
                                                   "axis 3 unit:=ms\n")
    assert read_ctp_sequence(path).times_s.tolist() == [0.0, 0.5, 1.0]


def test_an_interval_that_makes_too_many_frames_is_refused_before_anything_is_allocated():
    from meddiffcore.tasks.ctp.plan import MAX_OUTPUT_FRAMES, make_plan

    with pytest.raises(ConfigError, match="output frames") as error:
        make_plan([0.0, 2.0, 4.0, 12.0], interval_s=1e-6)
    assert "at least" in error.value.hint
    assert len(make_plan([0.0, 2.0], interval_s=2.0 / (MAX_OUTPUT_FRAMES - 10)).times_s) < MAX_OUTPUT_FRAMES


def test_output_frames_that_would_not_fit_in_memory_are_refused():
    from meddiffcore.devices import physical_memory_bytes
    from meddiffcore.io import Sequence
    from meddiffcore.tasks.ctp.run import check_output_memory

    seq = Sequence(np.zeros((2, 4, 64, 64), np.int16), np.eye(4), np.array([0.0, 1.0]))
    check_output_memory(100, seq)  # 6 MB: fine
    frames = physical_memory_bytes() // (4 * 64 * 64 * 4) + 1
    with pytest.raises(OutOfMemoryError, match="GiB"):
        check_output_memory(int(frames), seq)
