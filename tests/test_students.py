"""Students: every shipped architecture builds and runs, projections are sized from real outputs, the resolved
architecture rebuilds the same model, text pooling, layer inheritance and JSON validation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dcclip.models.registry import list_models
from dcclip.models.students import (
    Student,
    StudentConfigError,
    build_student,
    count_parameters,
    inherit_text_layers,
    length_groups,
    rebuild_student,
    resize_grid,
    student_preprocess,
)
from dcclip.runtime.preprocess import Preprocess

SHIPPED = (
    "test-student",
    "test-vit-student",
    "demo-student",
    "mnv4s-text6",
    "fastvit-t8-text4",
    "mnv4s050-text4",
    "mnv4s035-text3",
)
TEACHER = {"embed_dim": 32, "fmap_channels": 24, "fmap_grid": (7, 7), "vocab_size": 1000}
TINY_TEXT = {"num_layers": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "max_length": 16}


def tiny_arch(timm_model: str = "test_efficientnet", image_size: int = 32, **text: object) -> dict:
    """A student architecture dict with a tiny text tower."""
    return {
        "embed_dim": "teacher",
        "image": {"timm_model": timm_model, "image_size": image_size},
        "text": {**TINY_TEXT, **text},
    }


def pixels(student: Student, batch: int = 2) -> torch.Tensor:
    """Random images at the student's input size."""
    size = student.arch["image"]["image_size"]
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def tokens(batch: int = 3, length: int = 10, vocab: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids (no pad id 0) and a full attention mask."""
    ids = torch.randint(4, vocab, (batch, length), generator=torch.Generator().manual_seed(1))
    return ids, torch.ones_like(ids)


@pytest.fixture(scope="module")
def built() -> dict[str, Student]:
    """Every shipped student, built once against the test teacher."""
    return {name: build_student(name, **TEACHER) for name in SHIPPED}


# ---------------------------------------------------------------------------------------------------- shipped configs


def test_shipped_configs_are_registered() -> None:
    assert set(SHIPPED) <= set(list_models("student"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_builds_and_runs(built: dict[str, Student], name: str) -> None:
    student = built[name].eval()
    with torch.no_grad():
        out = student(pixels(student), *tokens())
    assert out["image_emb"].shape == (2, 32)
    assert out["image_fmap"] is not None and out["image_fmap"].shape == (2, 24, 7, 7)
    assert out["text_emb"].shape == (3, 32)
    assert all(torch.isfinite(value).all() for value in out.values())


def test_every_registered_student_builds() -> None:
    """Configs added later are covered too, at least by a build with a dummy forward."""
    for name in list_models("student"):
        if name not in SHIPPED:
            build_student(name, **TEACHER)


@pytest.mark.parametrize("name", ["test-student", "test-vit-student"])
def test_gradients_reach_trunk_adapter_and_projections(built: dict[str, Student], name: str) -> None:
    student = built[name]
    student.train()
    student.zero_grad()
    out = student(pixels(student), *tokens())
    (out["image_emb"].square().sum() + out["image_fmap"].square().sum() + out["text_emb"].square().sum()).backward()
    missing = [n for n, p in student.named_parameters() if p.grad is None and n != "logit_scale"]
    assert not missing, f"parameters without gradient: {missing}"
    for module in (student.image.trunk, student.image.adapter, student.image.proj, student.text.proj):
        assert any(p.grad.abs().sum() > 0 for p in module.parameters())
    assert student.text.transformer.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_forward_without_fmap_and_without_teacher_fmap() -> None:
    student = build_student("test-student", embed_dim=16, vocab_size=100)
    assert student.image.adapter is None
    embedding, fmap = student.image(pixels(student))
    assert embedding.shape == (2, 16) and fmap is None
    assert student(pixels(student), with_fmap=False)["image_fmap"] is None
    assert student.arch["fmap_channels"] is None and student.arch["fmap_grid"] is None


# ----------------------------------------------------------------------------------------------------- image tower


def test_head_conv_projection_sized_from_real_output() -> None:
    """MobileNetV3: the last stage has 288 channels, the head conv makes 1024 (open_clip sizes its projection 288)."""
    student = build_student(tiny_arch("mobilenetv3_small_050", 64), **TEACHER)
    assert student.image.trunk.num_features == 288
    assert student.image.trunk_channels == 288
    assert student.image.feature_dim == 1024
    assert student.image.proj.in_features == 1024
    assert student.image.adapter.in_channels == 288
    embedding, fmap = student.image(pixels(student))
    assert embedding.shape == (2, 32) and fmap.shape == (2, 24, 7, 7)


def test_vit_patch_tokens_become_grid(built: dict[str, Student]) -> None:
    image = built["test-vit-student"].image
    assert image.num_prefix_tokens == 1
    x = pixels(built["test-vit-student"])
    with torch.no_grad():
        features = image.trunk.forward_features(x)
        grid = image.feature_grid(features, 160, 160)
    assert features.shape == (2, 101, 64)
    assert grid.shape == (2, 64, 10, 10)
    for row, col in [(0, 0), (0, 9), (3, 4), (9, 9)]:
        torch.testing.assert_close(grid[:, :, row, col], features[:, 1 + row * 10 + col])


def test_resize_grid_pools_down_and_interpolates_up() -> None:
    fmap = torch.randn(2, 3, 9, 9)
    assert resize_grid(fmap, (9, 9)) is fmap
    torch.testing.assert_close(resize_grid(fmap, (3, 3)), torch.nn.functional.avg_pool2d(fmap, 3))
    up = resize_grid(torch.randn(2, 3, 2, 2), (7, 7))
    assert up.shape == (2, 3, 7, 7)
    constant = resize_grid(torch.full((1, 1, 1, 1), 3.0), (7, 7))
    torch.testing.assert_close(constant, torch.full((1, 1, 7, 7), 3.0))


def test_adapter_matches_teacher_grid_from_larger_student_grid() -> None:
    student = build_student("test-vit-student", embed_dim=8, fmap_channels=5, fmap_grid=(4, 6), vocab_size=50)
    assert student.image(pixels(student))[1].shape == (2, 5, 4, 6)


# ------------------------------------------------------------------------------------------------------ text tower


@pytest.mark.parametrize("text_arch", ["bert", "xlm-roberta"])
def test_masked_mean_pooling_ignores_padding(text_arch: str) -> None:
    student = build_student(tiny_arch(arch=text_arch), embed_dim=16, vocab_size=200, pad_id=1).eval()
    ids = torch.tensor([[5, 17, 42, 8, 9]])
    padded = torch.cat([ids, torch.full((1, 4), 1)], dim=1)
    mask = torch.cat([torch.ones(1, 5), torch.zeros(1, 4)], dim=1).long()
    with torch.no_grad():
        short = student.encode_text(ids, torch.ones_like(ids))
        long = student.encode_text(padded, mask)
        unmasked = student.encode_text(padded, torch.ones_like(padded))
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(short, unmasked, atol=1e-4)


def padded_batch(lengths: list[int], width: int, pad_id: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random ids of the given lengths, padded to ``width``."""
    ids = torch.randint(4, 200, (len(lengths), width), generator=torch.Generator().manual_seed(2))
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, pad_id), mask


