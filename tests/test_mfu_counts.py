"""benchmarks/_mfu.py counts the FLOPs a step must do: a grouped convolution's backward is not counted groups times."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

MFU_FILE = Path(__file__).resolve().parents[1] / "benchmarks" / "_mfu.py"


@pytest.fixture(scope="module")
def mfu():
    spec = importlib.util.spec_from_file_location("dcclip_bench_mfu", MFU_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _forward_and_backward(conv: nn.Module, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    return lambda: conv(x).sum().backward()


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_convolution_backward_is_twice_its_forward_for_any_groups(mfu, groups):
    """Input gradient and weight gradient each cost what the forward does (standard result), grouped or not."""
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=groups, bias=False)
    x = torch.randn(2, 16, 8, 8)
    forward = mfu.count_flops(lambda: conv(x))
    assert forward == 2 * 2 * 8 * 8 * 16 * (16 // groups) * 9
    assert mfu.count_flops(_forward_and_backward(conv, x)) == 3 * forward


def test_dense_convolution_counts_equal_torchs_own(mfu):
    """Only grouped weight gradients change: a dense convolution's count is torch's, forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    conv = nn.Conv2d(8, 12, 3, stride=2, padding=1)
    step = _forward_and_backward(conv, torch.randn(3, 8, 9, 9))
    with FlopCounterMode(display=False) as torch_counter:
        step()
    assert mfu.count_flops(step) == torch_counter.get_total_flops() > 0


def test_transposed_grouped_convolution_counts_the_weight_gradient_once(mfu):
    conv = nn.ConvTranspose2d(8, 8, 2, stride=2, groups=8, bias=False)
    x = torch.randn(2, 8, 5, 5)
    forward = mfu.count_flops(lambda: conv(x))
    assert mfu.count_flops(_forward_and_backward(conv, x)) == 3 * forward
