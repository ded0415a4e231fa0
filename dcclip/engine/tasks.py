"""The task the loop trains: a student, an optional frozen teacher, and weighted named losses.

One task serves both stages: stage 1 weights the distillation losses (feature map, image embedding, cross-lingual
text), stage 2 weights the contrastive loss and may keep the distillation losses as a regulariser. Teacher targets
come from the batch (cached features) or from the teacher run online on the same images and source captions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from dcclip.config import LossConfig
from dcclip.losses import (
    ContrastiveLoss,
    CrossLingualTextLoss,
    FeatureMapLoss,
    ImageEmbeddingLoss,
    teacher_guided_contrastive_loss,
)

TEXT_CACHE_SIZE = 200_000  # teacher text embeddings kept by an online-teacher run (~100 MB at 128 dimensions)

# gather(image_emb, text_emb, caption_image) -> the same three over all ranks (see dcclip.engine.distributed)
Gather = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor, int, int]]


class StudentTask(nn.Module):
    """Student + frozen teacher + losses; ``forward(batch)`` returns ``loss`` and every weighted ``*_loss``."""

    DISTILL_LOSSES = ("fmap_loss", "image_embed_loss", "text_embed_loss")

    @staticmethod
    def weights_from(losses: LossConfig) -> dict[str, float]:
        """Loss name -> weight; a zero weight switches that loss (and what it needs) off."""
        return {
            "fmap_loss": losses.feature_map,
            "image_embed_loss": losses.image_embed,
            "text_embed_loss": losses.text_embed,
            "contrastive_loss": losses.contrastive,
        }

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        losses: LossConfig,
        freeze_image: bool = False,
        freeze_text: bool = False,
        gather: Gather | None = None,
    ):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.cfg = losses
        self.gather = gather
        self.weights = self.weights_from(losses)
        self.fmap_loss = FeatureMapLoss(losses.smooth_l1_beta)
        self.image_loss = ImageEmbeddingLoss(losses.image_embed_kind)
        self.text_loss = CrossLingualTextLoss(losses.text_embed_kind)
        self.contrastive = ContrastiveLoss(losses.logit_scale_max)
        self._text_cache: dict[str, Tensor] = {}
        self._freeze_unused(freeze_image, freeze_text)

    def _freeze_unused(self, freeze_image: bool, freeze_text: bool) -> None:
        """Parameters no active loss touches are frozen, so DDP needs no unused-parameter search."""
        adapter = getattr(self.student.image, "adapter", None)
        if adapter is not None and self.weights["fmap_loss"] == 0:
            adapter.requires_grad_(False)
        if self.weights["contrastive_loss"] == 0:
            self.student.logit_scale.requires_grad_(False)
        if freeze_image:
            self.student.image.requires_grad_(False)
        if freeze_text:
            self.student.text.requires_grad_(False)

    @property
    def needs_teacher(self) -> bool:
        guided = self.weights["contrastive_loss"] > 0 and self.cfg.contrastive_targets == "teacher"
        return guided or any(self.weights[k] > 0 for k in self.DISTILL_LOSSES)

    def teacher_targets(self, batch: dict[str, Any]) -> dict[str, Tensor | None]:
        """Teacher image embedding, feature map and source-caption embedding: cached in the batch or computed now."""
        if "img_emb" in batch and "txt_emb" in batch:
            return {"img_emb": batch["img_emb"], "img_fmap": batch.get("img_fmap"), "txt_emb": batch["txt_emb"]}
        if self.teacher is None:
            raise RuntimeError("the batch has no cached teacher features and no teacher is loaded")
        pixels = batch.get("teacher_pixels", batch["pixels"])
        img_emb, fmap = self.teacher.encode_image(pixels)
        return {"img_emb": img_emb, "img_fmap": fmap, "txt_emb": self.teacher_text(batch["source_texts"])}

    def teacher_text(self, texts: list[str]) -> Tensor:
        """The frozen teacher's embedding of each source caption, computed once per distinct caption.

        Captions repeat across epochs (and within one: templated data has many identical captions), and a frozen
        teacher maps a string to the same vector every time; the cache is bounded and starts over when full.
        """
        missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        if missing:
            if len(self._text_cache) + len(missing) > TEXT_CACHE_SIZE:
                self._text_cache.clear()
                missing = list(dict.fromkeys(texts))
            for text, embedding in zip(missing, self.teacher.encode_text(missing), strict=True):
                self._text_cache[text] = embedding
        return torch.stack([self._text_cache[t] for t in texts])

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        image_emb, student_fmap = self.student.image(batch["pixels"])
        text_emb = self.student.text.forward_by_length(batch["input_ids"], batch["attention_mask"])
        losses: dict[str, Tensor] = {}
        targets = self.teacher_targets(batch) if self.needs_teacher else None
        if targets is not None:
            losses.update(self._distill_losses(image_emb, student_fmap, text_emb, batch["caption_image"], targets))
        if self.weights["contrastive_loss"] > 0:
            losses.update(self._contrastive(image_emb, text_emb, batch["caption_image"], targets))
        total = sum(self.weights[name] * value for name, value in losses.items())
        return {"loss": total, **losses}

    def _distill_losses(
        self, image_emb: Tensor, student_fmap: Tensor | None, text_emb: Tensor, caption_image: Tensor, targets: dict
    ) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        if self.weights["fmap_loss"] > 0:
            if student_fmap is None or targets["img_fmap"] is None:
                raise RuntimeError(
                    "loss.feature_map > 0 needs teacher feature maps (cached img_fmap or online teacher)"
                )
            losses.update(self.fmap_loss(student_fmap, targets["img_fmap"].to(student_fmap.dtype)))
        if self.weights["image_embed_loss"] > 0:
            losses.update(self.image_loss(image_emb, targets["img_emb"]))
        if self.weights["text_embed_loss"] > 0:
            losses.update(self.text_loss(text_emb, targets["txt_emb"], caption_image))
        return losses

    def _contrastive(
        self, image_emb: Tensor, text_emb: Tensor, caption_image: Tensor, targets: dict | None
    ) -> dict[str, Tensor]:
        guided = self.cfg.contrastive_targets == "teacher"
        if guided and targets is None:
            raise RuntimeError("loss.contrastive_targets=teacher needs teacher targets (cached features or a teacher)")
        if self.gather is not None:
            if guided:  # one gather: the teacher's per-image embeddings ride along the student's (no gradient there)
                width = image_emb.shape[1]
                stacked = torch.cat([image_emb, targets["img_emb"].to(image_emb), targets["txt_emb"].to(image_emb)], 1)
                stacked, text_emb, caption_image, *_ = self.gather(stacked, text_emb, caption_image)
                image_emb, teacher_image, teacher_text = stacked.split([width, width, width], dim=1)
                targets = {"img_emb": teacher_image, "txt_emb": teacher_text}
            else:
                image_emb, text_emb, caption_image, *_ = self.gather(image_emb, text_emb, caption_image)
        if not guided:
            return self.contrastive(image_emb, text_emb, caption_image, self.student.logit_scale)
        scale = self.student.logit_scale.exp().clamp(max=self.cfg.logit_scale_max)
        loss = teacher_guided_contrastive_loss(
            image_emb, text_emb, targets["img_emb"], targets["txt_emb"], caption_image, scale
        )
        return {"contrastive_loss": loss}

    def extra_metrics(self) -> dict[str, float]:
        """Scalars worth a curve besides the losses."""
        with torch.no_grad():
            return {"logit_scale": float(self.student.logit_scale.exp().clamp(max=self.cfg.logit_scale_max))}
