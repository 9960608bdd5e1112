"""TorchRL's own DreamerV3 loss tests, run against TorchRL and against torchdreamer.

Takes TorchRL's ``test/objectives/test_dreamer_v3.py`` (with the helpers it imports) from a
git directory of pytorch/rl (the search tool's ``fetch github:pytorch/rl`` returns one) or
from a checkout, writes a copy whose only change is the import line
``from torchrl.objectives import (DreamerV3ActorLoss, DreamerV3ModelLoss, DreamerV3ValueLoss)``
switched to ``from torchdreamer import (...)``, runs both files with pytest in a temporary
folder and prints, for every test, the outcome on each implementation and, where torchdreamer
fails, the first line of its error. A third run switches the import too and passes the
arguments that the "Differences from TorchRL" tables of docs/torchrl.md gives to get TorchRL's
behaviour (``DreamerV3ModelLoss(lambda_continue=0.0, kl_mode="balanced", unimix=0.0,
detach_output=True)``, through a ``conftest.py`` that sets them as the defaults), so that
what still fails there is a difference that has no argument. The test files are read,
never copied into this project.

Run: ``python benchmarks/torchrl_tests.py /work/.mirror/pytorch+rl/repo``
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

FILES = ("test/objectives/test_dreamer_v3.py", "test/objectives/_objectives_common.py")
IMPORT = re.compile(r"^from torchrl\.objectives import \(\n(\s+DreamerV3\w+,\n)+\)", re.M)


def extract(source: Path, into: Path) -> Path:
    """TorchRL's test files under ``into``, from a git directory or a checkout."""
    if (source / "HEAD").exists() and not (source / "test").exists():  # a bare git dir
        archive = subprocess.run(
            ["git", "--git-dir", str(source), "archive", "HEAD", *FILES],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    else:
        for name in FILES:
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text((source / name).read_text())
    return into / "test" / "objectives"


def switched(original: Path) -> Path:
    text = original.read_text()
    found = len(IMPORT.findall(text))
    if found != 1:
        raise SystemExit(f"expected one DreamerV3 import block in {original}, found {found}")
    copy = original.with_name("test_dreamer_v3_torchdreamer.py")
    swap = lambda match: match.group(0).replace("torchrl.objectives", "torchdreamer")  # noqa: E731
    copy.write_text(IMPORT.sub(swap, text))
    return copy


#: A conftest that gives DreamerV3ModelLoss TorchRL's defaults (docs/torchrl.md's differences).
TORCHRL_DEFAULTS = """
import functools

from torchdreamer.objectives import model

_init = model.DreamerV3ModelLoss.__init__
_TORCHRL = dict(lambda_continue=0.0, kl_mode="balanced", unimix=0.0, detach_output=True)


@functools.wraps(_init)
def _with_torchrl_defaults(self, *args, **kwargs):
    _init(self, *args, **{**_TORCHRL, **kwargs})


model.DreamerV3ModelLoss.__init__ = _with_torchrl_defaults
"""


def run(test_file: Path) -> dict[str, tuple[str, str]]:
    """pytest's outcome of each test in ``test_file``, with the first line of any error."""
    report = test_file.with_suffix(".xml")
    subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore"),
            f"--junitxml={report}",
            test_file.name,
        ],
        cwd=test_file.parent,
        capture_output=True,
        text=True,
    )
    outcomes = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        name = case.get("name")
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                lines = (found.get("message") or "").strip().splitlines()
                message = lines[0][:160] if lines else ""
                break
        outcomes[name] = (outcome, message)
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a pytorch/rl git directory or checkout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tests = extract(args.source.absolute(), Path(folder))
        original = tests / "test_dreamer_v3.py"
        theirs, ours = run(original), run(switched(original))
        (tests / "conftest.py").write_text(TORCHRL_DEFAULTS)
        restored = run(tests / "test_dreamer_v3_torchdreamer.py")
    print(
        "| test | torchrl | torchdreamer | torchdreamer, TorchRL's defaults | torchdreamer's "
        "error |\n|---|---|---|---|---|"
    )
    for name in theirs:
        outcome, _ = theirs[name]
        mine, message = ours.get(name, ("missing", ""))
        again, message_again = restored.get(name, ("missing", ""))
        shown = message_again if again != "passed" else (message if mine != "passed" else "")
        print(f"| `{name}` | {outcome} | {mine} | {again} | {shown} |")
    runs = (("torchrl", theirs), ("torchdreamer", ours), ("with TorchRL's defaults", restored))
    for label, outcomes in runs:
        counts = Counter(outcome for outcome, _ in outcomes.values())
        print(f"{label}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))


if __name__ == "__main__":
    main()
