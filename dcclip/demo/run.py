"""``dcclip demo``: the whole pipeline, offline, on the built-in toy world, with a report at the end.

toy world -> stand-in teacher (English only) -> tokenizer -> stage 1 distill -> stage 2 align -> export fp32 + int8
-> evaluation (teacher vs students vs ONNX, every language) -> speed/size -> report.

Both stages run the small stand-in teacher online on augmented views (see configs/demo.yaml), so the demo has no
cache-teacher step; `dcclip cache-teacher` is the path for large teachers and unaugmented training.

Every step is keyed by its settings and by the steps it depends on: a re-run reuses finished steps, a changed setting
re-runs that step and everything after it, and a step that broke is continued (training resumes from its last
checkpoint). ``--fresh`` starts over.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcclip.io import write_json_atomic
from dcclip.runtime.constants import TOKENIZER_FILE

STATE_FILE = "steps.json"
EVAL_SETS = ("shapes", "digits")
DEMO_STUDENT = "demo-student"  # configs/demo.yaml's student.model


class DemoStepError(RuntimeError):
    """A demo step failed; the message names the step, and a re-run continues from it."""


@dataclass(frozen=True)
class DemoSettings:
    """The demo's knobs; every figure in the report follows from these."""

    out: Path
    train_samples: int = 6000
    eval_samples: int = 900  # per eval set: 10 images per class for the 90 shape classes, 90 per digit
    teacher_image_steps: int = 1400
    teacher_text_steps: int = 80
    distill_steps: int = 1000
    align_steps: int = 75
    vocab_size: int = 4000
    seed: int = 0
    teacher_batch_size: int = 128
    image_size: int = 48  # input side of teacher and student (the CI gate runs at 32: 0.5x the cost per step)
    # False: zero-shot only (no retrieval / alignment eval, no speed and size step), for the CI quality gate
    full_report: bool = True
    eval_langs: tuple[str, ...] | None = None  # languages of the zero-shot evals (None: all the world has)
    exporter: str = "auto"  # `dcclip export --exporter`; the gate uses TorchScript (2.4x faster, same parity checks)
    # the student architecture (a registered name or a JSON path), trained at ``image_size`` whatever its own size:
    # the student family's retention figures come from the demo recipe run on each member
    student: str = DEMO_STUDENT
    # extra dotted config overrides per stage ({"distill": [...], "align": [...]}), e.g. for ablations
    overrides: dict[str, list[str]] = field(default_factory=dict)

    def paths(self) -> dict[str, Path]:
        names = ("world", "teacher", "tokenizer", "distill", "align", "bundle", "eval", "bench")
        return {name: self.out / name for name in names}


@dataclass
class Step:
    """One stage of the demo: what it does, the settings that define its output, and how to run it."""

    name: str
    title: str
    settings: dict[str, Any]
    run: Callable[[], dict[str, Any]]
    outputs: list[Path] = field(default_factory=list)
    depends: list[str] = field(default_factory=list)


class StepRunner:
    """Run steps in order, skipping those already done with the same key; state lives in ``steps.json``."""

    def __init__(self, out: Path, fresh: bool):
        self.out = out
        if fresh and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / STATE_FILE
        self.state: dict[str, Any] = json.loads(self.path.read_text("utf-8")) if self.path.is_file() else {}
        self.keys: dict[str, str] = {}

    def key(self, step: Step) -> str:
        payload = {"settings": step.settings, "depends": [self.keys[d] for d in step.depends]}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def run(self, step: Step, index: int, total: int) -> dict[str, Any]:
        key = self.keys[step.name] = self.key(step)
        record = self.state.get(step.name, {})
        header = f"[{index}/{total}] {step.title}"
        if record.get("key") == key and record.get("status") == "done" and all(p.exists() for p in step.outputs):
            print(f"{header}: reused ({record['seconds']:.0f} s when it ran)", flush=True)
            return record["summary"]
        if record.get("key") != key:  # new settings: outputs of an older run would be resumed by mistake
            for path in step.outputs:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        print(f"{header} ...", flush=True)
        self._save(step.name, {"key": key, "status": "running"})
        start = time.perf_counter()
        try:
            summary = step.run()
        except Exception as exc:
            self._save(step.name, {"key": key, "status": "failed", "error": str(exc)})
            raise DemoStepError(f"step '{step.name}' ({step.title}) failed: {exc}") from exc
        seconds = time.perf_counter() - start
        self._save(step.name, {"key": key, "status": "done", "seconds": seconds, "summary": summary})
        print(f"{header}: done in {seconds:.1f} s", flush=True)
        return summary

    def _save(self, name: str, record: dict[str, Any]) -> None:
        self.state[name] = record
        write_json_atomic(self.path, self.state)

    def seconds(self) -> dict[str, float]:
        return {name: rec.get("seconds", 0.0) for name, rec in self.state.items() if rec.get("status") == "done"}


