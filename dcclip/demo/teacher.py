"""The offline stand-in for a downloaded teacher: a small open_clip CLIP trained on the toy world in 1.5-3.5 minutes.

A pretrained CLIP knows shapes, colours and digits from hundreds of millions of pairs; a contrastive run of two CPU
minutes on the toy world learns colour only (its text tower then ignores shape words). So the stand-in is trained
LiT-style ("locked-image tuning", Zhai et al. 2022), in two phases, with the same engine as the students:

1. image tower (timm ``test_resnet`` at 48 px inside ``open_clip.model.CLIP``) supervised on the world's own labels:
   soft cross-entropy over the 90 colour x shape pairs, the 10 colours and 9 shapes of every drawn object, and the 10
   digits; label-preserving augmentation (any rotation and flip for shapes, small turns for digits; zoom, shift and
   pixel noise for both). Images are decoded once into memory. Progressive resolution (as in FixRes / fast.ai's
   progressive resizing): the first 60% of the steps see the warped views at 32 px (0.44x the pixels), the rest at
   the tower's 48 px; 1,400 steps so cost 0.83x of 1,100 steps at 48 px and reach more shapes (measured: see README).
2. text tower trained with InfoNCE against the frozen image embeddings of the English captions.

Only the stand-in teacher ever sees labels; the students learn from it and from the captions alone. It is saved as an
open_clip ``local-dir`` checkpoint (``open_clip_config.json`` + ``open_clip_model.safetensors``) and loads through
the open_clip teacher backend exactly like a user's checkpoint: ``openclip:/path/to/dir``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dcclip.config import DataConfig, OptimConfig, TrainConfig
from dcclip.data.augment import warp
from dcclip.io import atomic_path, write_text_atomic
from dcclip.losses import contrastive_loss
from dcclip.runtime.constants import LOGIT_SCALE_MAX
from dcclip.runtime.preprocess import Preprocess

log = logging.getLogger(__name__)

DEMO_ARCH = "demo-teacher"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
HEADS = {"pair": 90, "colour": 10, "shape": 9, "digit": 10}


@dataclass(frozen=True)
class TeacherRecipe:
    """Steps, batch sizes and learning rates of the two phases (defaults: 93-104 s on 2 EPYC cores, 195 s on slower)."""

    image_steps: int = 1400
    text_steps: int = 80
    batch_size: int = 128
    text_batch_size: int = 256
    image_lr: float = 1e-2
    text_lr: float = 3e-3
    seed: int = 0
    low_res_size: int = 32  # side of the warped views early in phase 1 (0: always the tower's own size)
    low_res_fraction: float = 0.6  # share of the phase-1 steps taken at low_res_size
    image_size: int = 0  # the image tower's input side (0: demo-teacher's own, 48); the CI gate trains at 32


class OpenClipTokens:
    """open_clip's tokenizer behind dcclip's ``encode(texts, max_length) -> (ids, mask)`` interface.

    open_clip's BPE runs in Python (~40 ms per batch of 256); every caption is tokenized once and remembered.
    """

    def __init__(self, context_length: int):
        import open_clip

        self.tokenizer = open_clip.get_tokenizer("ViT-B-32")
        self.context_length = context_length
        self.rows: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        new = sorted({text for text in texts if text not in self.rows})
        if new:
            ids = self.tokenizer(new, context_length=self.context_length).numpy().astype(np.int64)
            self.rows.update(zip(new, ids, strict=True))
        ids = np.stack([self.rows[text] for text in texts]) if texts else np.zeros((0, self.context_length), np.int64)
        return ids, (ids != 0).astype(np.int64)


# --- labels ----------------------------------------------------------------------------------------------------------
def world_labels(meta: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Per-sample soft targets of every head from the world's metadata (rows of zeros where a head does not apply)."""
    from dcclip.data.world import COLOURS, SHAPES

    rows = {name: np.zeros((len(meta), n), dtype=np.float32) for name, n in HEADS.items()}
    for i, info in enumerate(meta):
        if info.get("kind") == "digits":
            rows["digit"][i, int(info["digit"])] = 1.0
            continue
        for obj in info.get("objects", []):
            colour, shape = COLOURS.index(obj["colour"]), SHAPES.index(obj["shape"])
            rows["pair"][i, colour * len(SHAPES) + shape] += 1.0
            rows["colour"][i, colour] += 1.0
            rows["shape"][i, shape] += 1.0
    out = {}
    for name, table in rows.items():
        total = table.sum(axis=1, keepdims=True)
        out[name] = torch.from_numpy(np.divide(table, total, out=np.zeros_like(table), where=total > 0))
    return out


