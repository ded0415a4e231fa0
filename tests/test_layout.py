"""The floors of dcclip: no module imports from a room above its own, and the checker really catches one that does."""

from __future__ import annotations

from pathlib import Path

from dcclip.tools import layout

REPO = Path(__file__).resolve().parents[1]


def test_no_module_imports_from_a_higher_floor():
    violations = layout.check(REPO)
    assert not violations, "\n".join(map(str, violations))


def test_every_room_of_the_package_has_a_floor():
    rooms = {layout.room_of_module(layout.module_name(path, REPO)) for path in layout.source_files(REPO)}
    assert rooms <= set(layout.FLOOR), rooms - set(layout.FLOOR)


def _fake_repo(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")
    for folder in layout.SOURCES.values():
        (tmp_path / folder).mkdir(exist_ok=True)
    return tmp_path


def test_upward_imports_are_found_whether_absolute_relative_lazy_or_from_the_package(tmp_path):
    repo = _fake_repo(
        tmp_path,
        {
            "dcclip/__init__.py": "__version__ = '0'\n",
            "dcclip/runtime/__init__.py": "",
            "dcclip/runtime/a.py": "from dcclip.engine import loop\n",
            "dcclip/runtime/b.py": "def f():\n    from ..models import students\n",
            "dcclip/runtime/c.py": "from dcclip import eval\nfrom dcclip import __version__\n",
            "dcclip/runtime/d.py": "import torch\n",
            "dcclip/engine/loop.py": "from dcclip.runtime import a\nfrom dcclip.models import students\n",
            "stages/x.py": "from dcclip.demo import run\n",
        },
    )
    found = {(v.path, v.imported) for v in layout.check(repo)}
    assert found == {
        ("dcclip/runtime/a.py", "dcclip.engine"),
        ("dcclip/runtime/b.py", "dcclip.models"),
        ("dcclip/runtime/c.py", "dcclip.eval"),
        ("dcclip/runtime/d.py", "torch"),
        ("stages/x.py", "dcclip.demo"),
    }


def test_the_command_exits_non_zero_and_names_the_line(tmp_path, capsys):
    repo = _fake_repo(tmp_path, {"dcclip/data/x.py": "import os\n\nfrom dcclip.eval import report\n"})
    assert layout.main([str(repo)]) == 1
    assert "dcclip/data/x.py:3: data imports dcclip.eval: floor 5 is above floor 2" in capsys.readouterr().out
