"""The stand-in teacher's phase 1: progressive resolution that follows the engine's step, also across a resume."""

from __future__ import annotations

import math

import pytest
import torch

from dcclip.data.augment import warp
from dcclip.demo.teacher import TeacherRecipe, train_demo_teacher


def test_warp_can_sample_the_view_on_a_smaller_grid():
    """``size`` gives an S x S view of the same warp: the identity warp to a smaller grid is a plain resize."""
    pixels = torch.rand(2, 3, 48, 48)
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(2, 2, 3)
    assert torch.allclose(warp(pixels, identity), pixels, atol=1e-5)
    small = warp(pixels, identity, 24)
    assert small.shape == (2, 3, 24, 24)
    expected = torch.nn.functional.interpolate(pixels, size=24, mode="bilinear", align_corners=False)
    assert torch.allclose(small, expected, atol=1e-5)


def record_training_input_sizes(monkeypatch) -> list[int]:
    """Make open_clip's timm tower record the side of every training input; returns the (growing) record."""
    import open_clip

    seen: list[int] = []
    original = open_clip.timm_model.TimmModel.forward

    def recording_forward(self, x):
        if self.training:
            seen.append(int(x.shape[-1]))
        return original(self, x)

    monkeypatch.setattr(open_clip.timm_model.TimmModel, "forward", recording_forward)
    return seen


@pytest.mark.slow
def test_phase_one_switches_resolution_by_step_and_keeps_it_after_a_resume(toy_world, tmp_path, monkeypatch):
    """4 image steps with 50% at 32 px: the tower sees 32, 32, 48, 48 — also when the run stops after step 2."""
    seen = record_training_input_sizes(monkeypatch)
    recipe = TeacherRecipe(image_steps=4, text_steps=1, batch_size=8, text_batch_size=8, low_res_fraction=0.5)
    train_demo_teacher(toy_world, tmp_path / "whole", recipe)
    assert seen == [32, 32, 48, 48]

    seen.clear()  # the same run killed after step 2 (its last checkpoint), then run again
    monkeypatch.setattr("dcclip.demo.teacher._phase", _image_steps_then_stop(2))
    with pytest.raises(RuntimeError, match="stopped"):
        train_demo_teacher(toy_world, tmp_path / "resumed", recipe)
    monkeypatch.undo()
    resumed = record_training_input_sizes(monkeypatch)
    summary = train_demo_teacher(toy_world, tmp_path / "resumed", recipe)
    assert (seen, resumed) == ([32, 32], [48, 48])  # two steps before the stop at low resolution, two after at full
    assert summary["steps"] == {"image": 4, "text": 1}
    assert math.isfinite(summary["final_loss"]["image"])


def _image_steps_then_stop(steps_done: int):
    """A ``_phase`` that trains phase 1 for ``steps_done`` steps (the full run's task and schedule), then fails."""
    import dcclip.demo.teacher as teacher

    real_phase = teacher._phase

    def phase(task, loader, out, name, steps, lr, recipe, channels_last=False):
        if name == "image":
            real_phase(task, loader, out, name, steps_done, lr, recipe, channels_last)
        raise RuntimeError("stopped")

    return phase


@pytest.mark.slow
def test_smaller_teacher_input_is_saved_and_skips_the_low_resolution_phase(toy_world, tmp_path, monkeypatch):
    import json

    seen = record_training_input_sizes(monkeypatch)
    recipe = TeacherRecipe(image_steps=2, text_steps=1, batch_size=8, text_batch_size=8, image_size=32)
    train_demo_teacher(toy_world, tmp_path / "t32", recipe)
    assert seen == [32, 32]
    saved = json.loads((tmp_path / "t32" / "open_clip_config.json").read_text())
    assert saved["model_cfg"]["vision_cfg"]["image_size"] == 32 and saved["preprocess_cfg"]["size"] == 32
