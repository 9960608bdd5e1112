"""TorchRL's own DreamerV3 loss tests, run against TorchRL and against torchdreamer.

Takes TorchRL's ``test/objectives/test_dreamer_v3.py`` (with the helpers it imports) from a
git directory of pytorch/rl (the search tool's ``fetch github:pytorch/rl`` returns one) or
from a checkout, writes a copy whose only change is the import line
``from torchrl.objectives import (DreamerV3ActorLoss, DreamerV3ModelLoss, DreamerV3ValueLoss)``
switched to ``from torchdreamer import (...)``, runs both files with pytest in a temporary
folder and prints, for every test, the outcome on each implementation and, where torchdreamer
fails, the first line of its error. The test files are read, never copied into this
project.

From a git directory it runs each revision of ``--refs`` (default: upstream's current
file, ``HEAD``, and the one shipped with ``v0.13.3``), one table per revision, then the
totals over them.

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


def is_git_dir(source: Path) -> bool:
    return (source / "HEAD").exists() and not (source / "test").exists()


def extract(source: Path, into: Path, ref: str = "HEAD") -> Path:
    """TorchRL's test files under ``into``, from a git directory (at ``ref``) or a checkout."""
    if is_git_dir(source):
        archive = subprocess.run(
            ["git", "--git-dir", str(source), "archive", ref, *FILES],
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


def compare(source: Path, ref: str) -> list[dict[str, tuple[str, str]]]:
    """Outcomes on TorchRL and on torchdreamer."""
    with tempfile.TemporaryDirectory() as folder:
        tests = extract(source, Path(folder), ref)
        original = tests / "test_dreamer_v3.py"
        theirs, ours = run(original), run(switched(original))
    print(
        f"\n## {ref}\n\n| test | torchrl | torchdreamer | torchdreamer's error or skip reason |"
        "\n|---|---|---|---|"
    )
    for name in theirs:
        outcome, _ = theirs[name]
        mine, message = ours.get(name, ("missing", ""))
        print(f"| `{name}` | {outcome} | {mine} | {message if mine != 'passed' else ''} |")
    return [theirs, ours]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a pytorch/rl git directory or checkout")
    parser.add_argument(
        "--refs", nargs="+", default=["HEAD", "v0.13.3"], help="revisions (git directory only)"
    )
    args = parser.parse_args()
    source = args.source.absolute()
    refs = args.refs if is_git_dir(source) else ["checkout"]
    totals: list[Counter] = [Counter(), Counter()]
    for ref in refs:
        for total, outcomes in zip(totals, compare(source, ref), strict=True):
            counts = Counter(outcome for outcome, _ in outcomes.values())
            total.update(counts)
    print()
    labels = ("torchrl", "torchdreamer")
    for label, counts in zip(labels, totals, strict=True):
        shown = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        print(f"{label}, {' + '.join(refs)}: {shown} (of {sum(counts.values())})")


if __name__ == "__main__":
    main()
