"""A non-editable install (the wheel) carries every package and the Hydra tree and runs."""
from __future__ import annotations

import ast
import glob
import os
import re
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_contains_packages_and_configs_and_launches(tmp_path, prepared_demo):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", REPO,
                    "-w", str(tmp_path / "wheel")], check=True, timeout=300, capture_output=True)
    (wheel,) = glob.glob(str(tmp_path / "wheel" / "*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(site)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    with zipfile.ZipFile(wheel) as z:
        requires = {_normal(re.match(r"Requires-Dist: ([A-Za-z0-9._-]+)", line).group(1))
                    for line in z.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")
                    and "extra ==" not in line}
    assert _declared() <= requires  # what pip installs with the wheel on a fresh machine
    for needed in ("conf/train.yaml", "conf/precision/auto.yaml", "conf/prepare.yaml", "conf/model/bert-base.yaml", "conf/parallel/zero3.yaml",
                   "launch/worker.py", "pretrain/model/pretraining.py", "parallel/engine.py",
                   "slurm/pretrain.sbatch", "conf/cluster/slurm.yaml"):
        assert needed in names, needed
    env = dict(os.environ, PYTHONPATH=str(site))
    code = ("import launch, sys; assert launch.__file__.startswith(sys.argv[1]), launch.__file__; "
            "sys.argv = ['pretrain-launch', 'run.name=w', 'run.dry_run=true', 'data.path=' + sys.argv[2]]; "
            "from launch.train import main; main()")
    result = subprocess.run([sys.executable, "-c", code, str(site), prepared_demo], cwd=str(tmp_path),
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert "torch.distributed.run" in result.stdout


# Imports of the shipped packages vs the dependencies pyproject.toml declares: a module that is
# imported but not declared works in this venv and breaks a plain `pip install .` elsewhere.
SHIPPED = ("pretrain", "parallel", "launch", "conf")
# Optional features and the files that may import their extra's distributions
# (`pip install ".[finetune]"`); every other file runs with the core dependencies alone.
EXTRA_SCOPES = {"finetune": ("pretrain/finetune/", "launch/finetune.py"), "flash": ("pretrain/model/attention.py",)}
# Optional extras that need hardware this machine lacks (CUDA): their distribution by module.
NOT_INSTALLABLE_HERE = {"flash_attn": "flash-attn"}


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def _names(requirements) -> set[str]:
    return {_normal(re.match(r"[A-Za-z0-9._-]+", d).group(0)) for d in requirements}


def _declared() -> set[str]:
    return _names(_project()["dependencies"])


def _allowed(path: str) -> set[str]:
    """The distributions `path` may import: the core ones, plus its feature's extra."""
    allowed = _declared()
    extras = _project().get("optional-dependencies", {})
    for extra, scopes in EXTRA_SCOPES.items():
        if path.startswith(scopes):
            allowed |= _names(extras[extra])
    return allowed


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level() -> dict[str, set[str]]:
    """Top-level module -> files importing it, over every .py of the shipped packages (imports
    inside functions too: they run in the same installs)."""
    found: dict[str, set[str]] = {}
    for package in SHIPPED:
        for path in glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True):
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(os.path.relpath(path, REPO))
    return found


def test_every_third_party_import_is_a_declared_dependency():
    from importlib.metadata import packages_distributions

    to_dist = packages_distributions()
    undeclared = {}
    for module, files in sorted(_imported_top_level().items()):
        if module in sys.stdlib_module_names or module in SHIPPED or module == "__future__":
            continue
        dists = {_normal(d) for d in to_dist.get(module, [])} or (
            {NOT_INSTALLABLE_HERE[module]} if module in NOT_INSTALLABLE_HERE else set())
        assert dists, f"{module} (imported by {sorted(files)[0]}) is not installed here: which distribution is it?"
        offending = [f for f in sorted(files) if not dists & _allowed(f)]
        if offending:
            undeclared[module] = offending
    assert not undeclared, f"imported but not in pyproject.toml dependencies (or the file's extra): {undeclared}"
    assert {"psutil", "braceexpand", "transformers"} <= _declared()
    assert "peft" not in _allowed("launch/train.py") and "peft" in _allowed("pretrain/finetune/methods/lora.py")


def test_the_check_sees_imports_inside_functions():
    imported = _imported_top_level()
    assert "psutil" in imported and "launch/agent.py" in imported["psutil"]  # imported inside a function
    assert "braceexpand" in imported and "torch" in imported
