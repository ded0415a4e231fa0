"""Stage 2: gathered InfoNCE equals one big batch, and `dcclip align` continues a stage-1 checkpoint."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers.server_process import free_port

from dcclip import checkpoint as ckpt
from dcclip.engine.distributed import gather_embeddings
from dcclip.losses import contrastive_loss

WORLD = 2


def batch_for(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-specific embeddings; rank 1 holds fewer images and two captions for one image (uneven shapes)."""
    generator = torch.Generator().manual_seed(100 + rank)
    n_images = 4 if rank == 0 else 3
    caption_image = torch.arange(n_images) if rank == 0 else torch.tensor([0, 1, 2, 2])
    image = torch.randn(n_images, 8, generator=generator)
    text = torch.randn(len(caption_image), 8, generator=generator)
    return image, text, caption_image


def concatenated() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    parts = [batch_for(r) for r in range(WORLD)]
    offset, labels = 0, []
    for image, _, caption_image in parts:
        labels.append(caption_image + offset)
        offset += image.shape[0]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), torch.cat(labels)


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    image, text, caption_image = batch_for(rank)
    image.requires_grad_(True)
    text.requires_grad_(True)
    images, texts, labels, _, _ = gather_embeddings(image, text, caption_image)
    loss = contrastive_loss(images, texts, labels, torch.tensor(10.0))
    loss.backward()
    # DDP would average parameter gradients over ranks: the local slice's gradient divided by the world size.
    torch.save(
        {"loss": loss.detach(), "image_grad": image.grad / WORLD, "text_grad": text.grad / WORLD}, f"{out}/{rank}.pt"
    )
    dist.barrier()  # both ranks finished their collectives before either tears the group down
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_rank_gathered_loss_and_gradients_equal_one_big_batch(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    image, text, labels = concatenated()
    image.requires_grad_(True)
    text.requires_grad_(True)
    reference = contrastive_loss(image, text, labels, torch.tensor(10.0))
    reference.backward()
    image_offset = text_offset = 0
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"{rank}.pt")
        local_image, local_text, _ = batch_for(rank)
        assert torch.allclose(got["loss"], reference.detach(), atol=1e-6)
        rows_i = slice(image_offset, image_offset + local_image.shape[0])
        rows_t = slice(text_offset, text_offset + local_text.shape[0])
        assert torch.allclose(got["image_grad"], image.grad[rows_i], atol=1e-6)
        assert torch.allclose(got["text_grad"], text.grad[rows_t], atol=1e-6)
        image_offset += local_image.shape[0]
        text_offset += local_text.shape[0]


def test_without_a_process_group_gather_is_the_identity():
    image, text, caption_image = batch_for(0)
    images, texts, labels, i0, t0 = gather_embeddings(image, text, caption_image)
    assert images is image and texts is text and labels is caption_image and (i0, t0) == (0, 0)


@pytest.mark.slow
def test_align_continues_a_stage1_checkpoint(toy_world, world_tokenizer_path, saved_teacher_spec, tmp_path):
    from dcclip.cli import main

    common = [
        f"data.train={toy_world / 'train'}", "data.batch_size=16", "data.workers=1", "student.model=test-student",
        f"student.tokenizer={world_tokenizer_path}", f"teacher.spec={saved_teacher_spec}", "train.log_every=1",
    ]  # fmt: skip
    assert main(["distill", *common, f"train.out_dir={tmp_path / 's1'}", "train.steps=2"]) == 0
    stage1 = ckpt.latest_checkpoint(tmp_path / "s1")
    align = [
        *common, f"train.out_dir={tmp_path / 's2'}", "train.steps=6", "data.caption_sampling=uniform",
        "loss.contrastive=1.0", "loss.feature_map=0", "loss.image_embed=0.5", "loss.text_embed=0.5",
    ]  # fmt: skip
    assert main(["align", "--init", str(tmp_path / "s1"), *align]) == 0
    records = [json.loads(line) for line in (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()]
    assert {"contrastive_loss", "image_embed_loss", "text_embed_loss", "logit_scale"} <= set(records[-1])
    assert "fmap_loss" not in records[-1]
    stage2 = ckpt.latest_checkpoint(tmp_path / "s2")
    config = json.loads((stage2 / ckpt.CONFIG_FILE).read_text())
    assert config["stage"] == "align"
    assert config["arch"] == json.loads((stage1 / ckpt.CONFIG_FILE).read_text())["arch"]
    before = ckpt.read_checkpoint(stage1, with_state=False).model_state
    after = ckpt.read_checkpoint(stage2, with_state=False).model_state
    assert torch.equal(before["image.adapter.weight"], after["image.adapter.weight"])  # frozen in stage 2
    assert not torch.equal(before["logit_scale"], after["logit_scale"])  # learnt in stage 2


def test_align_needs_a_stage1_checkpoint(capsys):
    from dcclip.cli import main

    assert main(["align", "loss.contrastive=1"]) == 1
    assert "--init" in capsys.readouterr().err
