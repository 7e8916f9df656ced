"""rai_probe.progress: a tqdm bar on a terminal, nothing elsewhere, log lines never on the bar's line."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from rai_probe.progress import Progress, progress


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_terminal_draws_a_tqdm_bar_with_postfix():
    stream = Terminal()
    with Progress(4, "train", stream=stream) as bar:
        assert bar.enabled and bar.interactive
        for _ in range(4):
            bar.update(loss=0.123456)
    text = stream.getvalue()
    last = text.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("train: 100%") and "4/4" in last and "loss=0.1235" in last
    assert text.endswith("\n")  # closed: the next output starts on a new line


@pytest.mark.parametrize("stream", [io.StringIO(), None])
def test_not_a_terminal_draws_nothing_but_counts(stream, capsys):
    bar = Progress(10, "x", stream=stream)
    assert not bar.enabled
    for _ in range(10):
        bar.update(2, acc=0.5)
    bar.close()
    assert bar.count == 20 and bar.postfix == {"acc": 0.5}
    if stream is not None:
        assert stream.getvalue() == ""
    assert capsys.readouterr().err == ""  # pytest's captured stderr is not a terminal


def test_disabled_draws_nothing_on_a_terminal():
    stream = Terminal()
    with Progress(3, "x", stream=stream, enabled=False) as bar:
        bar.update(3)
    assert stream.getvalue() == "" and not bar.enabled and bar.interactive


def test_log_lines_do_not_share_the_bar_line(monkeypatch):
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)  # a console handler, as Hydra's, writes to stderr
    logger = logging.getLogger()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("LOG %(message)s"))
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with Progress(2, "attack") as bar:
            bar.update()
            logging.getLogger("rai_probe.test").info("halfway")
            bar.update()
        logging.getLogger("rai_probe.test").info("after")
        assert handler in logger.handlers  # the console handler is back once the bar closed
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = stream.getvalue().replace("\r", "\n").splitlines()
    assert any(line.startswith("LOG halfway") for line in lines)  # a line of its own
    assert not any("LOG" in line and "attack" in line for line in lines)
    assert lines[-1] == "LOG after"


@pytest.mark.parametrize("total", [-1, 1.5, True, "3"])
def test_total_must_be_a_non_negative_integer(total):
    with pytest.raises(ValueError, match="`total`"):
        Progress(total)


@pytest.mark.parametrize("refresh", [0, -1.0, True])
def test_refresh_must_be_positive(refresh):
    with pytest.raises(ValueError, match="`refresh`"):
        Progress(3, refresh=refresh)


def test_enabled_must_be_a_bool():
    with pytest.raises(TypeError, match="`enabled`"):
        Progress(3, enabled="no")


def test_zero_total_and_double_close():
    stream = Terminal()
    bar = Progress(0, "empty", stream=stream)
    bar.close()
    bar.close()
    assert stream.getvalue().startswith("\rempty:") and stream.getvalue().endswith("\n")


def test_progress_iterator_yields_items():
    assert list(progress(iter("abc"), 3, "letters")) == ["a", "b", "c"]