# --- the steps -------------------------------------------------------------------------------------------------------
def step_world(s: DemoSettings) -> dict[str, Any]:
    from dcclip.data.world import generate_world

    return generate_world(s.paths()["world"], s.train_samples, seed=s.seed, eval_samples=s.eval_samples, progress=True)


def step_teacher(s: DemoSettings) -> dict[str, Any]:
    from dcclip.demo.teacher import TeacherRecipe, train_demo_teacher

    recipe = TeacherRecipe(
        image_steps=s.teacher_image_steps, text_steps=s.teacher_text_steps, batch_size=s.teacher_batch_size,
        seed=s.seed, image_size=s.image_size,
    )  # fmt: skip
    return train_demo_teacher(s.paths()["world"], s.paths()["teacher"], recipe)


def step_tokenizer(s: DemoSettings) -> dict[str, Any]:
    from dcclip.data.shards import iter_captions
    from dcclip.models.tokenizers import TextTokenizer, train_tokenizer

    path = train_tokenizer(iter_captions(s.paths()["world"] / "train"), s.vocab_size, s.paths()["tokenizer"])
    return {"path": str(path), "vocab_size": TextTokenizer.from_path(path).vocab_size}


def teacher_spec(s: DemoSettings) -> str:
    return f"openclip:{s.paths()['teacher']}"


def run_config(s: DemoSettings, name: str, out: Path, steps: int, extra: list[str] | None = None):
    """A shipped config (demo / demo-align) pointed at this demo's directories."""
    from dcclip.config import load_config

    p = s.paths()
    overrides = [
        f"data.train={p['world'] / 'train'}",
        f"teacher.spec={teacher_spec(s)}",
        f"student.tokenizer={p['tokenizer'] / TOKENIZER_FILE}",
        f"train.out_dir={out}",
        f"train.steps={steps}",
        f"train.seed={s.seed}",
        "train.resume=auto",
        *(extra or []),
    ]
    return load_config(name, overrides)


def student_arch(s: DemoSettings) -> list[str]:
    """The student at ``s.image_size``: the named architecture, or a copy of it at the demo's input size."""
    from dcclip.models.students import load_student_config

    arch, _ = load_student_config(s.student)
    if arch["image"]["image_size"] == s.image_size:
        return [] if s.student == DEMO_STUDENT else [f"student.model={s.student}"]
    arch["image"]["image_size"] = s.image_size
    path = s.paths()["distill"].parent / f"{Path(s.student).stem}-{s.image_size}px.json"
    write_json_atomic(path, arch)
    return [f"student.model={path}"]


def step_distill(s: DemoSettings) -> dict[str, Any]:
    from dcclip.stages.distill import run

    extra = [*student_arch(s), *s.overrides.get("distill", [])]
    return run(run_config(s, "demo", s.paths()["distill"], s.distill_steps, extra))


def step_align(s: DemoSettings) -> dict[str, Any]:
    from dcclip.stages.align import run

    extra = [f"train.init={s.paths()['distill']}", *s.overrides.get("align", [])]
    return run(run_config(s, "demo-align", s.paths()["align"], s.align_steps, extra))


def step_export(s: DemoSettings) -> dict[str, Any]:
    from dcclip.export.bundle import export_bundle

    p = s.paths()
    manifest = export_bundle(
        p["align"],
        p["bundle"],
        precision="both",
        calib_shards=str(p["world"] / "train"),
        eval_set=[p["world"] / "eval" / name for name in EVAL_SETS],  # int8 judged on shapes and digits
        exporter=s.exporter,
    )
    return {"bundle": str(p["bundle"]), "parity": manifest.get("parity", {})}


def eval_models(s: DemoSettings) -> tuple[list[str], list[str]]:
    """References and report names of every model the demo compares."""
    p = s.paths()
    refs = [teacher_spec(s), str(p["distill"]), str(p["align"]), str(p["bundle"]), f"{p['bundle']}@int8"]
    names = ["teacher", "student stage 1", "student stage 2", "student ONNX fp32", "student ONNX int8"]
    return refs, names


