"""The offline stand-in for a downloaded teacher: a small open_clip CLIP trained on the toy world's English captions.

It is trained with the same engine as the students (CLIP's contrastive loss as the task) and saved as an open_clip
``local-dir`` checkpoint (``open_clip_config.json`` + ``open_clip_model.safetensors``), so it loads through the
open_clip teacher backend exactly like a user's checkpoint: ``openclip:/path/to/dir``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dcclip.config import DataConfig, OptimConfig, TrainConfig
from dcclip.losses import contrastive_loss
from dcclip.runtime.preprocess import Preprocess

log = logging.getLogger(__name__)

DEMO_ARCH = "demo-teacher"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


class OpenClipTokens:
    """open_clip's tokenizer behind dcclip's ``encode(texts, max_length) -> (ids, mask)`` interface."""

    def __init__(self, context_length: int):
        import open_clip

        self.tokenizer = open_clip.get_tokenizer("ViT-B-32")
        self.context_length = context_length

    def encode(self, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        ids = self.tokenizer(list(texts), context_length=self.context_length).numpy().astype(np.int64)
        return ids, (ids != 0).astype(np.int64)


class ClipTrainingTask(nn.Module):
    """CLIP's own objective for an open_clip model; the loop saves ``student`` (here: the teacher being trained)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.student = model

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        image = self.student.encode_image(batch["pixels"])
        text = self.student.encode_text(batch["input_ids"])
        scale = self.student.logit_scale.exp().clamp(max=100.0)
        loss = contrastive_loss(image, text, batch["caption_image"], scale)
        return {"loss": loss, "contrastive_loss": loss}

    def extra_metrics(self) -> dict[str, float]:
        return {"logit_scale": float(self.student.logit_scale.detach().exp())}


def demo_model_config() -> dict[str, Any]:
    from dcclip.models.registry import get_model_config

    return get_model_config(DEMO_ARCH, "teacher")


def preprocess_config(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """open_clip preprocess_cfg for the demo teacher (OpenAI mean/std, bicubic, shortest-side resize)."""
    pre = Preprocess(image_size=int(model_cfg["vision_cfg"]["image_size"]))
    return {
        "size": pre.image_size,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "interpolation": pre.interpolation,
        "resize_mode": pre.resize_mode,
    }


def save_open_clip_dir(model: nn.Module, model_cfg: dict[str, Any], out_dir: Path) -> Path:
    """Write an open_clip local-dir checkpoint atomically (temporary directory, then rename)."""
    from safetensors.torch import save_model

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    payload = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_config(model_cfg)}
    (tmp / CONFIG_FILE).write_text(json.dumps(payload, indent=2), "utf-8")
    save_model(model, str(tmp / WEIGHTS_FILE))
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        os.replace(tmp / name, out_dir / name)
    shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def train_demo_teacher(
    world: Path, out: Path, steps: int = 600, seed: int = 0, batch_size: int = 128, lr: float = 2e-3, workers: int = 2
) -> dict[str, Any]:
    """Train the English-only demo teacher on ``world/train`` and save it to ``out`` (resumes if interrupted)."""
    import open_clip

    from dcclip.data.pipeline import ShardLoader
    from dcclip.engine.distributed import DistEnv
    from dcclip.engine.loop import FitSpec, fit

    train_dir = Path(world) / "train"
    if not (train_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"{train_dir}: no toy-world training shards (run `dcclip world --out {world}`)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model_cfg = demo_model_config()
    model = open_clip.model.CLIP(**model_cfg)
    pre = Preprocess(image_size=int(model_cfg["vision_cfg"]["image_size"]))
    data = DataConfig(
        train=str(train_dir), langs=("en",), caption_sampling="uniform", batch_size=batch_size, workers=workers
    )
    loader = ShardLoader(data, pre, OpenClipTokens(int(model_cfg["text_cfg"]["context_length"])), seed=seed)
    spec = FitSpec(
        run_dir=out / "training",
        train=TrainConfig(
            out_dir=str(out / "training"), steps=steps, seed=seed, log_every=10, ckpt_every=max(50, steps // 4),
            keep_last=1, resume="auto", channels_last=False,
        ),
        optim=OptimConfig(lr=lr, weight_decay=0.1, warmup_steps=min(50, steps // 10), betas=(0.9, 0.98)),
        checkpoint_config={"stage": "demo-teacher", "arch": model_cfg},
        description="demo teacher",
    )  # fmt: skip
    result = fit(ClipTrainingTask(model), loader, spec, DistEnv())
    save_open_clip_dir(model, model_cfg, out)
    summary = {
        "teacher_spec": f"openclip:{out.resolve()}",
        "steps": result.step,
        "seconds": round(result.seconds, 1),
        "final_loss": result.losses.get("loss"),
        "samples_seen": result.samples_seen,
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2), "utf-8")
    log.info("demo teacher saved to %s", out)
    return summary
