"""Progress where the output is not a terminal (nohup, a batch scheduler, ``| tee``):
plain lines, one a minute, no carriage returns or escape codes; on a terminal the bar
(``tests/test_cli.py`` draws it in a pseudo-terminal)."""

from __future__ import annotations

import io
import re
import sys
from types import SimpleNamespace

from torchdreamer.training import Config
from torchdreamer.training import progress as progress_module
from torchdreamer.training.progress import Progress

LINE = re.compile(
    r"^(prefill|train) [\d,]+/[\d,]+ env steps \(\d+%\), (\d+:)?\d\d:\d\d elapsed, "
    r"(left (\d+:)?\d\d:\d\d, [\d.]+ upd/s, )?score \S+, mean10 \S+$"
)


class _Clock:
    now = 1000.0

    def perf_counter(self):
        return self.now


def test_an_hour_off_a_terminal_is_a_line_a_minute(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress_module, "time", clock)
    # 2 updates per env step (train ratio 32 over 2 x 8 steps), 8 env steps a second
    # (an exact binary fraction of a second each: no rounding in the clock).
    config = Config(steps=100_000, batch_size=2, batch_length=8, train_ratio=32)
    stream = io.StringIO()
    bar = Progress(config, 0, True, 1, stream=stream)
    scores = []
    for step in range(1, 28_801):  # an hour, shown at every env step
        clock.now = 1000.0 + step * 0.125
        if step % 400 == 0:
            scores.append(float(step // 400))
        updates = 2 * (step - 15) if step >= 16 else 0
        bar.show(SimpleNamespace(env_step=step, updates=updates), scores)
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    # The first update's line, then one a minute (steps 496, 976, ..., 28,336), and the
    # last one at the close.
    assert len(lines) == 1 + 59 + 1, lines[:3]
    assert len(text) < 8_000
    assert all(LINE.match(line) for line in lines), [x for x in lines if not LINE.match(x)]
    assert lines[0].startswith("train 16/100,000 env steps (0%), 00:02 elapsed, left ")
    # A minute later: 960 updates in 60 s, 99,504 steps left at 2 updates each.
    assert lines[1] == (
        "train 496/100,000 env steps (0%), 01:02 elapsed, left 3:27:18, 16.00 upd/s, "
        "score 1, mean10 1"
    )
    assert lines[-1] == (
        "train 28,800/100,000 env steps (29%), 1:00:00 elapsed, left 2:28:20, 16.00 upd/s, "
        "score 72, mean10 67.5"
    )


def test_a_long_prefill_is_a_line_a_minute_too(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress_module, "time", clock)
    stream = io.StringIO()
    bar = Progress(Config(steps=10_000), 0, True, 1, stream=stream)
    for step in range(1, 1_441):  # 3 minutes at 8 env steps a second, no update yet
        clock.now = 1000.0 + step * 0.125
        bar.show(SimpleNamespace(env_step=step, updates=0), [])
    lines = stream.getvalue().splitlines()
    assert [line.split(" env steps")[0] for line in lines] == [
        "prefill 480/10,000",
        "prefill 960/10,000",
        "prefill 1,440/10,000",
    ]
    assert lines[0] == "prefill 480/10,000 env steps (5%), 01:00 elapsed, score -, mean10 nan"


def test_no_progress_shows_nothing_but_notes():
    stream = io.StringIO()
    bar = Progress(Config(steps=100), 0, False, 1, stream=stream)
    bar.show(SimpleNamespace(env_step=50, updates=3), [1.0])
    bar.note("torchdreamer: a note")
    bar.close()
    assert stream.getvalue() == "torchdreamer: a note\n"


def test_a_run_writing_to_files_writes_plain_progress_lines(processes, tmp_path):
    logdir = tmp_path / "run"
    args = [sys.executable, "-m", "torchdreamer", "train", "--logdir", str(logdir)]
    args += ["--steps", "64", "--num-envs", "2", "--batch-size", "2", "--batch-length", "8"]
    args += ["--train-ratio", "4", "--imagination-horizon", "3", "--threads", "1"]
    args += ["--compile", "off", "--eval-every", "0"]
    finished = processes.run(args, tmp_path / "logs")
    assert finished.returncode == 0, finished.stderr
    for text in (finished.stdout, finished.stderr):
        assert "\r" not in text and "\x1b" not in text
    lines = [line for line in finished.stderr.splitlines() if LINE.match(line)]
    assert lines, finished.stderr
    assert lines[-1].startswith("train 64/64 env steps (100%), ")
