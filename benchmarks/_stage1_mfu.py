"""Stage-1/2 training steps against the machine's matmul limit (called by stage1_throughput.py).

Every figure is measured on one real batch (cached teacher features, all captions of every image) with the task,
losses and optimiser the train loop uses; alternatives are timed in alternation in the same process.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from _common import markdown_table, write_result
from _mfu import (
    interleaved_seconds,
    load_average,
    matmul_flops_per_s,
    mfu,
    throughput_row,
    top_operators,
)

from dcclip.engine.loop import autocast, to_device
from dcclip.engine.optim import build_optimizer
from dcclip.engine.tasks import StudentTask

Step = Callable[[], None]


def tower_steps(student: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Step]:
    """Forward + backward of each tower alone (sum of outputs as the loss: the same backward graph)."""

    def image() -> None:
        emb, fmap = student.image(batch["pixels"])
        (emb.sum() + (fmap.sum() if fmap is not None else 0)).backward()

    def text() -> None:
        student.text(batch["input_ids"], batch["attention_mask"]).sum().backward()

    return {"image": image, "text": text}


def train_step(task: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict, precision: str = "fp32") -> Step:
    """One optimiser step as the loop takes it: zero grads, forward under autocast, backward, AdamW step."""

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(torch.device("cpu"), precision):
            loss = task(batch)["loss"]
        loss.backward()
        optimizer.step()

    return step


def stage2_task(task: StudentTask) -> StudentTask:
    """A stage-2 task (contrastive only, no teacher) on a copy of the student, so stage 1's freezing is untouched."""
    losses = dataclasses.replace(task.cfg, feature_map=0.0, image_embed=0.0, text_embed=0.0, contrastive=1.0)
    return StudentTask(copy.deepcopy(task.student), None, losses)


def pad_to(batch: dict[str, Any], length: int) -> dict[str, Any]:
    """The batch with captions right-padded (id 0, mask 0) to ``length`` tokens, as a fixed-length tokenizer does."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    extra = length - ids.shape[1]
    padded = dict(batch)
    padded["input_ids"] = torch.nn.functional.pad(ids, (0, extra), value=0)
    padded["attention_mask"] = torch.nn.functional.pad(mask, (0, extra), value=0)
    return padded


def padding_comparison(task: StudentTask, batch: dict, max_len: int, repeats: int) -> dict[str, Any]:
    """Text tower f+b with captions padded to the batch's longest vs to ``max_text_len``; loss must not change."""
    longest, fixed = batch, pad_to(batch, max_len)
    with torch.no_grad():
        loss_longest, loss_fixed = float(task(longest)["loss"]), float(task(fixed)["loss"])
    steps = {name: tower_steps(task.student, b)["text"] for name, b in (("longest", longest), ("max_len", fixed))}
    seconds = interleaved_seconds(steps, repeats)
    return {
        "longest_tokens": int(batch["input_ids"].shape[1]),
        "max_text_len": max_len,
        "text_fb_s": seconds,
        "speedup": seconds["max_len"] / seconds["longest"],
        "loss_longest": loss_longest,
        "loss_max_len": loss_fixed,
        "loss_abs_diff": abs(loss_longest - loss_fixed),
    }


def channels_last_comparison(student: torch.nn.Module, batch: dict, repeats: int) -> dict[str, Any]:
    """Image tower f+b with weights and pixels channels-last vs contiguous (NCHW)."""
    variants = {}
    for name, fmt in (("channels_last", torch.channels_last), ("contiguous", torch.contiguous_format)):
        tower = copy.deepcopy(student.image).to(memory_format=fmt)
        pixels = batch["pixels"].contiguous(memory_format=fmt)
        variants[name] = lambda tower=tower, pixels=pixels: _image_fb(tower, pixels)
    seconds = interleaved_seconds(variants, repeats)
    return {"image_fb_s": seconds, "speedup": seconds["contiguous"] / seconds["channels_last"]}


