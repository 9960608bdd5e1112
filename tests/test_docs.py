"""The documentation: the site builds without a warning, every page is in it and teaches by
examples that run (pytest doctests README.md and docs/*.md), and the README stays short."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _nav_pages(entries: list) -> list[str]:
    """The page files named in mkdocs.yml's ``nav``, sections flattened."""
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _mkdocs_config() -> dict:
    # The python handler's tags (!!python/name:...) are not used here: safe_load suffices.
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_the_site_builds_with_no_warning(tmp_path, processes):
    finished = processes.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict"]
        + ["-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        logs=tmp_path / "logs",
    )
    output = finished.stdout + finished.stderr
    warnings = [line for line in output.splitlines() if "WARNING" in line or "ERROR" in line]
    assert finished.returncode == 0 and not warnings, output
    assert (tmp_path / "site" / "api" / "index.html").exists()
    # The API page is generated from the docstrings, not left as its `:::` lines.
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert 'id="torchdreamer.objectives.DreamerV3ValueLoss"' in api
    assert ":::" not in api


def test_every_page_is_in_the_nav_and_every_nav_entry_is_a_page():
    nav = _nav_pages(_mkdocs_config()["nav"])
    pages = sorted(path.name for path in DOCS.glob("*.md"))
    assert sorted(set(nav)) == pages, f"nav {sorted(nav)} against docs/ {pages}"
    assert len(nav) == len(set(nav)), "a page is listed twice"


def test_every_page_teaches_by_an_example_that_pytest_runs():
    # pytest collects README.md and docs/*.md as doctests (pyproject.toml); a page with no
    # `>>>` line would pass without checking anything.
    options = (ROOT / "pyproject.toml").read_text()
    assert "--doctest-glob=README.md" in options and "--doctest-glob=docs/*.md" in options
    assert '"docs"' in options.split("testpaths")[1].splitlines()[0]
    generated = {"api.md"}  # its examples are the docstrings', run by --doctest-modules
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        if path.name in generated:
            continue
        fences = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
        assert any(">>> " in fence for fence in fences), f"{path.name} has no >>> example"
        for fence in fences:
            # doctest reads an example's expected output up to a blank line: a fence that
            # ends right after the output would take the closing ``` as output.
            assert fence.endswith("\n\n"), f"{path.name}: end each example with a blank line"


def test_the_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [target for target in targets if "://" not in target]
    assert local, "the README links its docs pages"
    missing = [target for target in local if not (ROOT / target).exists()]
    assert not missing, f"README links to missing files: {missing}"
    # Every docs page is reachable from the README.
    linked = {Path(target).name for target in local}
    assert {path.name for path in DOCS.glob("*.md")} - {"index.md"} <= linked


def test_the_drop_in_page_lists_no_default_difference_and_the_official_call():
    import inspect

    import torchrl.objectives

    import torchdreamer

    page = (DOCS / "torchrl.md").read_text()
    for name in ("DreamerV3ModelLoss", "DreamerV3ActorLoss", "DreamerV3ValueLoss", "DreamerV3Loss"):
        theirs = inspect.signature(getattr(torchrl.objectives, name).__init__).parameters
        ours = inspect.signature(getattr(torchdreamer, name).__init__).parameters
        assert all(theirs[n].default == ours[n].default for n in theirs), name
    assert " default |" not in page[page.index("## Differences from TorchRL") :]
    assert "DreamerV3ModelLoss.official(" in page
