"""Warnings reach the user through every reporter, also where progress and logs are hidden."""

import io
import json

from meddiffcore.progress import JsonLinesReporter, SilentReporter, TerminalReporter


def test_a_warning_is_a_log_event_at_warning_level_with_its_hint():
    stream = io.StringIO()
    JsonLinesReporter(stream).warning("spacing 0.4 mm is far from the model's 2 mm", hint="the result may be blurred")
    event = json.loads(stream.getvalue())
    assert (event["event"], event["level"]) == ("log", "warning")
    assert event["message"].startswith("spacing 0.4 mm") and event["hint"] == "the result may be blurred"


def test_the_terminal_shows_warnings_even_when_progress_is_hidden():
    stream = io.StringIO()
    reporter = TerminalReporter(stream, show_progress=False)
    reporter.log("an ordinary line")
    reporter.progress("sampling", 1, 2)
    reporter.warning("input outside the model's window", hint="values above 3000 HU are clipped")
    assert stream.getvalue() == "warning: input outside the model's window\n  values above 3000 HU are clipped\n"


def test_the_silent_reporter_keeps_warnings_for_library_callers():
    reporter = SilentReporter()
    reporter.warning("w")
    assert reporter.events == [{"event": "log", "level": "warning", "message": "w", "hint": ""}]
