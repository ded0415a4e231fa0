"""The installed layout: stages/ and export/ install as dcclip.stages and dcclip.export; nothing else is top-level."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pip_install_puts_only_dcclip_at_top_level(tmp_path):
    target = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target)]
    subprocess.run([*cmd, str(REPO)], check=True, cwd=tmp_path, timeout=300)
    top = sorted(p.name for p in target.iterdir() if p.name != "bin")
    assert [n for n in top if not n.endswith(".dist-info")] == ["dcclip"]
    package = target / "dcclip"
    for sub in ("stages", "export", "configs", "data", "models", "engine", "eval", "runtime", "serve"):
        assert (package / sub / "__init__.py").is_file(), sub
    assert list((package / "configs" / "models").glob("*/*.json")), "model JSONs must ship with the package"
    assert list((package / "configs").glob("*.yaml")), "run configs must ship with the package"
    for name in ("index.html", "app.js", "style.css"):
        assert (package / "serve" / "static" / name).is_file(), f"the web page's {name} must ship with the package"
    probe = "import dcclip.stages, dcclip.export, dcclip.configs as c; print(c.MODEL_CONFIG_DIR)"
    out = subprocess.run(
        [sys.executable, "-c", probe], env={"PYTHONPATH": str(target)}, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert str(target) in out.stdout


def test_current_install_maps_stages_and_export_inside_dcclip(tmp_path):
    probe = (
        "import importlib.util, dcclip.stages, dcclip.export\n"
        "assert importlib.util.find_spec('stages') is None, 'stages must not be importable at the top level'\n"
        "assert importlib.util.find_spec('export') is None, 'export must not be importable at the top level'\n"
        "print(dcclip.stages.__file__); print(dcclip.export.__file__)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    stages_file, export_file = out.stdout.split()
    assert Path(stages_file).parent.name == "stages" and Path(export_file).parent.name == "export"


def test_every_package_folder_is_listed_for_installation():
    """pyproject lists packages one by one: a new sub-package missing there imports here but not from a wheel."""
    import tomllib

    from dcclip.tools.layout import module_name, source_files

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]["packages"])
    packages = {module_name(path, REPO) for path in source_files(REPO) if path.name == "__init__.py"}
    assert packages <= listed, sorted(packages - listed)