def _image_fb(tower: torch.nn.Module, pixels: torch.Tensor) -> None:
    emb, fmap = tower(pixels)
    (emb.sum() + (fmap.sum() if fmap is not None else 0)).backward()


def optimizer_comparison(task: StudentTask, batch: dict, optim_cfg: Any, repeats: int) -> dict[str, Any]:
    """AdamW step time for each implementation (for-loop, foreach, fused) on the same gradients, in alternation."""
    task.zero_grad(set_to_none=True)
    task(batch)["loss"].backward()
    optimizers = {name: build_optimizer(task, optim_cfg, name) for name in ("for-loop", "foreach", "fused")}
    params = [p for p in task.parameters() if p.grad is not None]
    saved = [p.detach().clone() for p in params]

    def stepper(optimizer: torch.optim.Optimizer) -> Step:
        def step() -> None:
            optimizer.step()
            with torch.no_grad():  # keep the weights where they were: every variant steps from the same point
                for p, s in zip(params, saved, strict=True):
                    p.copy_(s)

        return step

    seconds = interleaved_seconds({n: stepper(o) for n, o in optimizers.items()}, max(repeats, 5))
    task.zero_grad(set_to_none=True)
    return {"step_s": seconds, "params": sum(p.numel() for p in params)}


def step_comparison(task: StudentTask, batch: dict, optim_cfg: Any, repeats: int) -> dict[str, Any]:
    """The full stage-1 step before/after: for-loop AdamW (torch's CPU default) vs fused, channels-last vs not."""
    contiguous_task = copy.deepcopy(task).to(memory_format=torch.contiguous_format)
    contiguous_batch = dict(batch, pixels=batch["pixels"].contiguous())
    variants = {
        "for-loop AdamW, channels-last (before)": train_step(task, build_optimizer(task, optim_cfg, "for-loop"), batch),
        "fused AdamW, channels-last": train_step(task, build_optimizer(task, optim_cfg, "fused"), batch),
        "fused AdamW, contiguous": train_step(
            contiguous_task, build_optimizer(contiguous_task, optim_cfg, "fused"), contiguous_batch
        ),
    }
    seconds = interleaved_seconds(variants, repeats)
    before = seconds["for-loop AdamW, channels-last (before)"]
    images = len(batch["keys"])
    return {name: {"step_s": s, "samples_per_s": images / s, "speedup": before / s} for name, s in seconds.items()}