def label_preserving_affine(is_digit: torch.Tensor) -> torch.Tensor:
    """[B, 2, 3] warps: any turn and flip for shapes, at most 15 degrees for digits; zoom and shift for both."""
    n = is_digit.shape[0]
    angle = torch.where(is_digit, (torch.rand(n) - 0.5) * math.radians(30), torch.rand(n) * 2 * math.pi)
    flip = torch.where(is_digit | (torch.rand(n) < 0.5), 1.0, -1.0)
    zoom = torch.exp(torch.empty(n).uniform_(math.log(0.8), math.log(1.3)))
    theta = torch.zeros(n, 2, 3)
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos * flip, -sin, sin * flip, cos
    theta[:, :, 2] = torch.empty(n, 2).uniform_(-0.12, 0.12)
    return theta


class LabelledImageTask(nn.Module):
    """Phase 1: the image tower and throw-away linear heads learn the world's labels; the loop saves ``student``."""

    def __init__(
        self,
        model: nn.Module,
        labels: dict[str, torch.Tensor],
        keys: list[str],
        noise: float = 0.03,
        low_res: tuple[int, int] = (0, 0),
    ):
        super().__init__()
        embed_dim = int(model.text_projection.shape[1])
        self.student = model
        self.heads = nn.ModuleDict({name: nn.Linear(embed_dim, n) for name, n in HEADS.items()})
        self.labels = labels
        self.row = {key: i for i, key in enumerate(keys)}
        self.noise = noise
        self.low_res_size, self.low_res_steps = low_res  # the first low_res_steps steps warp to low_res_size
        self.step = 0

    def set_step(self, step: int) -> None:
        """Called by the engine before each step (also after a resume), so the resolution follows the step."""
        self.step = step

    def view_size(self, full: int) -> int:
        """Side of this step's warped views."""
        return self.low_res_size if self.low_res_size and self.step < self.low_res_steps else full

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        rows = torch.tensor([self.row[k] for k in batch["keys"]])
        targets = {name: table[rows] for name, table in self.labels.items()}
        is_digit = targets["digit"].sum(dim=1) > 0
        source = batch["pixels"]
        pixels = warp(source, label_preserving_affine(is_digit), self.view_size(source.shape[-1]))
        pixels = pixels + self.noise * torch.randn_like(pixels)
        if source.is_contiguous(memory_format=torch.channels_last):
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        features = self.student.visual(pixels)
        losses = {}
        for name, head in self.heads.items():
            target = targets[name]
            applies = target.sum(dim=1) > 0
            if applies.any():
                log_p = F.log_softmax(head(features[applies]), dim=1)
                losses[f"{name}_loss"] = -(target[applies] * log_p).sum(dim=1).mean()
        return {"loss": sum(losses.values()), **losses}


class LockedImageTextTask(nn.Module):
    """Phase 2: the text tower learns to meet the frozen image tower's embeddings (LiT); the visual stays in eval."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.student = model
        self.image_cache: dict[str, torch.Tensor] = {}  # the locked tower sees unaugmented images: embed each once
        model.visual.requires_grad_(False)

    def train(self, mode: bool = True) -> LockedImageTextTask:
        super().train(mode)
        self.student.visual.eval()  # frozen BatchNorm statistics too
        return self

    @torch.no_grad()
    def image_embeddings(self, batch: dict[str, Any]) -> torch.Tensor:
        """Embeddings of the batch's images from the locked tower, computed once per image."""
        keys = batch["keys"]
        missing = [i for i, key in enumerate(keys) if key not in self.image_cache]
        if missing:
            for i, embedding in zip(missing, self.student.visual(batch["pixels"][missing]), strict=True):
                self.image_cache[keys[i]] = embedding
        return torch.stack([self.image_cache[key] for key in keys])

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        image = self.image_embeddings(batch)
        text = self.student.encode_text(batch["input_ids"])
        scale = self.student.logit_scale.exp().clamp(max=LOGIT_SCALE_MAX)
        # Identical captions in a batch need no special targets: their logits are identical rows, so CLIP's loss
        # already equals the loss with both pairs counted as positives.
        loss = contrastive_loss(image, text, batch["caption_image"], scale)
        return {"loss": loss, "contrastive_loss": loss}

    def extra_metrics(self) -> dict[str, float]:
        return {"logit_scale": float(self.student.logit_scale.detach().exp())}


