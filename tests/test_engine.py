"""Stage 1 end to end on the toy world: loss falls, cached == online, exact resume, torchrun with 2 gloo ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dcclip import checkpoint as ckpt
from dcclip.config import load_config
from dcclip.stages.build import run_stage


def distill_config(toy_world, tokenizer_path, teacher_spec, out_dir, *extra):
    return load_config(
        None,
        [
            "stage=distill",
            f"data.train={toy_world / 'train'}",
            "data.batch_size=16",
            "data.workers=2",
            "data.shuffle_buffer=32",
            "student.model=test-student",
            f"student.tokenizer={tokenizer_path}",
            f"teacher.spec={teacher_spec}",
            f"train.out_dir={out_dir}",
            "train.log_every=1",
            "optim.warmup_steps=2",
            *extra,
        ],
    )


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.latest_checkpoint(run_dir) / ckpt.MODEL_FILE))


@pytest.mark.slow
def test_stage1_loss_falls_and_writes_a_complete_run(toy_world, world_tokenizer_path, saved_teacher_spec, tmp_path):
    cfg = distill_config(toy_world, world_tokenizer_path, saved_teacher_spec, tmp_path / "run", "train.steps=40")
    summary = run_stage(cfg)
    records = metrics(tmp_path / "run")
    first = sum(r["loss"] for r in records[:5]) / 5
    last = sum(r["loss"] for r in records[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert {"fmap_loss", "image_embed_loss", "text_embed_loss", "samples_per_s"} <= set(records[-1])
    latest = ckpt.latest_checkpoint(tmp_path / "run")
    assert latest.name == "step-00000040" and summary["steps"] == 40
    for name in (ckpt.MODEL_FILE, ckpt.CONFIG_FILE, ckpt.STATE_FILE, "tokenizer.json"):
        assert (latest / name).is_file()
    config = json.loads((latest / ckpt.CONFIG_FILE).read_text())
    assert config["arch"]["embed_dim"] == 32 and config["stage"] == "distill" and len(config["langs"]) == 10
    assert (tmp_path / "run" / "config.yaml").is_file()


@pytest.mark.slow
def test_cached_and_online_give_the_same_first_loss(toy_world, world_tokenizer_path, saved_teacher_spec, tmp_path):
    from helpers.stages import cache

    features = cache(toy_world, saved_teacher_spec, tmp_path / "features")
    online = distill_config(toy_world, world_tokenizer_path, saved_teacher_spec, tmp_path / "online", "train.steps=1")
    cached = distill_config(
        toy_world,
        world_tokenizer_path,
        saved_teacher_spec,
        tmp_path / "cached",
        "train.steps=1",
        f"data.features={features}",
    )
    run_stage(online)
    run_stage(cached)
    a, b = metrics(tmp_path / "online")[0], metrics(tmp_path / "cached")[0]
    for name in ("fmap_loss", "image_embed_loss", "text_embed_loss", "loss"):
        assert a[name] == pytest.approx(b[name], rel=2e-3), name


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_parameters(
    toy_world, world_tokenizer_path, saved_teacher_spec, tmp_path, monkeypatch
):
    from dcclip.engine import loop

    args = ("train.steps=8", "train.ckpt_every=4", "train.resume=auto")
    run_stage(distill_config(toy_world, world_tokenizer_path, saved_teacher_spec, tmp_path / "straight", *args))

    original = loop.Trainer.train_step

    def dies_after_step_5(self, batches):
        if self.step == 5:
            raise KeyboardInterrupt("simulated kill")
        return original(self, batches)

    interrupted = distill_config(toy_world, world_tokenizer_path, saved_teacher_spec, tmp_path / "killed", *args)
    monkeypatch.setattr(loop.Trainer, "train_step", dies_after_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_stage(interrupted)
    monkeypatch.setattr(loop.Trainer, "train_step", original)
    assert ckpt.latest_checkpoint(tmp_path / "killed").name == "step-00000004"
    run_stage(interrupted)  # resume=auto picks up step 4

    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.allclose(straight[name], resumed[name], atol=1e-6), name
    steps = [r["step"] for r in metrics(tmp_path / "killed")]
    assert steps[-4:] == [5, 6, 7, 8]
    assert steps == sorted(set(steps)), "a resumed run logs each step once"


def test_metrics_past_the_resumed_step_and_a_torn_line_are_dropped(tmp_path):
    from dcclip.engine.metrics import MetricsWriter, read_metrics

    writer = MetricsWriter(tmp_path, tensorboard=False)
    for step in (1, 2, 3, 4, 5):
        writer.write(step, {"loss": float(step)})
    with writer.path.open("a") as handle:
        handle.write('{"step": 6, "lo')  # killed mid-write
    assert writer.truncate_after(4) == 2
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
    assert writer.truncate_after(4) == 0


@pytest.mark.slow
def test_resume_with_another_architecture_is_refused(toy_world, world_tokenizer_path, saved_teacher_spec, tmp_path):
    run_stage(distill_config(toy_world, world_tokenizer_path, saved_teacher_spec, tmp_path / "r", "train.steps=1"))
    other = distill_config(
        toy_world, world_tokenizer_path, saved_teacher_spec, tmp_path / "r", "train.steps=2", "train.resume=auto",
        "student.model=test-vit-student",
    )  # fmt: skip
    with pytest.raises(ckpt.CheckpointError, match="arch differ"):
        run_stage(other)


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    model = torch.nn.Linear(2, 2)
    for step in (1, 2, 3, 4):
        ckpt.write_checkpoint(tmp_path, step, model, {"arch": {}}, None, keep_last=2)
    (tmp_path / ckpt.CHECKPOINT_DIR / ".step-00000005.tmp-123").mkdir()  # a crash mid-write leaves this
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000004"
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.resolve_checkpoint(tmp_path / "nowhere")


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_keep_identical_parameters(
    toy_world, world_tokenizer_path, saved_teacher_spec, tmp_path
):
    run_dir = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dcclip",
        "distill", f"data.train={toy_world / 'train'}", "data.batch_size=8", "data.workers=1",
        "student.model=test-student", f"student.tokenizer={world_tokenizer_path}", f"teacher.spec={saved_teacher_spec}",
        f"train.out_dir={run_dir}", "train.steps=4", "train.log_every=2", "train.device=cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert len(summary["replica_checksums"]) == 2 and len(set(summary["replica_checksums"])) == 1
    assert summary["samples_seen"] == 4 * 2 * 8


@pytest.mark.slow
def test_demo_teacher_trains_and_loads_like_a_user_checkpoint(toy_world, tmp_path):
    from dcclip.cli import main
    from dcclip.models.teachers import load_teacher

    out = tmp_path / "teacher"
    args = ["--world", str(toy_world), "--out", str(out), "--image-steps", "3", "--text-steps", "2"]
    assert main(["teacher", "train-demo", *args]) == 0
    assert (out / "open_clip_config.json").is_file() and (out / "open_clip_model.safetensors").is_file()
    teacher = load_teacher(f"openclip:{out}")
    image, fmap = teacher.encode_image(torch.zeros(2, 3, teacher.preprocess.image_size, teacher.preprocess.image_size))
    assert image.shape == (2, 128) and fmap.shape[1] == teacher.fmap_channels
    assert teacher.encode_text(["a red circle"]).shape == (1, 128)
    trained = json.loads((out / "train_summary.json").read_text())
    assert trained["steps"] == {"image": 3, "text": 2} and trained["teacher_spec"] == f"openclip:{out.resolve()}"


def test_inherit_text_from_a_local_encoder(toy_world, world_tokenizer_path, saved_teacher_spec, tmp_path):
    from transformers import BertConfig, BertModel

    from dcclip.models.registry import get_model_config
    from dcclip.models.tokenizers import TextTokenizer

    text = get_model_config("test-student", "student")["text"]
    vocab = TextTokenizer.from_path(world_tokenizer_path).vocab_size
    width = text["hidden_size"]
    bert = BertModel(
        BertConfig(
            vocab_size=vocab, hidden_size=width, num_hidden_layers=2 * text["num_layers"],
            num_attention_heads=text["num_heads"], intermediate_size=text.get("intermediate_size", 4 * width),
            type_vocab_size=1, max_position_embeddings=text.get("max_length", 64),
        )
    )  # fmt: skip
    bert.save_pretrained(tmp_path / "encoder")
    cfg = distill_config(
        toy_world, world_tokenizer_path, saved_teacher_spec, tmp_path / "run", "train.steps=1",
        f"student.inherit_text={tmp_path / 'encoder'}", "optim.lr=1e-9",
    )  # fmt: skip
    run_stage(cfg)
    weights = final_weights(tmp_path / "run")
    inherited = weights["text.transformer.encoder.layer.1.attention.self.query.weight"]
    assert torch.allclose(inherited, bert.encoder.layer[2].attention.self.query.weight, atol=1e-5)


@pytest.mark.slow
def test_cache_teacher_on_two_gloo_ranks_writes_exactly_what_one_rank_writes(toy_world, saved_teacher_spec, tmp_path):
    def cache(out: Path, ranks: int) -> None:
        args = ["cache-teacher", "--out", str(out), f"data.train={toy_world / 'train'}", "teacher.batch_size=16"]
        args += [f"teacher.spec={saved_teacher_spec}", "train.device=cpu"]
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else []
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, *launcher, "-m", "dcclip", *args], capture_output=True, text=True,
                              timeout=300, env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]

    cache(tmp_path / "one", 1)
    cache(tmp_path / "two", 2)
    one = {p.name: p.read_bytes() for p in sorted((tmp_path / "one").glob("*.tar"))}
    two = {p.name: p.read_bytes() for p in sorted((tmp_path / "two").glob("*.tar"))}
    assert len(one) == len(list((toy_world / "train").glob("*.tar"))) > 1
    assert one == two, "every feature shard is byte-identical whichever rank wrote it"
    info_one, info_two = (json.loads((tmp_path / d / "teacher.json").read_text()) for d in ("one", "two"))
    assert info_one["fingerprint"] == info_two["fingerprint"]