@pytest.mark.parametrize("text_arch", ["bert", "xlm-roberta"])
def test_text_by_length_equals_one_padded_call(text_arch: str) -> None:
    student = build_student(tiny_arch(arch=text_arch), embed_dim=16, vocab_size=200, pad_id=1)
    lengths = [3, 16, 5, 4, 9, 3, 12, 6, 16, 2, 7, 4] * 2  # padded to 16: most of the batch is padding
    ids, mask = padded_batch(lengths, 16)
    student.text.eval()  # no dropout: the two calls must agree
    with torch.no_grad():
        torch.testing.assert_close(student.text.forward_by_length(ids, mask), student.text(ids, mask))
    groups = length_groups(mask.sum(dim=1), max_groups=4)
    assert len(groups) > 1 and sorted(torch.cat(groups).tolist()) == list(range(len(lengths)))
    student.text.forward_by_length(ids, mask).sum().backward()
    assert student.text.transformer.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_length_groups_keep_equal_lengths_in_one_call() -> None:
    assert len(length_groups(torch.full((64,), 12), max_groups=4)) == 1
    assert len(length_groups(torch.tensor([5] * 60 + [32] * 4), max_groups=4)) > 1


def test_text_by_length_left_padding_falls_back_to_one_call() -> None:
    student = build_student(tiny_arch(), embed_dim=16, vocab_size=200, pad_id=1).eval()
    ids, mask = padded_batch([3, 8, 2, 8], 8)
    ids, mask = ids.flip(1), mask.flip(1)  # real tokens last
    with torch.no_grad():
        torch.testing.assert_close(student.text.forward_by_length(ids, mask), student.text(ids, mask))


def test_cls_pooling_takes_first_token(built: dict[str, Student]) -> None:
    text = built["test-vit-student"].text.eval()
    assert text.pooling == "cls"
    ids, mask = tokens()
    with torch.no_grad():
        hidden = text.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(text(ids, mask), text.proj(hidden[:, 0]))
        assert not torch.allclose(text(ids, mask), text.proj(hidden.mean(dim=1)))


