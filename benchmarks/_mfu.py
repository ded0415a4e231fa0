"""Shared by the benchmark scripts: the machine's matmul limit, FLOP counts, model FLOP utilisation (MFU).

MFU = (FLOPs a step must do) × (steps per second) / (the machine's sustained dense matmul FLOP/s at the same
precision and threads). FLOPs are counted by ``torch.utils.flop_counter`` (matmuls, convolutions, attention: the
operators that carry the arithmetic; element-wise work counts zero, as in every published MFU).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from dcclip.runtime.timing import interleaved_ms

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sync(device: str | torch.device) -> None:
    """Wait for queued GPU work so a wall-clock time covers it; nothing to do on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1, device: str | torch.device = "cpu") -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls (medians resist a noisy neighbour)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_flops_per_s(
    dtype: str = "fp32", threads: int | None = None, size: int = 1024, repeats: int = 7, device: str = "cpu"
) -> float:
    """Sustained dense matmul FLOP/s: the median over ``repeats`` timed batches of square ``size`` matmuls.

    Each timed batch runs long enough (≥ ~0.2 s) to reach steady clocks; ``threads`` (default: torch's current
    setting) is set for the measurement and restored, so the peak and the step it is compared with use the same cores.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size, device=device, dtype=DTYPES[dtype])
        b = torch.randn(size, size, device=device, dtype=DTYPES[dtype])
        single = median_seconds(lambda: torch.mm(a, b), repeats=3, warmup=2, device=device)
        inner = max(1, int(0.2 / max(single, 1e-6)))

        def batch() -> None:
            for _ in range(inner):
                torch.mm(a, b)

        seconds = median_seconds(batch, repeats=repeats, warmup=1, device=device)
        return 2.0 * size**3 * inner / seconds
    finally:
        torch.set_num_threads(previous)


def _swap_batch_and_channels(shape: list[int]) -> list[int]:
    return [shape[1], shape[0], *shape[2:]]


def conv_backward_flops(
    grad_out_shape: list[int],
    x_shape: list[int],
    w_shape: list[int],
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    groups: int,
    output_mask: list[bool],
    out_shape: Any,
    **_: Any,
) -> int:
    """FLOPs of a convolution's backward, as torch counts them but with grouped weight gradients divided by ``groups``.

    torch's formula counts the weight gradient of a grouped (e.g. depthwise) convolution as if every input channel
    met every output channel, ``groups`` times too many (a 3x3 depthwise backward then outweighs its forward 10:1).
    """
    from torch.utils.flop_counter import conv_flop_count

    flops = 0
    if output_mask[0]:
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], transposed=not transposed)
    if output_mask[1]:
        first, second = (grad_out_shape, x_shape) if transposed else (x_shape, grad_out_shape)
        swap = _swap_batch_and_channels
        flops += conv_flop_count(swap(first), swap(second), swap(out_shape[1]), transposed=False) // max(1, groups)
    return flops


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (forward and, if ``fn`` calls ``backward``, backward too).

    torch's counter, with the weight gradient of grouped convolutions counted correctly (``conv_backward_flops``).
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops})
    with counter:
        fn()
    return int(counter.get_total_flops())


def mfu(achieved_flops_per_s: float, peak_flops_per_s: float) -> float:
    """Model FLOP utilisation: the share of the machine's measured matmul rate a workload achieves."""
    return achieved_flops_per_s / peak_flops_per_s if peak_flops_per_s > 0 else float("nan")


def throughput_row(
    name: str, fn: Callable[[], Any], samples: int, peak: float, repeats: int, device: str = "cpu", **extra: Any
) -> dict[str, Any]:
    """samples/s, FLOPs/sample, achieved GFLOP/s and MFU of ``fn`` (one call processes ``samples`` samples).

    ``mfu`` is against ``peak`` (the best rate the run measured); ``mfu_local`` against the matmul rate measured right
    before and after this workload (on a shared machine the neighbours' load moves both alike).
    """
    flops = count_flops(fn)
    dtype = extra.pop("dtype", "fp32")
    local_before = matmul_flops_per_s(dtype, repeats=3, device=device)
    seconds = median_seconds(fn, repeats=repeats, warmup=1, device=device)
    local = max(local_before, matmul_flops_per_s(dtype, repeats=3, device=device))
    achieved = flops / seconds
    return {
        "run": name,
        "samples_per_s": samples / seconds,
        "gflop_per_sample": flops / samples / 1e9,
        "achieved_gflop_s": achieved / 1e9,
        "mfu": mfu(achieved, max(peak, local)),
        "local_peak_gflop_s": local / 1e9,
        "mfu_local": mfu(achieved, local),
        **extra,
    }


def top_operators(fn: Callable[[], Any], top: int = 10) -> list[dict[str, Any]]:
    """The operators that take the most self CPU time in one call of ``fn``, with their share of the total.

    Self time (not including children) adds up to the whole, so the shares say which operator sets the ceiling.
    """
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total, "calls": e.count}
        for e in events[:top]
    ]


def interleaved_seconds(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Median seconds of each variant, timed in alternation (A B A B ...) so load from neighbours hits all alike."""
    times = interleaved_ms(fns, repeat=repeats, warmup=warmup, sync=lambda: sync(device))
    return {name: statistics.median(values) / 1000 for name, values in times.items()}


def load_average() -> float:
    """One-minute load average (the machine is shared: every result records how busy it was)."""
    import os

    return os.getloadavg()[0]
