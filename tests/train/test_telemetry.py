"""What the trainer shows: the progress bar keeps log lines off its own line and shows one remaining-time
estimate; DeepSpeed's warning about megabert's optimizer is not repeated at every start."""

import io
import logging

from megabert.parallel.deepspeed_config import _known_warnings
from megabert.train.telemetry import ProgressBar
from megabert.utils.logging import get_logger, setup_logging


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_go_above_the_bar_and_the_bar_shows_only_the_trainers_eta(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    setup_logging(0)  # the megabert handler writes to (this) stderr
    bar = ProgressBar(total=100, initial=0, enabled=True)
    bar.update()
    get_logger("megabert.test").info("a log line while the bar runs")
    metrics = {"train/loss": 2.0, "train/lr": 1e-4, "train/tokens_per_s": 1000.0, "train/mfu": 0.5,
               "train/eta_seconds": 3725.0}
    bar.report(1, metrics)
    bar.bar.refresh()
    text = terminal.getvalue()
    bar.close()
    line = next(l for l in text.replace("\r", "\n").splitlines() if "a log line while the bar runs" in l)
    assert "pretrain" not in line  # printed on a line of its own, not into the bar's
    bar_lines = [l for l in text.replace("\r", "\n").splitlines() if "pretrain" in l]
    assert bar_lines and "eta=1:02:05" in bar_lines[-1]
    assert "<" not in bar_lines[-1]  # tqdm's own remaining-time estimate ("elapsed<remaining") is not shown
    setup_logging(0)


def test_deepspeeds_untested_optimizer_warning_is_dropped_and_others_kept():
    record = lambda msg: logging.LogRecord("DeepSpeed", logging.WARNING, "", 0, msg, None, None)
    assert not _known_warnings(record("**** You are using ZeRO with an untested optimizer, proceed with caution *****"))
    assert _known_warnings(record("something else went wrong"))
