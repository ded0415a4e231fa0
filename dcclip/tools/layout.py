"""The floors of dcclip, declared once, and a check that no module imports from a floor above its own.

A room (``dcclip/<room>/`` or ``dcclip/<room>.py``; ``stages/`` and ``export/`` install as ``dcclip.stages`` and
``dcclip.export``) may import from its own floor and the floors below it. Imports inside functions count too: a lazy
import still ties the lower room to the higher one. ``python -m dcclip.tools.layout`` prints every violation and exits
1 when there is one.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Ground floor first. The runtime is the torch-free inference contract everything else builds on.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("__init__", "configs", "io", "runtime"),
    ("config", "checkpoint"),
    ("data",),
    ("models", "losses", "search"),
    ("engine",),
    ("eval",),
    ("export", "stages"),
    ("serve",),
    ("demo", "tools"),
    ("cli", "__main__"),
)
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}
ROOM_NAMES = frozenset(FLOOR) - {"__init__"}
# Third-party packages a room must never import (the runtime, index building and the server run without torch).
FORBIDDEN = {"runtime": ("torch", "torchvision", "timm", "open_clip"), "search": ("torch",), "serve": ("torch",)}
# Source folders of the installed package: import prefix -> folder relative to the repository root.
SOURCES = {"dcclip": "dcclip", "dcclip.stages": "stages", "dcclip.export": "export", "dcclip.configs": "configs"}


@dataclass(frozen=True)
class Violation:
    """One import that runs against the floors."""

    path: str
    line: int
    room: str
    imported: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.room} imports {self.imported}: {self.reason}"


def room_of_module(module: str) -> str | None:
    """The room of a dotted module name inside dcclip (``dcclip.data.shards`` -> ``data``), or None if outside."""
    parts = module.split(".")
    if parts[0] != "dcclip":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, repo: Path) -> str:
    """Installed dotted name of a source file (``stages/align.py`` -> ``dcclip.stages.align``)."""
    relative = path.relative_to(repo)
    for prefix, folder in sorted(SOURCES.items(), key=lambda item: -len(item[1])):
        if relative.parts[0] == folder:
            parts = [*prefix.split("."), *relative.parts[1:]]
            parts[-1] = parts[-1].removesuffix(".py")
            return ".".join(p for p in parts if p != "__init__") or prefix
    raise ValueError(f"{relative} is not inside a dcclip source folder")


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute module) for every import in a module, relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "dcclip":  # `from dcclip import data` names a room; `from dcclip import __version__` does not
                for alias in node.names:
                    yield node.lineno, f"dcclip.{alias.name}" if alias.name in ROOM_NAMES else "dcclip"
            else:
                yield node.lineno, base


def check_file(path: Path, repo: Path) -> list[Violation]:
    """Violations of one source file."""
    module = module_name(path, repo)
    room = room_of_module(module)
    if room not in FLOOR:
        return [Violation(str(path.relative_to(repo)), 1, str(room), module, "room has no floor in FLOORS")]
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    found = []
    for line, imported in imported_modules(tree, module, path.name == "__init__.py"):
        where = str(path.relative_to(repo))
        target = room_of_module(imported)
        top = imported.split(".")[0]
        if top in FORBIDDEN.get(room, ()):
            found.append(Violation(where, line, room, imported, f"{room} must not depend on {top}"))
        if target is None or target == room:
            continue
        if target not in FLOOR:
            found.append(Violation(where, line, room, imported, f"unknown room {target!r}"))
        elif FLOOR[target] > FLOOR[room]:
            found.append(Violation(where, line, room, imported, f"floor {FLOOR[target]} is above floor {FLOOR[room]}"))
    return found


def source_files(repo: Path) -> list[Path]:
    """Every Python file that installs as part of dcclip."""
    return sorted(
        p for folder in SOURCES.values() for p in (repo / folder).rglob("*.py") if "__pycache__" not in p.parts
    )


def check(repo: Path) -> list[Violation]:
    """All violations in the repository at ``repo``."""
    return [v for path in source_files(repo) for v in check_file(path, repo)]


def main(argv: list[str] | None = None) -> int:
    repo = Path(argv[0]) if argv else Path(__file__).resolve().parents[2]
    violations = check(repo)
    for violation in violations:
        print(violation)
    floors = " < ".join("/".join(rooms) for rooms in FLOORS)
    print(f"{len(violations)} import(s) against the floors ({floors})")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
