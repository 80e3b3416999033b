"""The library as others install it: the wheel carries ``piggyback_lab`` alone (no package
named ``src``), installs into a fresh virtual environment outside the clone, and there runs
the README's Python API example from another folder; a task it exports is served by the
clone's ``src.predict`` as it is."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT, run_module

# After the README's example: the same logits folded, hosted, and after A -> B -> A.
CHECKS = """
import piggyback_lab, pathlib
assert not pathlib.Path(piggyback_lab.__file__).resolve().is_relative_to(pathlib.Path({root!r}))
task.eval()
with torch.no_grad():
    trained = task(x)
    assert torch.allclose(plain(x), trained, atol=1e-5), (plain(x) - trained).abs().max()
    hosted = host.predict(x, "digits")
    assert torch.allclose(hosted, trained, atol=1e-5)
    other = wrap(copy.deepcopy(base), "bitfit", classifier="classifier", num_classes=3,
                 backbone="efficientnet_lite0")
    export_task(other, "other.safetensors", ["a", "b", "c"], transforms={{"size": 64}})
    host.add_task("other.safetensors")
    assert host.predict(x, "other").shape == (8, 3)
    assert torch.equal(host.predict(x, "digits"), hosted)
print("api ok")
"""


def readme_api_example() -> str:
    """The README's first ``python`` block, verbatim."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "README.md shows no ```python block"
    return blocks[0]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of what the clone tracks (the build leaves nothing in
    the clone)."""
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "-w", str(out), str(tree)], check=True, capture_output=True)
    return next(out.glob("piggyback_lab-*.whl"))


def test_the_wheel_holds_the_library_and_no_package_named_src(wheel: Path) -> None:
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "piggyback_lab" in tops and "src" not in tops
    dist_info = wheel.name.split("-")[0] + "-0.1.0.dist-info"
    assert tops - {"piggyback_lab"} == {"hydra_plugins", dist_info}
    names = zipfile.ZipFile(wheel).namelist()
    assert "piggyback_lab/methods/piggyback/__init__.py" in names
    # the tuning sweeper, in Hydra's plugin namespace (no __init__.py at its top)
    assert "hydra_plugins/piggyback_lab_tuning/tuning_sweeper.py" in names
    assert "hydra_plugins/__init__.py" not in names


@pytest.fixture(scope="module")
def fresh_env(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with the wheel installed; its dependencies (torch and the
    rest) are read from this environment's site-packages, where the clone's editable
    install is not visible (a path line in a .pth file runs no .pth file of that folder)."""
    env = tmp_path_factory.mktemp("env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    subprocess.run([*install, "--no-deps", "--no-index", str(wheel)], check=True)
    return python


def test_the_readme_api_example_runs_from_the_installed_wheel(
    fresh_env: Path, tmp_path: Path
) -> None:
    script = readme_api_example() + CHECKS.format(root=str(ROOT))
    (tmp_path / "example.py").write_text(script)
    proc = subprocess.run(
        [fresh_env, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "api ok" in proc.stdout
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (20 + i, 24), (40 * i, 90, 200)).save(images / f"{i}.png")
    served = run_module(
        "src.predict", f"task={tmp_path / 'digits.safetensors'}", f"images={images}", "topk=2"
    )
    assert served.returncode == 0, served.stderr[-2000:]
    rows = [line for line in served.stdout.splitlines() if line.startswith(str(images))]
    assert len(rows) == 3 and all(len(row.split("\t")[1].split()) == 4 for row in rows)
