"""Tests of :class:`rai_probe.progress.Progress` and :func:`rai_probe.progress.progress`.

What is checked, with a fake clock (``rai_probe.progress.time`` replaced):

* the line: exact text with a description, postfix values (floats to 4
  significant digits, kept between updates), percent, elapsed time and ETA,
  hours when needed, no description;
* not a terminal (logs, pipes): one line per tenth of the work, newline
  terminated, nothing extra on ``close``;
* a terminal: the line is redrawn in place (``\\r``) at most every 0.1 s, the
  last unit of work is always drawn, ``close`` ends the line once, also from a
  ``with`` block left by an error; ``refresh`` sets the redraw rate;
* ``enabled=False`` draws nothing but still counts; ``total`` is validated;
  the default stream is ``sys.stderr``; :func:`progress` yields the items.
"""

from __future__ import annotations

import io
import types

import pytest

from rai_probe import progress as progress_module
from rai_probe.progress import Progress, progress


class Clock:
    """A settable stand-in for ``time.monotonic``."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress_module, "time", types.SimpleNamespace(monotonic=fake))
    return fake


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().split("\n")[:-1]


# --------------------------------------------------------------------------- #
# the line
# --------------------------------------------------------------------------- #
def test_line_text_with_eta_and_postfix(clock):
    bar = Progress(4, "train", stream=io.StringIO())
    assert bar.line() == "train: 0/4 0% [00:00]"
    clock.now = 90.0
    bar.update(loss=0.5)
    assert bar.line() == "train: 1/4 25% loss=0.5 [01:30 eta 04:30]"
    clock.now = 360.0
    bar.update(3, loss=0.123456, acc=1)
    assert bar.line() == "train: 4/4 100% loss=0.1235 acc=1 [06:00]"
    bar.update(0, note="done")
    assert bar.line() == "train: 4/4 100% loss=0.1235 acc=1 note=done [06:00]"  # postfix values persist


def test_line_hours_and_no_description(clock):
    bar = Progress(2, stream=io.StringIO())
    clock.now = 3725.0
    bar.update()
    assert bar.line() == "1/2 50% [1:02:05 eta 1:02:05]"


# --------------------------------------------------------------------------- #
# not a terminal
# --------------------------------------------------------------------------- #
def test_non_terminal_writes_a_line_per_tenth(clock):
    out = io.StringIO()
    bar = Progress(100, "eval", stream=out)
    assert not bar.interactive
    for _ in range(100):
        bar.update()
    bar.close()
    lines = _lines(out)
    counts = [int(line.split(" ")[1].split("/")[0]) for line in lines]
    assert counts == [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert lines[-1] == "eval: 100/100 100% [00:00]"
    assert "\r" not in out.getvalue() and out.getvalue().endswith("\n")


def test_non_terminal_big_steps_and_short_loops(clock):
    out = io.StringIO()
    with Progress(100, stream=out) as bar:
        for n in (30, 30, 30, 10):
            bar.update(n)
    assert [line.split(" ")[0] for line in _lines(out)] == ["30/100", "60/100", "90/100", "100/100"]
    out = io.StringIO()
    with Progress(7, stream=out) as bar:
        for _ in range(7):
            bar.update()
    assert len(_lines(out)) == 7  # every unit crosses a tenth


def test_non_terminal_close_adds_nothing(clock):
    out = io.StringIO()
    bar = Progress(3, stream=out)
    bar.update(3)
    written = out.getvalue()
    bar.close()
    bar.close()
    assert out.getvalue() == written == "3/3 100% [00:00]\n"


# --------------------------------------------------------------------------- #
# a terminal
# --------------------------------------------------------------------------- #
def test_terminal_redraws_in_place_at_most_every_tenth_of_a_second(clock):
    out = Terminal()
    bar = Progress(5, "fit", stream=out)
    assert bar.interactive
    for _ in range(4):
        bar.update()  # the clock stands still: only the first update draws
    assert out.getvalue() == "\rfit: 1/5 20% [00:00 eta 00:00]"
    bar.update()  # the last unit is always drawn
    assert out.getvalue().endswith("\rfit: 5/5 100% [00:00]")
    bar.close()
    bar.close()
    assert out.getvalue() == "\rfit: 1/5 20% [00:00 eta 00:00]\rfit: 5/5 100% [00:00]\rfit: 5/5 100% [00:00]\n"


def test_terminal_draws_every_update_when_time_passes(clock):
    out = Terminal()
    bar = Progress(10, stream=out)
    for _ in range(6):
        clock.now += 0.125  # exact in binary: no rounding below the 0.1 s interval
        bar.update()
    assert out.getvalue().count("\r") == 6 and "\n" not in out.getvalue()


def test_terminal_refresh_sets_the_redraw_rate(clock):
    out = Terminal()
    bar = Progress(10, stream=out, refresh=1.0)  # at most one redraw per second
    for _ in range(9):
        clock.now += 0.25
        bar.update()
    assert out.getvalue().count("\r") == 3  # at 0.25 s, 1.25 s and 2.25 s


def test_terminal_with_block_ends_the_line_on_error(clock):
    out = Terminal()
    with pytest.raises(RuntimeError):
        with Progress(3, "x", stream=out) as bar:
            bar.update()
            raise RuntimeError("stop")
    assert out.getvalue() == "\rx: 1/3 33% [00:00 eta 00:00]\rx: 1/3 33% [00:00 eta 00:00]\n"


# --------------------------------------------------------------------------- #
# disabled, validation, defaults, the iterator
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("stream_type", [io.StringIO, Terminal])
def test_disabled_draws_nothing_but_counts(clock, stream_type):
    out = stream_type()
    with Progress(4, "quiet", enabled=False, stream=out) as bar:
        bar.update(2, loss=1.0)
        bar.update(2)
    assert out.getvalue() == ""
    assert bar.count == 4 and bar.postfix == {"loss": 1.0}


@pytest.mark.parametrize("total", [-1, 1.5, True, "3", None])
def test_total_must_be_a_non_negative_integer(total):
    with pytest.raises(ValueError, match=r"Progress: `total` must be an integer >= 0; got total="):
        Progress(total)


def test_zero_total_is_allowed(clock):
    out = io.StringIO()
    with Progress(0, stream=out):
        pass
    assert out.getvalue() == ""


def test_default_stream_is_stderr(clock, capsys):
    with Progress(2, "default") as bar:
        bar.update(2)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "default: 2/2 100% [00:00]\n"


def test_progress_iterator_yields_items_and_draws(clock, capsys):
    assert list(progress(iter("abc"), 3, "letters")) == ["a", "b", "c"]
    assert capsys.readouterr().err.splitlines() == ["letters: 1/3 33% [00:00 eta 00:00]",
                                                    "letters: 2/3 66% [00:00 eta 00:00]",
                                                    "letters: 3/3 100% [00:00]"]
    assert list(progress(range(3), 3, enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
