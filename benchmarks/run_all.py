"""`make bench`: run every benchmark script here, then gather their tables into BENCHMARKS.md.

python benchmarks/run_all.py            # run everything (about half an hour on 2 cores), then gather
python benchmarks/run_all.py --gather   # only rebuild BENCHMARKS.md and the README's result blocks from results/
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine
from _readme import refresh

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def scripts() -> list[Path]:
    return sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_") and p.name != "run_all.py")


def main() -> int:
    failed = []
    for script in [] if "--gather" in sys.argv[1:] else scripts():
        print(f"== {script.name}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(script)], cwd=ROOT)
        print(f"== {script.name}: exit {code} in {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(script.name)
    info = machine()
    parts = [
        "# Benchmarks\n",
        f"Measured with `make bench` on {info['cpu']} ({info['cores']} cores), Python {info['python']}; "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        + ". Every figure is compared side by side with its baseline in the same run.\n",
    ]
    parts += [p.read_text(encoding="utf-8") for p in sorted(RESULTS.glob("*.md"))]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts), encoding="utf-8")
    for name in refresh(ROOT / "README.md"):
        print(f"README: block {name} rewritten from results/{name}.md")
    if failed:
        print("failed:", ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
