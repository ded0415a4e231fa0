"""The README is a guide and figures have one owner: generated blocks equal their results, the README stays short,
types no measured figure outside its blocks, and every link in it and in docs/ points at something that exists."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from _readme import BLOCK, blocks, generated, result_body  # noqa: E402
from demo_report import demo_markdown, load_report  # noqa: E402

README = REPO / "README.md"
MAX_LINES = 400
# The one section whose numbers are specification (bounds, timeouts, sizes), not measurements.
SPEC_SECTION = "## Limits and security"
# A measured figure: a percentage, a duration, a rate, a size, or a speed-up/ratio. Version numbers (Python 3.11,
# onnxruntime 1.32), counts (16 images, 32000 pieces), flags (--min-agreement 0.97, -k 10) and model names carry no
# unit, so they pass.
FIGURE = re.compile(
    r"(?<![\w.])\d[\d,.]*\s?(?:"
    r"%"  # 89%, 97.8 %
    r"|(?:ms|µs|us|s|sec|seconds?|min|minutes?|h|hours?)\b"  # 0.26 ms, 381 s, 6 minutes
    r"|(?:[kMG]i?B|bytes)\b"  # 41 MB, 305 MiB
    r"|(?:img|samples?|req|requests|calls|queries|tokens|GFLOP)/s\b"  # 349 samples/s
    r"|×|x\s+(?:faster|slower|smaller|larger)\b"  # 25×, 1.4x faster
    r")",
    re.I,
)
# Deliberate exceptions outside the Limits section: {figure as typed: why it is not a measurement}. None today: rules
# such as export's cosine floor (0.9999) and --min-agreement (0.97) are typed without a unit, and the demo's interval
# level (95%) is stated by its generated block.
ALLOWED: dict[str, str] = {}


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def prose_outside_blocks_and_limits(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the README outside generated blocks and outside the Limits section."""
    spans = [(text.count("\n", 0, m.start()), text.count("\n", 0, m.end())) for m in BLOCK.finditer(text)]
    out, in_spec = [], False
    for number, line in enumerate(text.splitlines()):
        if line.startswith("## "):
            in_spec = line.strip() == SPEC_SECTION
        if in_spec or any(start <= number <= end for start, end in spans):
            continue
        out.append((number + 1, line))
    return out


def typed_figures(text: str) -> list[str]:
    """Every measured-looking figure typed outside blocks and the Limits section, as 'line N: match'."""
    found = []
    for number, line in prose_outside_blocks_and_limits(text):
        for m in FIGURE.finditer(line):
            if not any(allowed in m.group(0) for allowed in ALLOWED):
                found.append(f"line {number}: {m.group(0)!r} in {line.strip()[:80]!r}")
    return found


def test_readme_result_blocks_equal_their_results():
    found = blocks(readme_text())
    assert "quality_gate" in found, "the README's quality-gate section shows the gate's measured distributions"
    assert "demo_report" in found, "the README's results section quotes the demo's headline"
    missing = [name for name in found if not (REPO / "benchmarks" / "results" / f"{name}.md").is_file()]
    assert not missing, "results not written yet (run their script): " + ", ".join(f"results/{n}.md" for n in missing)
    stale = [name for name, body in found.items() if body != result_body(name)]
    assert not stale, f"README blocks {', '.join(stale)} are stale: run python benchmarks/run_all.py --gather"


def test_readme_is_a_guide_of_at_most_400_lines():
    lines = len(generated(readme_text()).splitlines())  # counted with every block filled from its results
    assert lines <= MAX_LINES, f"README.md has {lines} lines (at most {MAX_LINES}): move details to docs/"


def test_readme_types_no_measured_figure():
    found = typed_figures(readme_text())
    assert not found, "measured figures belong in generated blocks, BENCHMARKS.md or docs/:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "line",
    ["keeps 89–92% of the teacher", "in 6–7 minutes", "381 s in all", "0.26 ms", "41 MB", "349 samples/s",
     "int8 25× faster", "1.4x faster", "(16 s on a quieter day)"],
)  # fmt: skip
def test_the_figure_pattern_catches_measurements(line):
    assert FIGURE.search(line), line


@pytest.mark.parametrize(
    "line",
    ["Python 3.11, x86_64", "onnxruntime 1.32", "--vocab-size 32000", "--min-agreement 0.97", "-k 10",
     "`mnv4s-text6` at 224 px", "seeds 0–4", "ViT-B-32", "opset 18", "`DCCLIP_GATE_SEED=3`", "1/2 to 1/8 scale"],
)  # fmt: skip
def test_the_figure_pattern_lets_versions_flags_and_counts_pass(line):
    assert not FIGURE.search(line), line


def test_the_limits_section_and_blocks_are_exempt():
    limits = "## Limits and security\n\n- 20 MiB per request, 15 s\n\n"
    text = limits + "## Next\n\n<!-- results:x -->\n3 ms\n<!-- /results:x -->\n"
    assert typed_figures(text) == []
    assert typed_figures(text + "took 3 ms\n") == ["line 10: '3 ms' in 'took 3 ms'"]


LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for a markdown file's headings (lower case, punctuation dropped, spaces to hyphens)."""
    anchors = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and not line.startswith("#!"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def markdown_files() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_links_point_at_files_and_headings_that_exist(doc):
    broken = []
    text = doc.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold no links
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http(s): and other schemes are not checked offline
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)


def fake_report() -> dict:
    """The part of a demo report.json that the headline uses (what dcclip.demo.report.headline writes)."""
    teacher = {"top1": 0.6, "ci95": [0.55, 0.65], "n": 900, "chance": 1 / 90, "above_chance": True}
    summary = {"min": 0.8, "min_lang": "hi", "mean": 0.9, "langs": 10}
    head = {"teacher_en": teacher, "retention": {"student stage 1": summary, "student stage 2": summary}}
    settings = {"seed": 0, "train_samples": 6000, "eval_samples": 900, "image_size": 48, "distill_steps": 1000}
    return {"headline": {"zeroshot_shapes": head}, "settings": settings, "seconds": {"steps": {"world": 1.0}}}


def test_demo_report_quotes_the_headline_and_how_it_was_measured():
    text = demo_markdown(fake_report(), {"cpu": "Test CPU", "cores": 2})
    assert text.startswith("| eval set | teacher, English prompts |")
    assert "| colour × shape | 60.0%" in text and "80.0% (hi) · 90.0%" in text
    assert "seed 0" in text and "6000 training images" in text and "Test CPU (2 cores)" in text
    assert "the machine that gathered this file" in text  # the report names no machine: said, not hidden
    named = demo_markdown({**fake_report(), "machine": {"cpu": "Board", "cores": 4}}, {"cpu": "x", "cores": 1})
    assert "Board (4 cores)" in named and "gathered" not in named


def test_demo_report_refuses_a_missing_or_old_report(tmp_path):
    with pytest.raises(ValueError, match="make demo"):
        load_report(tmp_path / "report.json")
    (tmp_path / "report.json").write_text(json.dumps({"top1": {}}), encoding="utf-8")
    with pytest.raises(ValueError, match="headline"):
        load_report(tmp_path / "report.json")