def step_eval(s: DemoSettings) -> dict[str, Any]:
    from dcclip.eval.models import RememberedTexts, load_model
    from dcclip.eval.report import run_eval

    p = s.paths()
    refs, names = eval_models(s)
    reports = {}
    langs = list(s.eval_langs) if s.eval_langs else None
    for dataset in EVAL_SETS:
        reports[f"zeroshot_{dataset}"] = run_eval(
            "zeroshot", refs, p["world"] / "eval" / dataset, langs, p["eval"] / f"zeroshot_{dataset}", names=names
        )
    if s.full_report:  # both passes read the same captions: each model is loaded once and embeds each caption once
        shared = [RememberedTexts(load_model(ref, name=name)) for ref, name in zip(refs[:3], names[:3], strict=True)]
        for task in ("retrieval", "alignment"):
            reports[task] = run_eval(
                task, shared, p["world"] / "eval" / "retrieval", None, p["eval"] / task, names=names[:3]
            )
    return {name: {"results": r["results"], "mean": r["mean"]} for name, r in reports.items()}


def step_bench(s: DemoSettings) -> dict[str, Any]:
    from dcclip.demo.report import measure_speed_and_size

    figures = measure_speed_and_size(
        s.paths()["teacher"], s.paths()["bundle"], onnx_dir=s.paths()["bench"] / "teacher_onnx"
    )
    s.paths()["bench"].mkdir(parents=True, exist_ok=True)
    write_json_atomic(s.paths()["bench"] / "speed_size.json", figures)
    return figures


def build_steps(s: DemoSettings) -> list[Step]:
    """The demo's steps in order, each with the settings that define its output and what it depends on."""
    p = s.paths()
    world = {"train": s.train_samples, "eval": s.eval_samples, "seed": s.seed}
    return [
        Step("world", "toy world: shards + eval sets", world, lambda: step_world(s), [p["world"]]),
        Step("teacher", "demo teacher (English captions only)",
             {"image_steps": s.teacher_image_steps, "text_steps": s.teacher_text_steps,
              "batch_size": s.teacher_batch_size, "image_size": s.image_size}, lambda: step_teacher(s), [p["teacher"]],
             ["world"]),
        Step("tokenizer", "multilingual tokenizer", {"vocab": s.vocab_size}, lambda: step_tokenizer(s),
             [p["tokenizer"]], ["world"]),
        Step("distill", "stage 1: feature distillation",
             {"steps": s.distill_steps, "extra": s.overrides.get("distill"),
              **({"student": s.student} if s.student != DEMO_STUDENT else {})}, lambda: step_distill(s), [p["distill"]],
             ["teacher", "tokenizer"]),
        Step("align", "stage 2: contrastive alignment", {"steps": s.align_steps, "extra": s.overrides.get("align")},
             lambda: step_align(s), [p["align"]], ["distill"]),
        Step("export", "export ONNX bundle (fp32 + int8)", {"exporter": s.exporter}, lambda: step_export(s),
             [p["bundle"]], ["align"]),
        Step("eval", "evaluate teacher vs students, every language", {"full": s.full_report, "langs": s.eval_langs},
             lambda: step_eval(s), [p["eval"]], ["export"]),
        *([Step("bench", "speed and size: teacher vs student", {}, lambda: step_bench(s), [p["bench"]], ["export"])]
          if s.full_report else []),
    ]  # fmt: skip


def run_demo(settings: DemoSettings, fresh: bool = False) -> dict[str, Any]:
    """Run (or continue) the demo and write ``report.md`` / ``report.json``; returns the report."""
    from dcclip.demo.report import print_summary, write_report

    runner = StepRunner(settings.out, fresh)
    steps = build_steps(settings)
    summaries = {}
    started = time.perf_counter()
    for index, step in enumerate(steps, 1):
        summaries[step.name] = runner.run(step, index, len(steps))
    report = write_report(settings, summaries, runner.seconds(), time.perf_counter() - started)
    from dcclip.export.card import update_card  # the bundle's MODEL_CARD.md gains the figures just measured

    update_card(settings.paths()["bundle"], settings.out / "report.json")
    print_summary(report)
    return report


def main_entry(settings: DemoSettings, fresh: bool) -> int:
    """CLI wrapper: a failed step prints its name and error, and the exit code says so."""
    try:
        run_demo(settings, fresh)
    except DemoStepError as exc:
        traceback.print_exception(exc.__cause__, file=sys.stderr, limit=-3)
        print(f"\ndcclip demo: {exc}\nFix the cause and run the same command again: finished steps are reused.",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0
