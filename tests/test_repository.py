"""The README's commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    return [block.strip() for block in blocks]


def test_ci_runs_exactly_the_readme_test_command():
    main_job, test_command = readme_commands()[:2]
    assert main_job.startswith("pip install torch==2.13.0 && ")
    assert test_command.startswith("pip install torch==2.13.0 && ")
    assert test_command.endswith("python -m pytest")
    ci = (ROOT / ".ci/run").read_text()
    assert f"TEST_COMMAND='{test_command}'" in ci
    assert 'bash -c "$TEST_COMMAND"' in ci
    assert '"$status" -eq 5' in ci  # "no tests collected" fails the run
