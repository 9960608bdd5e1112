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
    # The two commands come first: both on the README's first screen.
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:50])
    assert main_job in first_screen and test_command in first_screen
    assert main_job.startswith("pip install torch==2.13.0 && ")
    assert test_command.startswith("pip install torch==2.13.0 && ")
    assert test_command.endswith("python -m pytest")
    ci = (ROOT / ".ci/run").read_text()
    assert f"TEST_COMMAND='{test_command}'" in ci
    assert 'bash -c "$TEST_COMMAND"' in ci
    assert '"$status" -eq 5' in ci  # "no tests collected" fails the run


#: The README's layout, bottom up: a module may import its own folder and the layers below;
#: folders of one layer stay apart (the TorchRL adapters and the training side both stand
#: on the recipe, neither on the other).
LAYERS = {
    "keys": 0,
    "functional": 0,
    "modules": 1,
    "envs": 1,
    "dreamer": 2,
    "objectives": 3,
    "training": 3,
    "cli": 4,
}


def _layer_of(module: str) -> str | None:
    """The layer of ``torchdreamer.<part>...``; None for the package facade itself."""
    parts = module.split(".")
    if parts[0] != "torchdreamer" or len(parts) == 1:
        return None
    return "cli" if parts[1] == "__main__" else parts[1]


def _imports(path: Path, package: str = "torchdreamer") -> list[tuple[int, str]]:
    """Every ``package`` module ``path`` imports, wherever the import statement stands."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == package:  # `from torchdreamer import keys`
                found += [(node.lineno, f"{package}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] == package]


def test_nothing_imports_upward_and_the_two_middle_layers_stay_apart():
    package = ROOT / "torchdreamer"
    violations = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(ROOT).with_suffix("")
        own = _layer_of(".".join(relative.parts))
        if own is None or own == "__init__":  # the facade re-exports every layer
            continue
        for line, name in _imports(path):
            target = _layer_of(name)
            if target is None or target == own:
                if target is None:
                    violations.append(f"{relative}:{line} imports the facade {name}")
                continue
            upward = LAYERS[target] > LAYERS[own]
            sideways = LAYERS[target] == LAYERS[own]  # modules <-> envs, objectives <-> training
            if upward or sideways:
                violations.append(f"{relative}:{line} ({own}) imports {name} ({target})")
    assert not violations, "\n".join(violations)
    # The check sees the imports it polices, those inside functions (lazy) included.
    seen = {_layer_of(name) for _, name in _imports(package / "cli.py")}
    assert "training" in seen


def test_collectives_stay_in_training():
    # The math, the losses and the networks are single-process code: data-parallel
    # pooling reaches them as callables (e.g. ReturnScale's reduce=).
    package = ROOT / "torchdreamer"
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for folder in ("functional", "modules", "dreamer", "objectives")
        for path in sorted((package / folder).rglob("*.py"))
        for line, name in _imports(path, package="torch")
        if name.startswith("torch.distributed")
    ]
    assert not offenders, "\n".join(offenders)
    seen = {name for _, name in _imports(package / "training" / "distributed.py", "torch")}
    assert "torch.distributed" in seen  # the check sees such imports where they are


#: Modules on their way to another package folder (issue 36: the environments get their
#: own, torchdreamer/envs/); the check fails once one has moved, so that its entry goes too.
def _references(path: Path) -> set[str]:
    """Every dotted ``torchdreamer`` name a file imports or reaches through an imported
    module (``torchdreamer.DreamerV3ValueLoss`` after ``import torchdreamer``)."""
    import ast

    names = {name for _, name in _imports(path)}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Attribute):
            parts = []
            while isinstance(node, ast.Attribute):
                parts.append(node.attr)
                node = node.value
            if isinstance(node, ast.Name):
                names.add(".".join([node.id, *reversed(parts)]))
    if "torchdreamer" in names:  # the facade, passed around: `ns.DreamerV3Loss(...)`
        import torchdreamer

        read = {
            node.attr
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute)
        }
        names |= {f"torchdreamer.{name}" for name in read & set(torchdreamer.__all__)}
    return {name for name in names if name.split(".")[0] == "torchdreamer"}


def _home(name: str) -> str | None:
    """Where ``name`` is defined: its package folder (``functional``, ``training``, ...) or
    its top-level module (``cli``, ``keys``); None for the facade ``torchdreamer`` itself."""
    import importlib
    import inspect

    parts = name.split(".")
    cut = next(n for n in range(len(parts), 0, -1) if _importable(".".join(parts[:n])))
    module = importlib.import_module(".".join(parts[:cut]))
    for attribute in parts[cut:]:
        value = getattr(module, attribute)
        if not inspect.ismodule(value):
            defined = getattr(value, "__module__", None)  # a re-exported class or function
            if isinstance(defined, str) and defined.startswith("torchdreamer."):
                module = importlib.import_module(defined)
            break
        module = value
    return module.__name__.split(".")[1] if "." in module.__name__ else None


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _homes(path: Path) -> set[str]:
    return {home for name in _references(path) if (home := _home(name)) is not None}


def test_the_tests_mirror_the_package_folders():
    tests = ROOT / "tests"
    packages = {path.parent.name for path in (ROOT / "torchdreamer").glob("*/__init__.py")}
    folders = {path.parent.name for path in tests.glob("*/test_*.py")}
    assert folders == packages, (
        f"test folders {sorted(folders)} against torchdreamer's {sorted(packages)}: "
        "each package folder's tests go in tests/<folder>/ (tests/README.md)"
    )
    misplaced = []
    for path in sorted(tests.glob("*/test_*.py")):
        homes = _homes(path)
        if path.parent.name not in homes:
            misplaced.append(f"{path.relative_to(ROOT)} imports from {sorted(homes)} only")
    for path in sorted(tests.glob("test_*.py")):
        homes = _homes(path)
        if len(homes) == 1 and homes <= packages:
            misplaced.append(f"{path.relative_to(ROOT)} tests torchdreamer/{homes.pop()}/ only")
    assert not misplaced, "a test file sits away from what it tests:\n" + "\n".join(misplaced)
    # The check sees what a file tests through the facade and through lazy imports.
    assert _homes(tests / "functional" / "test_kl.py") == {"functional"}
    assert "objectives" in _homes(tests / "objectives" / "test_torchrl_identical.py")
    assert _homes(tests / "test_cli.py") >= {"cli", "training"}