# --- saving ----------------------------------------------------------------------------------------------------------
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
    """Write an open_clip local-dir checkpoint, each file atomically (the weights first, the config last)."""
    from safetensors.torch import save_model

    out_dir = Path(out_dir)
    model = model.to(memory_format=torch.contiguous_format)  # trained channels-last; safetensors wants contiguous
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_model(model, str(tmp))
    payload = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_config(model_cfg)}
    write_text_atomic(out_dir / CONFIG_FILE, json.dumps(payload, indent=2))
    return out_dir


# --- training --------------------------------------------------------------------------------------------------------
def _phase(
    task: nn.Module,
    loader: Any,
    out: Path,
    name: str,
    steps: int,
    lr: float,
    recipe: TeacherRecipe,
    channels_last: bool = False,
) -> Any:
    """Run one phase with the shared engine (resumable: checkpoints under ``out/training/<phase>``)."""
    from dcclip.engine.distributed import DistEnv
    from dcclip.engine.loop import FitSpec, fit

    run_dir = out / "training" / name
    spec = FitSpec(
        run_dir=run_dir,
        train=TrainConfig(
            out_dir=str(run_dir), steps=steps, seed=recipe.seed, log_every=20, ckpt_every=max(50, steps // 2),
            keep_last=1, resume="auto", channels_last=channels_last,
        ),
        optim=OptimConfig(lr=lr, weight_decay=0.05, warmup_steps=max(1, steps // 20), betas=(0.9, 0.98)),
        checkpoint_config={"stage": f"demo-teacher-{name}"},
        description=f"demo teacher: {name}",
    )  # fmt: skip
    return fit(task, loader, spec, DistEnv())


def train_demo_teacher(world: Path, out: Path, recipe: TeacherRecipe | None = None) -> dict[str, Any]:
    """Train the stand-in teacher on ``world/train`` (both phases) and save it to ``out``; resumes if interrupted."""
    import open_clip

    from dcclip.data.memory import MemoryLoader, decode_shard_set

    recipe = recipe or TeacherRecipe()
    train_dir = Path(world) / "train"
    if not (train_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"{train_dir}: no toy-world training shards (run `dcclip world --out {world}`)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    model_cfg = demo_model_config()
    if recipe.image_size:
        model_cfg["vision_cfg"]["image_size"] = recipe.image_size
    model = open_clip.model.CLIP(**model_cfg)
    pre = Preprocess(image_size=int(model_cfg["vision_cfg"]["image_size"]))
    decoded = decode_shard_set(str(train_dir), [pre], progress=True)
    tokens = OpenClipTokens(int(model_cfg["text_cfg"]["context_length"]))

    def loader(batch_size: int) -> MemoryLoader:
        data = DataConfig(train=str(train_dir), langs=("en",), caption_sampling="uniform", batch_size=batch_size)
        return MemoryLoader(data, decoded, pre, tokens, seed=recipe.seed)

    low_res = (0, 0)  # no low-resolution phase when the tower's own input is no larger
    if 0 < recipe.low_res_size < pre.image_size:
        low_res = (recipe.low_res_size, round(recipe.low_res_fraction * recipe.image_steps))
    image_task = LabelledImageTask(model, world_labels(decoded.meta), decoded.keys, low_res=low_res)
    image = _phase(
        image_task, loader(recipe.batch_size), out, "image", recipe.image_steps, recipe.image_lr, recipe,
        channels_last=True,  # 1.1x on test_resnet's small convolutions (measured)
    )  # fmt: skip
    text = _phase(
        LockedImageTextTask(model), loader(recipe.text_batch_size), out, "text", recipe.text_steps, recipe.text_lr,
        recipe,
    )  # fmt: skip
    save_open_clip_dir(model, model_cfg, out)
    summary = {
        "teacher_spec": f"openclip:{out.resolve()}",
        "recipe": asdict(recipe),
        "steps": {"image": image.step, "text": text.step},
        "seconds": round(image.seconds + text.seconds, 1),
        "final_loss": {"image": image.losses.get("loss"), "text": text.losses.get("loss")},
        "samples_seen": image.samples_seen + text.samples_seen,
        "decoded_samples": len(decoded),
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2), "utf-8")
    log.info("demo teacher saved to %s", out)
    return summary