def test_text_and_image_embed_export_with_dynamic_shapes(built: dict[str, Student]) -> None:
    """torch.export (what the ONNX exporter runs) with dynamic batch and length; other shapes give eager's output."""
    student = built["test-student"].eval()
    batch, length = torch.export.Dim("batch", min=1, max=256), torch.export.Dim("length", min=2, max=16)
    ids, mask = tokens(2, 8)
    text = torch.export.export(student.text, (ids, mask), dynamic_shapes=({0: batch, 1: length},) * 2).module()
    ids, mask = tokens(5, 12)
    mask[:, 7:] = 0
    torch.testing.assert_close(text(ids, mask), student.text(ids, mask))

    class Embed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.image = student.image

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.image.embed(x)

    image = torch.export.export(Embed(), (pixels(student),), dynamic_shapes=({0: batch},)).module()
    x = pixels(student, batch=5)
    torch.testing.assert_close(image(x), student.image.embed(x))


# --------------------------------------------------------------------------------------------- rebuild and counting


@pytest.mark.parametrize("name", ["test-student", "test-vit-student"])
def test_rebuild_from_arch_gives_same_model(built: dict[str, Student], name: str) -> None:
    student = built[name].eval()
    arch = json.loads(json.dumps(student.arch))  # as saved in a checkpoint's config.json
    again = rebuild_student(arch).eval()
    assert str(again) == str(student)
    assert again.arch == student.arch
    shapes = {k: v.shape for k, v in student.state_dict().items()}
    assert {k: v.shape for k, v in again.state_dict().items()} == shapes
    before = again.encode_text(*tokens())
    again.load_state_dict(student.state_dict())
    assert not torch.allclose(before, again.encode_text(*tokens()))
    with torch.no_grad():
        x, (ids, mask) = pixels(student), tokens()
        for a, b in zip(student.image(x), again.image(x), strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        torch.testing.assert_close(student.encode_text(ids, mask), again.encode_text(ids, mask), atol=0, rtol=0)


def test_rebuild_rejects_unresolved_arch() -> None:
    with pytest.raises(StudentConfigError, match="embed_dim"):
        rebuild_student(tiny_arch())


def test_count_parameters(built: dict[str, Student]) -> None:
    student = built["test-student"]
    counts = count_parameters(student)
    everything = sum(p.numel() for p in student.parameters())
    assert counts["adapter"] == 256 * 24 + 24
    assert counts["total_deployed"] == counts["image"] + counts["text"] == everything - counts["adapter"] - 1
    assert counts["image"] > counts["adapter"] > 0 and counts["text"] > 0


def test_logit_scale_is_stored_as_log() -> None:
    assert build_student("test-student", **TEACHER).logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert build_student("test-student", logit_scale_init=10.0, **TEACHER).logit_scale.item() == pytest.approx(
        math.log(10.0)
    )


def test_student_preprocess() -> None:
    assert student_preprocess("demo-student") == Preprocess(image_size=48)  # the stand-in teacher's input exactly
    assert student_preprocess("mnv4s-text6") == Preprocess(
        image_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )
    defaults = student_preprocess({"image": {"timm_model": "test_vit"}})  # the rest from timm's pretrained config
    assert defaults.image_size == 160 and defaults.mean == (0.5, 0.5, 0.5)
    built = build_student("test-vit-student", **TEACHER)
    assert student_preprocess(built.arch) == Preprocess.from_config(built.arch["image"])


# ---------------------------------------------------------------------------------------------------- validation


def test_embed_dim_mismatch_and_missing() -> None:
    with pytest.raises(StudentConfigError, match=r"embed_dim.*64.*32"):
        build_student({**tiny_arch(), "embed_dim": 64}, embed_dim=32, vocab_size=100)
    with pytest.raises(StudentConfigError, match=r"embed_dim.*teacher"):
        build_student(tiny_arch(), vocab_size=100)
    assert build_student({**tiny_arch(), "embed_dim": 24}, vocab_size=100).image.proj.out_features == 24


def test_unknown_field_names_file_and_field(tmp_path: Path) -> None:
    cfg = tiny_arch()
    cfg["text"]["num_layer"] = cfg["text"].pop("num_layers")
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(StudentConfigError, match=r"typo\.json: text\.num_layer: unknown field.*'num_layers'"):
        build_student(str(path), **TEACHER)
    with pytest.raises(StudentConfigError, match="colour: unknown field"):
        build_student({**tiny_arch(), "colour": 1}, **TEACHER)


@pytest.mark.parametrize(
    ("section", "field", "value", "match"),
    [
        ("text", "pooling", "max", "text.pooling"),
        ("text", "num_heads", 3, "text.num_heads: must divide"),
        ("text", "num_layers", 0, "text.num_layers"),
        ("text", "arch", "gpt2", "text.arch"),
        ("text", "hf_dir", "/nowhere", "text.num_layers: conflicts with text.hf_dir"),
        ("image", "resize_mode", "crop", "image.resize_mode"),
        ("image", "std", [0.5, 0.0, 0.5], "image.std"),
        ("image", "timm_model", "resnet_nonexistent", "image.timm_model.*not a timm model"),
        ("image", "timm_kwargs", {"no_such_kwarg": 1}, "image.timm_kwargs"),
        ("image", "image_size", 4, "image.image_size"),
    ],
)
def test_bad_values_are_named(section: str, field: str, value: object, match: str) -> None:
    cfg = tiny_arch()
    cfg[section][field] = value
    with pytest.raises(StudentConfigError, match=match):
        build_student(cfg, **TEACHER)


def test_tokenizer_facts_are_required_and_checked() -> None:
    with pytest.raises(StudentConfigError, match="vocab_size is required"):
        build_student(tiny_arch(), embed_dim=8)
    with pytest.raises(StudentConfigError, match="pad_id"):
        build_student(tiny_arch(), embed_dim=8, vocab_size=10, pad_id=10)
    with pytest.raises(StudentConfigError, match="together"):
        build_student(tiny_arch(), embed_dim=8, vocab_size=10, fmap_channels=4)


# --------------------------------------------------------------------------------------- Hugging Face text towers


def tiny_bert(layers: int = 4, hidden: int = 32, vocab: int = 1000, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised BertModel teacher text encoder."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return BertModel(config)


def test_inherit_text_layers_copies_every_kth_layer() -> None:
    teacher = tiny_bert(layers=4)
    text = build_student(tiny_arch(), embed_dim=16, vocab_size=1000).text
    copied = inherit_text_layers(text, teacher)
    student = text.transformer
    for i, j in [(0, 0), (1, 2)]:  # k = 4 // 2
        for (name, p), (t_name, q) in zip(
            student.encoder.layer[i].named_parameters(), teacher.encoder.layer[j].named_parameters(), strict=True
        ):
            assert name == t_name and torch.equal(p, q)
            assert f"transformer.encoder.layer.{i}.{name}" in copied
    assert not torch.equal(student.encoder.layer[1].output.dense.weight, teacher.encoder.layer[1].output.dense.weight)
    assert torch.equal(student.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight)
    assert torch.equal(
        student.embeddings.position_embeddings.weight, teacher.embeddings.position_embeddings.weight[:16]
    )
    assert "transformer.embeddings.LayerNorm.weight" in copied
    assert "proj.weight" not in " ".join(copied)

    inherit_text_layers(text, teacher, every_k=3)
    assert torch.equal(student.encoder.layer[1].output.dense.weight, teacher.encoder.layer[3].output.dense.weight)


def test_inherit_text_layers_rejects_incompatible_teachers() -> None:
    from transformers import XLMRobertaConfig, XLMRobertaModel

    text = build_student(tiny_arch(), embed_dim=16, vocab_size=1000).text
    with pytest.raises(ValueError, match=r"hidden size 32.*48"):
        inherit_text_layers(text, tiny_bert(hidden=48))
    with pytest.raises(ValueError, match="tokenizer"):
        inherit_text_layers(text, tiny_bert(vocab=500))
    with pytest.raises(ValueError, match="every 2 from a teacher with 2"):
        inherit_text_layers(text, tiny_bert(layers=2), every_k=2)
    xlmr = XLMRobertaModel(
        XLMRobertaConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    )
    with pytest.raises(ValueError, match="bert encoder, teacher a roberta"):
        inherit_text_layers(text, xlmr)


def test_text_tower_from_hf_dir_rebuilds_without_it(tmp_path: Path) -> None:
    teacher = tiny_bert(layers=2, vocab=300)
    teacher.save_pretrained(tmp_path / "enc")
    arch = tiny_arch()
    arch["text"] = {"hf_dir": str(tmp_path / "enc"), "max_length": 16, "pooling": "mean"}
    student = build_student(arch, **{**TEACHER, "vocab_size": 300}).eval()
    weight = student.text.transformer.encoder.layer[1].attention.self.query.weight
    assert torch.equal(weight, teacher.encoder.layer[1].attention.self.query.weight)
    assert student.arch["text"]["hf_config"]["num_hidden_layers"] == 2
    with pytest.raises(StudentConfigError, match="exceeds the encoder"):
        build_student(arch, embed_dim=8, vocab_size=301)
    (tmp_path / "enc" / "config.json").unlink()
    again = rebuild_student(json.loads(json.dumps(student.arch))).eval()
    again.load_state_dict(student.state_dict())
    ids, mask = tokens(vocab=300)
    torch.testing.assert_close(again.encode_text(ids, mask), student.encode_text(ids, mask))


# ----------------------------------------------------------------------------------------------------- pretrained


@pytest.mark.timeout(10)
def test_pretrained_fails_fast_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="pretrained weights for timm model 'test_efficientnet' are not available"):
        build_student("test-student", pretrained=True, **TEACHER)
