"""Pure loss modules: tensors in, a dict of named ``*_loss`` tensors out. Gathering across ranks lives elsewhere.

- feature maps: SmoothL1 between the adapted student map and the teacher map (DC-CLIP);
- embeddings: cosine or MSE between unit-normalised student and teacher embeddings (CLIP-KD's feature mimicry);
- text: every language's caption is pulled onto the teacher's embedding of the source caption (Reimers & Gurevych);
- contrastive: symmetric InfoNCE between image and text embeddings, any number of captions per image; with hard
  targets (CLIP) or with the teacher's match distribution as targets (no false negatives from same-class pairs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcclip.runtime.constants import LOGIT_SCALE_MAX


def embedding_distance(student: Tensor, teacher: Tensor, kind: str) -> Tensor:
    """Mean distance between unit-normalised embeddings: 1 - cosine, or squared error summed over dimensions."""
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    if kind == "cosine":
        return (1.0 - (s * t).sum(dim=-1)).mean()
    if kind == "mse":
        return (s - t).pow(2).sum(dim=-1).mean()
    raise ValueError(f"unknown embedding loss kind {kind!r} (use 'cosine' or 'mse')")


class FeatureMapLoss(nn.Module):
    """SmoothL1 between the student's adapted feature map and the teacher's, as in DC-CLIP."""

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = beta

    def forward(self, student_fmap: Tensor, teacher_fmap: Tensor) -> dict[str, Tensor]:
        if student_fmap.shape != teacher_fmap.shape:
            shapes = f"student {tuple(student_fmap.shape)}, teacher {tuple(teacher_fmap.shape)}"
            raise ValueError(f"feature maps differ in shape: {shapes}")
        loss = F.smooth_l1_loss(student_fmap.float(), teacher_fmap.float(), beta=self.beta)
        return {"fmap_loss": loss}


class ImageEmbeddingLoss(nn.Module):
    """Student image embedding mimics the teacher's (direction only: both are normalised)."""

    def __init__(self, kind: str = "cosine"):
        super().__init__()
        self.kind = kind

    def forward(self, student_emb: Tensor, teacher_emb: Tensor) -> dict[str, Tensor]:
        return {"image_embed_loss": embedding_distance(student_emb, teacher_emb, self.kind)}


class CrossLingualTextLoss(nn.Module):
    """Each caption, in whatever language, towards the teacher's embedding of its image's source caption."""

    def __init__(self, kind: str = "mse"):
        super().__init__()
        self.kind = kind

    def forward(self, student_text: Tensor, teacher_source: Tensor, caption_image: Tensor) -> dict[str, Tensor]:
        targets = teacher_source[caption_image]
        return {"text_embed_loss": embedding_distance(student_text, targets, self.kind)}


def contrastive_loss(image_emb: Tensor, text_emb: Tensor, caption_image: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE, ½(image→text + text→image), over [B, D] images and [T, D] captions.

    ``caption_image`` [T] maps each caption to its image. With one caption per image this is exactly CLIP's loss;
    with several, image→text uses a uniform target over the image's captions.
    """
    image = F.normalize(image_emb.float(), dim=-1)
    text = F.normalize(text_emb.float(), dim=-1)
    logits_per_text = logit_scale * text @ image.T  # [T, B]
    text_to_image = F.cross_entropy(logits_per_text, caption_image)
    targets = F.one_hot(caption_image, num_classes=image.shape[0]).T.float()  # [B, T]
    targets = targets / targets.sum(dim=1, keepdim=True).clamp_min(1.0)
    has_caption = targets.sum(dim=1) > 0
    logits_per_image = logits_per_text.T
    image_to_text = -(targets * F.log_softmax(logits_per_image, dim=1)).sum(dim=1)[has_caption].mean()
    return 0.5 * (image_to_text + text_to_image)


def teacher_guided_contrastive_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    teacher_image: Tensor,
    teacher_text: Tensor,
    caption_image: Tensor,
    logit_scale: Tensor,
) -> Tensor:
    """Symmetric InfoNCE whose targets are the teacher's own image-text match distribution, as a KL divergence.

    With hard targets every other image of a batch is a negative, also one of the same digit or class: a batch of
    templated captions holds many such false negatives, and pushing them apart undoes what distillation taught.
    Here caption k (of image ``caption_image[k]``) is scored by the teacher's embedding of that image's source caption
    against the teacher's image embeddings, at the student's scale; the soft rows say which images the teacher thinks
    match. The value is the cross-entropy minus the targets' entropy (same gradient), so it falls to 0 as the
    student's match distribution meets the teacher's.
    """
    image, text = F.normalize(image_emb.float(), dim=-1), F.normalize(text_emb.float(), dim=-1)
    t_image, t_text = F.normalize(teacher_image.float(), dim=-1), F.normalize(teacher_text.float(), dim=-1)
    logits = logit_scale * text @ image.T  # [T, B]
    with torch.no_grad():
        t_logits = logit_scale * t_text[caption_image] @ t_image.T
    return 0.5 * (_row_kl(logits, t_logits) + _row_kl(logits.T, t_logits.T))


def _row_kl(logits: Tensor, target_logits: Tensor) -> Tensor:
    """Mean over rows of KL(softmax(target) || softmax(logits))."""
    log_q, log_p = F.log_softmax(logits, dim=1), F.log_softmax(target_logits, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE between student image and text embeddings, with a clamped learnable temperature."""

    def __init__(self, max_scale: float = LOGIT_SCALE_MAX):
        super().__init__()
        self.max_scale = max_scale

    def forward(
        self, image_emb: Tensor, text_emb: Tensor, caption_image: Tensor, log_scale: Tensor
    ) -> dict[str, Tensor]:
        scale = log_scale.exp().clamp(max=self.max_scale)
        return {"contrastive_loss": contrastive_loss(image_emb, text_emb, caption_image, scale)}


def smooth_l1_reference(student: Tensor, teacher: Tensor, beta: float) -> Tensor:
    """The textbook SmoothL1 definition, kept to test FeatureMapLoss against."""
    diff = (student - teacher).abs()
    return torch.where(diff < beta, 0.5 * diff.pow(2) / beta, diff - 0.5 * beta).mean()
