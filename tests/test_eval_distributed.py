"""`dcclip eval` under torchrun: two gloo ranks give exactly the one-process report, undecodable images included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.data import CAPTIONS
from helpers.images import jpeg_bytes
from helpers.threads import torch_threads
from test_eval import write_json, write_wds

from dcclip.eval import distributed

N_SAMPLES = 9  # batch 2 -> 5 image batches: rank 0 embeds 3, rank 1 embeds 2, the last batch holds one image
BROKEN = (3, 8)  # undecodable: one shrinks a batch of rank 1, the other empties rank 0's last batch
BATCH = 2
TASKS = ("zeroshot", "retrieval", "alignment")
LANGS = ("en", "fr", "zh")
CLASSES = {"en": ["red", "green", "blue"], "fr": ["rouge", "vert", "bleu"], "zh": ["红色", "绿色", "蓝色"]}
TEMPLATES = {"en": ["a {c} image", "{c}"], "fr": ["une image {c}"], "zh": ["{c}的图片"]}
# Every eval of a JSON list of argv through the CLI's main, as `torchrun -m dcclip eval ...` runs one, with one
# start-up for all tasks (on a 2-core machine start-up is most of the cost). The process group is joined once, as a
# script running several evals must: torch cannot reliably rejoin a group a process has left.
DRIVER = """import json, sys
from dcclip.cli import main
from dcclip.engine.distributed import init_distributed, shutdown_distributed

init_distributed("cpu")
try:
    codes = [main(argv) for argv in json.loads(sys.argv[1])]
finally:
    shutdown_distributed()
sys.exit(max(codes))
"""


def image_field(i: int) -> bytes:
    """A small JPEG, or bytes that are no image for the samples in BROKEN."""
    return b"not an image" if i in BROKEN else jpeg_bytes(i, size=24)


def write_sets(root: Path) -> dict[str, Path]:
    """A zero-shot set and a retrieval set (also read by alignment) in the clip_benchmark layout, nine images each."""
    classification = root / "cls"
    write_wds(classification / "test", [{"jpg": image_field(i), "cls": str(i % 3).encode()} for i in range(N_SAMPLES)])
    write_json(classification / "classnames.json", CLASSES)
    write_json(classification / "templates.json", TEMPLATES)
    retrieval = root / "ret"
    captions = [{lang: f"{CAPTIONS[lang]} {i}" for lang in LANGS} for i in range(N_SAMPLES)]
    samples = [{"jpg": image_field(i), "json": json.dumps({"captions": c}).encode()} for i, c in enumerate(captions)]
    write_wds(retrieval / "test", samples)
    (retrieval / "dataset_type.txt").write_text("retrieval\n")
    return {"zeroshot": classification, "retrieval": retrieval, "alignment": retrieval}


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory, saved_teacher_spec) -> tuple[dict[str, Path], list[str]]:
    """The eval sets per task, and a tiny student checkpoint plus a saved open_clip teacher to score."""
    from helpers.export import make_checkpoint

    root = tmp_path_factory.mktemp("eval_dist")
    return write_sets(root), [str(make_checkpoint(root / "student")), saved_teacher_spec]


def eval_argv(task: str, dataset: Path, models: list[str], out: Path) -> list[str]:
    """The `dcclip eval` arguments of one task."""
    argv = ["eval", task, "--dataset", str(dataset), "--out", str(out), "--batch-size", str(BATCH), "--device", "cpu"]
    return argv + [item for model in models for item in ("--model", model)]


@pytest.fixture(scope="module")
def two_ranks(eval_inputs, tmp_path_factory) -> tuple[dict[str, dict], str]:
    """Every task's report.json from two gloo ranks under torchrun, and what the ranks printed."""
    sets, models = eval_inputs
    root = tmp_path_factory.mktemp("two_ranks")
    (root / "driver.py").write_text(DRIVER)
    argvs = [eval_argv(task, sets[task], models, root / task) for task in TASKS]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the threads of the one-process run: same kernels, same rounding
    done = subprocess.run(
        [*launcher, str(root / "driver.py"), json.dumps(argvs)], capture_output=True, text=True, timeout=180, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {task: json.loads((root / task / "report.json").read_text()) for task in TASKS}, done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_two_gloo_ranks_report_exactly_what_one_process_reports(task, eval_inputs, two_ranks, tmp_path):
    from dcclip.cli import main

    sets, models = eval_inputs
    with torch_threads(1):
        assert main(eval_argv(task, sets[task], models, tmp_path)) == 0
    one, two = json.loads((tmp_path / "report.json").read_text()), two_ranks[0][task]
    assert two["results"] == one["results"] and two["mean"] == one["mean"]  # exact: the same batches, the same floats
    assert two["dataset"] == one["dataset"] and two["langs"] == one["langs"]
    assert (one["settings"]["ranks"], two["settings"]["ranks"]) == (1, 2)
    if task != "alignment":  # alignment reads captions only
        assert (one["dataset"]["samples"], one["dataset"]["skipped"]) == (N_SAMPLES - len(BROKEN), len(BROKEN))


@pytest.mark.slow
def test_only_rank_zero_prints_the_report(two_ranks):
    assert two_ranks[1].count("Written to") == len(TASKS)


def simulate_rank(monkeypatch, me: int, other: tuple[dict, BaseException | None]) -> None:
    """Make this process rank ``me`` of two, the other rank's gathered payload being ``other``."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(me))
    monkeypatch.setattr(distributed, "_joined", lambda: True)
    monkeypatch.setattr(distributed, "_all_gather", lambda own: [own, other] if me == 0 else [other, own])


def test_deal_runs_own_batches_and_reassembles_every_rank_s_results_in_order(monkeypatch):
    computed = []

    def work(batch: int) -> int:
        computed.append(batch)
        return 10 * batch

    simulate_rank(monkeypatch, 1, ({0: 0, 2: 20, 4: 40}, None))
    assert distributed.deal(range(5), work) == [0, 10, 20, 30, 40]
    assert computed == [1, 3], "batch i runs on rank i % 2 only"


def test_an_error_on_one_rank_is_raised_on_every_rank(monkeypatch):
    simulate_rank(monkeypatch, 0, ({1: 10}, ValueError("model 'm': image embeddings contain NaN")))
    with pytest.raises(ValueError, match="contain NaN"):
        distributed.deal(range(3), lambda batch: 10 * batch)


def test_one_process_needs_no_torch():
    code = (
        "import sys\n"
        "from dcclip.eval import distributed, report\n"
        "with distributed.ranks('cpu') as device:\n"
        "    assert device == 'cpu' and distributed.deal([1, 2], lambda b: -b) == [-1, -2]\n"
        "assert 'torch' not in sys.modules, 'one-process eval imports torch only for torch models'\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
