"""In-memory decoded shards, consistent augmentation of student and teacher views, and the cached teacher text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcclip.config import DataConfig, LossConfig
from dcclip.data.augment import affine_params, augment_views, warp
from dcclip.data.memory import MemoryLoader, decode_shard_set
from dcclip.runtime.preprocess import Preprocess

STUDENT = Preprocess(image_size=32)
TEACHER = Preprocess(image_size=24, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def memory_loader(train, tokenizer, **overrides) -> MemoryLoader:
    cfg = DataConfig(train=str(train), batch_size=8, caption_sampling="uniform", **overrides)
    decoded = decode_shard_set(str(train), [STUDENT, TEACHER])
    return MemoryLoader(cfg, decoded, STUDENT, tokenizer, seed=3, teacher_preprocess=TEACHER)


def test_decoded_pixels_equal_the_streaming_preprocess(small_shards, tokenizer):
    from dcclip.data.shards import iter_tar_samples, shard_paths
    from dcclip.runtime.preprocess import decode_image

    loader = memory_loader(small_shards, tokenizer)
    first = next(iter_tar_samples(shard_paths(str(small_shards))[0]))
    row = loader.decoded.keys.index(first["__key__"])
    expected = STUDENT(decode_image(first["jpg"]))
    got = loader._pixels(np.array([row]), STUDENT)[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_batches_cover_the_epoch_and_carry_both_views(small_shards, tokenizer):
    loader = memory_loader(small_shards, tokenizer)
    batches = list(loader)
    assert len(batches) == loader.batches_per_epoch == 5
    keys = [k for b in batches for k in b["keys"]]
    assert sorted(keys) == sorted(loader.decoded.keys)  # a permutation: every sample once per epoch
    batch = batches[0]
    assert batch["pixels"].shape == (8, 3, 32, 32) and batch["teacher_pixels"].shape == (8, 3, 24, 24)
    assert batch["caption_image"].tolist() == list(range(8)) and len(batch["source_texts"]) == 8
    assert loader.epoch == 1 and loader.batch_in_epoch == 0


def test_resume_continues_exactly(small_shards, tokenizer):
    straight = memory_loader(small_shards, tokenizer, augment="geometric")
    reference = [b for _ in range(2) for b in straight]
    resumed = memory_loader(small_shards, tokenizer, augment="geometric")
    taken = iter(resumed)
    for _ in range(3):
        next(taken)
    state = resumed.state_dict()
    fresh = memory_loader(small_shards, tokenizer, augment="geometric")
    fresh.load_state_dict(state)
    rest = list(fresh) + list(fresh)
    assert len(rest) == len(reference) - 3
    for a, b in zip(reference[3:], rest, strict=False):
        assert a["keys"] == b["keys"] and a["texts"] == b["texts"]
        assert torch.equal(a["pixels"], b["pixels"]) and torch.equal(a["input_ids"], b["input_ids"])


def test_identity_warp_changes_nothing_and_flip_is_exact():
    pixels = torch.randn(4, 3, 16, 16)
    assert torch.allclose(warp(pixels, affine_params(4, "none", np.random.default_rng(0))), pixels, atol=1e-5)
    theta = np.zeros((1, 2, 3), np.float32)
    theta[0, 0, 0], theta[0, 1, 1] = -1.0, 1.0
    assert torch.allclose(warp(pixels[:1], theta), pixels[:1].flip(-1), atol=1e-5)
    with pytest.raises(ValueError, match="unknown augmentation policy"):
        affine_params(1, "mixup", np.random.default_rng(0))


def test_student_and_teacher_views_get_the_same_warp():
    """A smooth image warped at two resolutions gives the same picture: the teacher describes what the student sees."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    big = torch.stack([torch.sin(2 * xs), torch.cos(3 * ys), xs * ys])[None].repeat(6, 1, 1, 1)
    small = torch.nn.functional.interpolate(big, size=32, mode="bilinear", antialias=True, align_corners=False)
    batch = augment_views(
        {"pixels": big.clone(), "teacher_pixels": small.clone()}, "geometric", np.random.default_rng(1)
    )
    assert not torch.allclose(batch["pixels"], big, atol=1e-2)  # something happened
    down = torch.nn.functional.interpolate(batch["pixels"], size=32, mode="bilinear", antialias=True)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))  # away from the reflected borders
    assert (down[inner] - batch["teacher_pixels"][inner]).abs().mean() < 0.03


def test_undecodable_samples_are_skipped_and_named(tmp_path, tokenizer):
    from helpers.data import write_shard_set

    train = write_shard_set(tmp_path / "s", n=6, per_shard=6, extra_fields=lambda i: {"jpg": b"no"} if i == 2 else {})
    decoded = decode_shard_set(str(train), [STUDENT])
    assert len(decoded) == 5 and decoded.skipped == ["s00002"]


def test_teacher_text_embeddings_are_cached_and_equal(saved_teacher_spec, tokenizer):
    from dcclip.engine.tasks import StudentTask
    from dcclip.models.students import build_student
    from dcclip.models.teachers import load_teacher

    teacher = load_teacher(saved_teacher_spec)
    student = build_student("test-student", embed_dim=teacher.embed_dim, vocab_size=tokenizer.vocab_size)
    task = StudentTask(student, teacher, LossConfig(feature_map=0.0))
    texts = ["a red circle", "a blue square", "a red circle"]
    first = task.teacher_text(texts)
    assert len(task._text_cache) == 2
    torch.testing.assert_close(first, teacher.encode_text(texts))
    torch.testing.assert_close(task.teacher_text(texts[::-1]), first.flip(0))