def compile_comparison(task: StudentTask, batch: dict, optim_cfg: Any, repeats: int) -> dict[str, Any]:
    """The full stage-1 step eager vs ``torch.compile`` (inductor), on two copies of the task starting from the same
    weights: the first step's losses must agree; compile time is reported apart from the step time."""
    import time

    eager_task, compiled_task = copy.deepcopy(task), copy.deepcopy(task)
    compiled_module = torch.compile(compiled_task)
    first_loss = {}

    def first_step(name: str, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = module(batch)["loss"]
        loss.backward()
        optimizer.step()
        first_loss[name] = float(loss.detach())

    eager_optimizer = build_optimizer(eager_task, optim_cfg, "for-loop")
    compiled_optimizer = build_optimizer(compiled_task, optim_cfg, "for-loop")
    first_step("eager", eager_task, eager_optimizer)
    start = time.perf_counter()
    try:
        first_step("compiled", compiled_module, compiled_optimizer)  # traces and compiles forward and backward
    except Exception as exc:  # a backend that cannot compile here is a result, not a crash
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    compile_s = time.perf_counter() - start
    steps = {
        "eager": train_step(eager_task, eager_optimizer, batch),
        "compiled": train_step(compiled_module, compiled_optimizer, batch),
    }
    seconds = interleaved_seconds(steps, repeats)
    return {
        "compile_s": compile_s, "step_s": seconds, "speedup": seconds["eager"] / seconds["compiled"],
        "loss_abs_diff": abs(first_loss["eager"] - first_loss["compiled"]),
    }  # fmt: skip


def mfu_rows(prepared: Any, batch: dict, peaks: dict[str, float], args: Any) -> tuple[list[dict], Step]:
    """samples/s, FLOPs and MFU of image tower, text tower, full stage-1 step and stage-2 step (fp32)."""
    task, images, repeats = prepared.task, len(batch["keys"]), args.repeats
    towers = tower_steps(task.student, batch)
    stage1 = train_step(task, build_optimizer(task, prepared.spec.optim), batch)
    task2 = stage2_task(task)
    stage2 = train_step(task2, build_optimizer(task2, prepared.spec.optim), batch)
    captions = int(batch["input_ids"].shape[0])
    rows = [
        throughput_row("image tower f+b", towers["image"], images, peaks["fp32"], repeats),
        throughput_row("text tower f+b", towers["text"], images, peaks["fp32"], repeats, captions=captions),
        throughput_row("stage-1 step (fwd+bwd+AdamW)", stage1, images, peaks["fp32"], repeats),
        throughput_row("stage-2 step (contrastive)", stage2, images, peaks["fp32"], repeats),
    ]
    if args.bf16_step:
        bf16 = train_step(task, build_optimizer(task, prepared.spec.optim), batch, "bf16")
        rows.append(throughput_row("stage-1 step, bf16 autocast", bf16, images, peaks["bf16"], 1, dtype="bf16"))
        rows[-1]["mfu_vs_fp32_peak"] = mfu(rows[-1]["achieved_gflop_s"] * 1e9, peaks["fp32"])
    return rows, stage1


def measure_mfu(prepared: Any, batch: dict[str, Any], args: Any, command: str) -> dict[str, Any]:
    """Run every MFU measurement on ``batch`` and write results/stage1_mfu.{json,md}."""
    threads, load_before = torch.get_num_threads(), load_average()
    if prepared.spec.train.channels_last:
        prepared.task.student.to(memory_format=torch.channels_last)
    batch = to_device(batch, torch.device("cpu"), prepared.spec.train.channels_last)
    peak_runs = [matmul_flops_per_s("fp32", threads) for _ in range(2)]
    peaks = {"fp32": max(peak_runs), "bf16": matmul_flops_per_s("bf16", threads, size=512, repeats=3)}
    rows, stage1 = mfu_rows(prepared, batch, peaks, args)
    operators = top_operators(stage1)
    padding = padding_comparison(prepared.task, batch, prepared.loader.cfg.max_text_len, args.repeats)
    channels = channels_last_comparison(prepared.task.student, batch, args.repeats)
    optimizers = optimizer_comparison(prepared.task, batch, prepared.spec.optim, args.repeats)
    steps = step_comparison(prepared.task, batch, prepared.spec.optim, args.repeats)
    compiled = compile_comparison(prepared.task, batch, prepared.spec.optim, args.repeats) if args.compile else None
    peak_runs.append(matmul_flops_per_s("fp32", threads))
    # the machine's limit is the best rate measured at any point of the run (neighbours only ever slow it down)
    peaks["fp32"] = max([*peak_runs, *(row["local_peak_gflop_s"] * 1e9 for row in rows if "bf16" not in row["run"])])
    best = max(peaks.values())  # the machine's best number format: on AMX bf16, elsewhere fp32
    for row in rows:
        if "bf16" not in row["run"]:
            row["mfu"] = mfu(row["achieved_gflop_s"] * 1e9, peaks["fp32"])
        row["mfu_best_format"] = mfu(row["achieved_gflop_s"] * 1e9, best)
    payload = {
        "threads": threads, "peak_fp32_gflop_s": peaks["fp32"] / 1e9, "peak_bf16_gflop_s": peaks["bf16"] / 1e9,
        "peak_fp32_runs_gflop_s": [p / 1e9 for p in peak_runs], "rows": rows, "top_operators": operators,
        "padding": padding, "channels_last": channels, "optimizer": optimizers,
        "step_before_after": steps, "compile": compiled, "images": len(batch["keys"]),
        "captions": int(batch["input_ids"].shape[0]), "load_average": [load_before, load_average()],
        "student": args.student, "batch_size": args.batch_size,
    }  # fmt: skip
    table = report(payload)
    write_result("stage1_mfu", payload, table, command)
    print(table)
    return payload


def report(p: dict[str, Any]) -> str:
    """The markdown: MFU rows, top operators, and each optimisation's before/after."""
    columns = ["run", "samples_per_s", "gflop_per_sample", "achieved_gflop_s", "mfu", "mfu_best_format"]
    columns += ["local_peak_gflop_s", "mfu_local"]
    table = markdown_table(p["rows"], columns)
    steps = markdown_table(
        [{"variant": k, **v} for k, v in p["step_before_after"].items()],
        ["variant", "step_s", "samples_per_s", "speedup"],
    )
    ops = markdown_table(p["top_operators"], ["op", "self_ms", "share", "calls"])
    pad, ch, opt = p["padding"], p["channels_last"], p["optimizer"]["step_s"]
    return (
        f"{table}\n\nPeak: sustained matmul {p['peak_fp32_gflop_s']:.0f} GFLOP/s fp32 (best rate measured in the run; "
        f"{', '.join(f'{g:.0f}' for g in p['peak_fp32_runs_gflop_s'])} before/after, local_peak beside each row), "
        f"{p['peak_bf16_gflop_s']:.1f} GFLOP/s bf16 (mfu: against the fp32 peak, or the bf16 peak for a bf16 row; "
        f"mfu_best_format: against the faster of the two), {p['threads']} threads. Student {p['student']}, "
        f"{p['images']} images × all captions ({p['captions']} captions) per step; samples = images. "
        f"Load average {p['load_average'][0]:.2f} → {p['load_average'][1]:.2f} (shared machine).\n\n"
        f"Where the stage-1 step's time goes (self CPU time, profiler):\n\n{ops}\n\n"
        f"The full stage-1 step before/after (timed in alternation):\n\n{steps}\n\n"
        f"Optimisations, each timed against its alternative in alternation:\n\n"
        f"- captions padded to the batch's longest ({pad['longest_tokens']} tokens) vs to max_text_len "
        f"({pad['max_text_len']}): text tower f+b {pad['text_fb_s']['longest']:.2f} s vs "
        f"{pad['text_fb_s']['max_len']:.2f} s ({pad['speedup']:.2f}×); loss differs by {pad['loss_abs_diff']:.1e}.\n"
        f"- channels-last vs contiguous image tower f+b: {ch['image_fb_s']['channels_last']:.2f} s vs "
        f"{ch['image_fb_s']['contiguous']:.2f} s ({ch['speedup']:.2f}×).\n"
        f"- AdamW step over {p['optimizer']['params'] / 1e6:.1f} M parameters: "
        f"for-loop {1e3 * opt['for-loop']:.0f} ms, "
        f"foreach {1e3 * opt['foreach']:.0f} ms, fused {1e3 * opt['fused']:.0f} ms.\n"
        f"{compile_line(p.get('compile'))}"
    )


def compile_line(result: dict[str, Any] | None) -> str:
    """One line on torch.compile of the full step (or why it was not measured)."""
    if result is None:
        return "- torch.compile: not measured (pass --compile)."
    if "error" in result:
        return f"- torch.compile of the full step failed here: {result['error']}."
    step = result["step_s"]
    return (
        f"- torch.compile (inductor) vs eager, full stage-1 step: {step['compiled']:.2f} s vs {step['eager']:.2f} s "
        f"({result['speedup']:.2f}×), after {result['compile_s']:.0f} s of compiling; first-step loss differs by "
        f"{result['loss_abs_diff']:.1e}."
    )
