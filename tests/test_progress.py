"""What long-running commands print while they work: a step's label and duration, a bar over its parts."""

from __future__ import annotations

import io
import re

import pytest

from fusion_passes.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_step_says_what_it_does_and_how_long_it_took():
    out = io.StringIO()
    with progress("compiling", stream=out):
        pass
    assert re.fullmatch(r"compiling \.\.\.\ncompiling: done in \d+\.\d s\n", out.getvalue())


def test_a_bar_in_a_log_prints_about_ten_lines():
    out = io.StringIO()
    with progress("timing", total=20, stream=out) as advance:
        for _ in range(20):
            advance()
    lines = out.getvalue().splitlines()
    assert lines[0] == "timing ..." and len(lines) == 12
    assert re.fullmatch(r"timing \[#{2}\.{22}\] 2/20 \d+ s", lines[1])
    assert re.fullmatch(r"timing: 20/20 done in \d+\.\d s", lines[-1])


def test_a_bar_on_a_terminal_is_redrawn_in_place():
    out = Terminal()
    with progress("timing", total=2, stream=out) as advance:
        advance()
    text = out.getvalue()
    assert "\rtiming [" + "#" * 12 + "." * 12 + "] 1/2" in text
    assert text.endswith("\n") and text.count("\n") == 1
    assert re.search(r"\rtiming: 1/2 done in \d+\.\d s *\n$", text)


def test_a_failed_step_says_so():
    out = io.StringIO()
    with pytest.raises(RuntimeError), progress("compiling", stream=out):
        raise RuntimeError("boom")
    assert re.search(r"compiling: failed after \d+\.\d s\n$", out.getvalue())
