"""Losses against torch / open_clip references, and zero when the student equals the teacher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dcclip.losses import (
    ContrastiveLoss,
    CrossLingualTextLoss,
    FeatureMapLoss,
    ImageEmbeddingLoss,
    contrastive_loss,
    embedding_distance,
    smooth_l1_reference,
)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_feature_map_loss_matches_smooth_l1(beta):
    student, teacher = torch.randn(4, 8, 3, 3) * 2, torch.randn(4, 8, 3, 3)
    got = FeatureMapLoss(beta)(student, teacher)["fmap_loss"]
    assert torch.allclose(got, F.smooth_l1_loss(student, teacher, beta=beta))
    assert torch.allclose(got, smooth_l1_reference(student, teacher, beta))
    assert FeatureMapLoss(beta)(teacher, teacher)["fmap_loss"].item() == 0.0


def test_feature_map_shape_mismatch_is_named():
    with pytest.raises(ValueError, match=r"student .* teacher"):
        FeatureMapLoss()(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 5, 5))


def test_embedding_losses_against_references():
    s, t = torch.randn(6, 16), torch.randn(6, 16)
    cosine = ImageEmbeddingLoss("cosine")(s, t)["image_embed_loss"]
    assert torch.allclose(cosine, (1 - F.cosine_similarity(s, t)).mean(), atol=1e-6)
    mse = embedding_distance(s, t, "mse")
    assert torch.allclose(mse, F.mse_loss(F.normalize(s), F.normalize(t), reduction="sum") / 6, atol=1e-6)
    assert ImageEmbeddingLoss("cosine")(t * 3, t)["image_embed_loss"].abs().item() < 1e-6  # scale-invariant
    assert embedding_distance(t, t, "mse").item() == 0.0
    with pytest.raises(ValueError, match="unknown embedding loss"):
        embedding_distance(s, t, "l3")


def test_cross_lingual_text_loss_uses_the_source_caption_of_each_image():
    teacher_source = torch.randn(2, 8)
    caption_image = torch.tensor([0, 0, 1, 1, 1])
    perfect = teacher_source[caption_image] * 2.0
    loss = CrossLingualTextLoss("mse")(perfect, teacher_source, caption_image)["text_embed_loss"]
    assert loss.item() < 1e-6
    swapped = teacher_source[1 - caption_image]
    assert CrossLingualTextLoss("mse")(swapped, teacher_source, caption_image)["text_embed_loss"] > 0.1


def test_contrastive_equals_open_clip_clip_loss():
    from open_clip.loss import ClipLoss

    image, text = torch.randn(8, 16), torch.randn(8, 16)
    scale = torch.tensor(14.0)
    ref = ClipLoss()(F.normalize(image), F.normalize(text), scale)
    got = contrastive_loss(image, text, torch.arange(8), scale)
    assert torch.allclose(got, ref, atol=1e-6)
    module = ContrastiveLoss(max_scale=100.0)(image, text, torch.arange(8), scale.log())["contrastive_loss"]
    assert torch.allclose(module, ref, atol=1e-5)


def test_contrastive_with_several_captions_per_image():
    image = torch.randn(3, 8)
    caption_image = torch.tensor([0, 0, 1, 2, 2, 2])
    text = image[caption_image] * 5
    loss = contrastive_loss(image, text, caption_image, torch.tensor(50.0))
    # image->text targets are spread over each image's captions, so the minimum is log(captions per image)
    floor = 0.5 * torch.tensor([2.0, 1.0, 3.0]).log().mean()
    assert loss.item() == pytest.approx(floor.item(), abs=1e-3)


def test_logit_scale_is_clamped():
    image, text = torch.randn(4, 8), torch.randn(4, 8)
    huge = ContrastiveLoss(max_scale=100.0)(image, text, torch.arange(4), torch.tensor(10.0))["contrastive_loss"]
    at_max = contrastive_loss(image, text, torch.arange(4), torch.tensor(100.0))
    assert torch.allclose(huge, at_max)


def test_teacher_guided_contrastive_equals_clip_for_a_confident_teacher_and_spares_same_class_pairs():
    from dcclip.losses import contrastive_loss, teacher_guided_contrastive_loss

    torch.manual_seed(0)
    image, text = torch.randn(4, 8), torch.randn(4, 8)
    scale = torch.tensor(100.0)
    distinct = torch.eye(4, 8)  # the teacher tells every pair apart: its targets are one-hot
    pairs = torch.arange(4)
    guided = teacher_guided_contrastive_loss(image, text, distinct, distinct, pairs, scale)
    torch.testing.assert_close(guided, contrastive_loss(image, text, pairs, scale))
    # images 0 and 1 are the same class to the teacher: each caption's target is split between them
    same_class = distinct.clone()
    same_class[1] = same_class[0]
    scale = torch.tensor(10.0)

    def guided_loss(student):
        return teacher_guided_contrastive_loss(student, student, same_class, same_class, pairs, scale)

    def hard_loss(student):
        return contrastive_loss(student, student, pairs, scale)

    # hard targets reward telling the pair apart; the teacher's targets reward agreeing with the teacher
    assert hard_loss(distinct) < hard_loss(same_class)
    assert guided_loss(same_class) < guided_loss(distinct)
