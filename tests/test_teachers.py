"""Teachers: every backend built tiny with random weights, saved the way a download looks, loaded via load_teacher."""

from __future__ import annotations

import json
import time
from dataclasses import astuple
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402

from dcclip.models.registry import get_model_config  # noqa: E402
from dcclip.models.teachers import (  # noqa: E402
    CompositeTeacher,
    Teacher,
    TeacherLoadError,
    TeacherSpecError,
    load_teacher,
    parse_teacher_spec,
    preprocess_from_hf,
    preprocess_from_openclip,
)
from dcclip.runtime.preprocess import Preprocess  # noqa: E402

# Long enough to need truncation everywhere; mixes scripts, an empty caption and out-of-vocabulary words.
TEXTS = ["a red circle", "un cercle rouge", "一个红色的圆形", "", " ".join(["blue square"] * 60)]
WORDS = ["a", "red", "circle", "un", "cercle", "rouge", "blue", "square", "一", "个", "红", "色", "的", "圆", "形"]
CUSTOM_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}
EMBED = 24  # projection dim of the tiny Hugging Face models
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
TINY_VISION = dict(image_size=32, patch_size=8, **TINY_BERT)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------------------------------
# Builders: real architectures, random weights, saved like the files a user downloads
# --------------------------------------------------------------------------------------------------------------------


def openclip_model(arch: str | dict, seed: int) -> torch.nn.Module:
    """A CLIP from a dcclip teacher JSON name (or config dict) with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    cfg = get_model_config(arch, "teacher") if isinstance(arch, str) else arch
    model_class = open_clip.CustomTextCLIP if cfg.get("custom_text") else open_clip.CLIP
    return model_class(**{k: v for k, v in cfg.items() if k != "custom_text"}).eval()


def write_tokenizer(out: Path, specials: list[str], bos: str, eos: str, pad: str) -> None:
    """A tiny word-level fast tokenizer (buildable offline) saved with save_pretrained into ``out``."""
    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    wrapped = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, pad_token=pad, unk_token="<unk>"
    )
    wrapped.save_pretrained(out)


CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<unk>"]  # eos id 1 (not 2: 2 selects CLIP's legacy pooling)
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # XLM-R layout: pad id 1 is the position-id offset


def write_hf_clip(out: Path, seed: int) -> Path:
    """A tiny transformers CLIPModel + tokenizer + CLIPImageProcessor directory."""
    torch.manual_seed(seed)
    text = dict(vocab_size=40, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    config = transformers.CLIPConfig(text_config={**TINY_BERT, **text}, vision_config=TINY_VISION, projection_dim=EMBED)
    transformers.CLIPModel(config).save_pretrained(out)
    write_tokenizer(out, CLIP_SPECIALS, "<|startoftext|>", "<|endoftext|>", "<|endoftext|>")
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(out)
    return out


def write_hf_altclip(out: Path, seed: int) -> Path:
    """A tiny AltCLIPModel (XLM-R text tower) with an XLM-R-layout tokenizer and a bilinear CLIPImageProcessor."""
    torch.manual_seed(seed)
    text = dict(vocab_size=40, max_position_embeddings=20, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    text_config = {**TINY_BERT, **text, "project_dim": EMBED}
    config = transformers.AltCLIPConfig(text_config=text_config, vision_config=TINY_VISION, projection_dim=EMBED)
    transformers.AltCLIPModel(config).save_pretrained(out)
    write_tokenizer(out, ROBERTA_SPECIALS, "<s>", "</s>", "<pad>")
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32, resample=2).save_pretrained(out)
    return out


def write_bert_tokenizer(out: Path) -> None:
    """A BertTokenizerFast from a written vocab.txt (Chinese characters split one per token)."""
    out.mkdir(parents=True, exist_ok=True)
    vocab = out / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n", encoding="utf-8")
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(out)


def write_hf_chinese_clip(out: Path, seed: int) -> Path:
    """A tiny ChineseCLIPModel (BERT text tower) with a BERT tokenizer and a squash-resize image processor."""
    torch.manual_seed(seed)
    text_config = {**TINY_BERT, "vocab_size": 40, "max_position_embeddings": 24}
    config = transformers.ChineseCLIPConfig(text_config=text_config, vision_config=TINY_VISION, projection_dim=EMBED)
    transformers.ChineseCLIPModel(config).save_pretrained(out)
    write_bert_tokenizer(out)
    processor = transformers.ChineseCLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    processor.save_pretrained(out)
    return out


def write_mclip(out: Path, seed: int, embed_dim: int, pooling: str = "mean") -> Path:
    """A tiny XLM-R text encoder + projection.safetensors + mclip_config.json (Multilingual-CLIP form)."""
    torch.manual_seed(seed)
    config = transformers.XLMRobertaConfig(vocab_size=40, max_position_embeddings=18, pad_token_id=1, **TINY_BERT)
    transformers.XLMRobertaModel(config).save_pretrained(out)
    write_tokenizer(out, ROBERTA_SPECIALS, "<s>", "</s>", "<pad>")
    projection = {"weight": torch.randn(embed_dim, 32), "bias": torch.randn(embed_dim)}
    save_file(projection, str(out / "projection.safetensors"))
    (out / "mclip_config.json").write_text(json.dumps({"pooling": pooling, "embed_dim": embed_dim}))
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every checkpoint layout the tests load, written once."""
    root = tmp_path_factory.mktemp("teachers")
    vit, vit_other, rn = openclip_model("test-vit", 0), openclip_model("test-vit", 1), openclip_model("test-rn", 2)
    torch.save(vit.state_dict(), root / "vit.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in vit_other.state_dict().items()}}, root / "vit-other.pt")
    torch.save(rn.state_dict(), root / "rn.pt")
    local = root / "vit-dir"
    local.mkdir()
    model_cfg = get_model_config("test-vit", "teacher")
    config = {"model_cfg": model_cfg, "preprocess_cfg": {**CUSTOM_PREPROCESS, "resize_mode": "squash"}}
    (local / "open_clip_config.json").write_text(json.dumps(config))
    save_file(vit.state_dict(), str(local / "open_clip_model.safetensors"))
    timm_cfg = {**model_cfg, "vision_cfg": {"timm_model_name": "test_resnet", "timm_pool": "avg", "image_size": 64}}
    timm_json = {**timm_cfg, "preprocess_cfg": CUSTOM_PREPROCESS}  # a teacher JSON may carry its preprocessing
    (root / "test-timm.json").write_text(json.dumps(timm_json))
    torch.save(openclip_model(timm_cfg, 3).state_dict(), root / "timm.pt")
    return {
        "vit": root / "vit.pt",
        "vit-other": root / "vit-other.pt",
        "vit-dir": local,
        "rn": root / "rn.pt",
        "timm": root / "timm.pt",
        "timm-json": root / "test-timm.json",
        "hf-clip": write_hf_clip(root / "hf-clip", 4),
        "hf-clip-other": write_hf_clip(root / "hf-clip-other", 5),
        "hf-altclip": write_hf_altclip(root / "hf-altclip", 6),
        "hf-chinese": write_hf_chinese_clip(root / "hf-chinese", 7),
        "mclip": write_mclip(root / "mclip", 8, embed_dim=32),
        "mclip-cls": write_mclip(root / "mclip-cls", 9, embed_dim=EMBED, pooling="cls"),
    }


@pytest.fixture(scope="module")
def loaded(files):
    """load_teacher memoised per module: most tests only read a teacher, and loading is the slow part."""
    cache: dict[tuple[str, str], Teacher] = {}

    def load(spec: str, text_spec: str = "") -> Teacher:
        if (spec, text_spec) not in cache:
            cache[spec, text_spec] = load_teacher(spec, text_spec)
        return cache[spec, text_spec]

    return load


@pytest.fixture(scope="module")
def vit_teacher(files, loaded) -> Teacher:
    return loaded(f"openclip:{files['vit']}#test-vit")


def check_teacher(teacher: Teacher, dim: int, fmap_shape: tuple[int, int, int] | None) -> torch.Tensor:
    """The contract every teacher keeps: shapes, unit norm, float32, frozen, eval-locked; returns the image batch."""
    size = teacher.preprocess.image_size
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    embedding, fmap = teacher.encode_image(pixels)
    assert embedding.shape == (3, dim) and embedding.dtype == torch.float32
    assert torch.allclose(embedding.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(embedding[0], embedding[1], atol=1e-4), "different images must embed differently"
    assert teacher.embed_dim == dim
    if fmap_shape is None:
        assert fmap is None and teacher.fmap_channels is None and teacher.fmap_grid is None
    else:
        assert fmap.shape == (3, *fmap_shape) and fmap.dtype == torch.float32
        assert (teacher.fmap_channels, teacher.fmap_grid) == (fmap_shape[0], fmap_shape[1:])
    text = teacher.encode_text(TEXTS)
    assert text.shape == (len(TEXTS), dim) and text.dtype == torch.float32
    assert torch.allclose(text.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    assert not text.requires_grad and not embedding.requires_grad
    check_frozen(teacher)
    return pixels


def check_frozen(teacher: Teacher) -> None:
    """No trainable parameter, and no way back to train mode or to trainable weights."""
    assert not any(param.requires_grad for param in teacher.parameters())
    teacher.train()
    teacher.requires_grad_(True)
    assert not any(module.training for module in teacher.modules())
    assert not any(param.requires_grad for param in teacher.parameters())


def normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


# --------------------------------------------------------------------------------------------------------------------
# open_clip
# --------------------------------------------------------------------------------------------------------------------


def test_openclip_checkpoint_file_loads_the_saved_weights(files, vit_teacher):
    pixels = check_teacher(vit_teacher, 32, (32, 4, 4))
    reference = openclip_model("test-vit", 0)  # the very weights saved to vit.pt
    embedding, fmap = vit_teacher.encode_image(pixels)
    with torch.no_grad():
        assert torch.allclose(embedding, reference.encode_image(pixels, normalize=True), atol=1e-5)
        reference.visual.output_tokens = True  # open_clip's own tokens: after ln_post, the ones it pools from
        _, tokens = reference.visual(pixels)
        assert torch.allclose(fmap.flatten(2).transpose(1, 2), tokens, atol=1e-5)
        tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
        expected = reference.encode_text(tokenizer(TEXTS), normalize=True)
    assert torch.allclose(vit_teacher.encode_text(TEXTS), expected, atol=1e-5)
    assert vit_teacher.preprocess == Preprocess(image_size=32)  # open_clip's defaults: OpenAI mean/std, bicubic


def test_openclip_local_dir_uses_its_preprocess_config(files, loaded, vit_teacher):
    teacher = loaded(f"openclip:{files['vit-dir']}")
    pixels = check_teacher(teacher, 32, (32, 4, 4))
    expected = Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), resize_mode="squash", interpolation="bilinear")
    assert teacher.preprocess == expected
    assert torch.allclose(teacher.encode_image(pixels)[0], vit_teacher.encode_image(pixels)[0], atol=1e-6)


def test_openclip_resnet_fmap_is_the_last_stage(files, loaded):
    teacher = loaded(f"openclip:{files['rn']}#test-rn")
    pixels = check_teacher(teacher, 32, (256, 2, 2))
    reference = openclip_model("test-rn", 2)
    visual = reference.visual
    with torch.no_grad():
        stages = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(pixels)))))
    assert torch.allclose(teacher.encode_image(pixels)[1], stages, atol=1e-5)


def test_openclip_timm_tower_from_a_json_path(files, loaded):
    teacher = loaded(f"openclip:{files['timm']}#{files['timm-json']}")
    pixels = check_teacher(teacher, 32, (96, 2, 2))  # timm test_resnet: 96 channels at stride 32
    with torch.no_grad():
        expected = teacher.model.visual.trunk.forward_features(pixels)
    assert torch.allclose(teacher.encode_image(pixels)[1], expected, atol=1e-5)
    assert teacher.preprocess == Preprocess(64, (0.5,) * 3, (0.25,) * 3, "shortest", "bilinear")


def test_openclip_random_init_from_a_registry_name():
    from dcclip.models.registry import get_model_config

    arch = get_model_config("test-vit", "teacher")
    teacher = load_teacher("openclip:test-vit@random")
    grid = arch["vision_cfg"]["image_size"] // arch["vision_cfg"]["patch_size"]
    assert (teacher.embed_dim, teacher.fmap_channels, teacher.fmap_grid) == (
        arch["embed_dim"],
        arch["vision_cfg"]["width"],
        (grid, grid),
    )
    assert teacher.preprocess.image_size == arch["vision_cfg"]["image_size"]


def test_the_demo_teacher_is_a_timm_tower_inside_open_clip():
    teacher = load_teacher("openclip:demo-teacher@random")
    assert teacher.preprocess.image_size == 48 and teacher.embed_dim == 128
    assert teacher.fmap_channels is not None and teacher.fmap_grid is not None


def test_openclip_mismatched_checkpoint_fails_naming_the_spec(files):
    with pytest.raises(TeacherLoadError, match="test-rn"):
        load_teacher(f"openclip:{files['vit']}#test-rn")


# --------------------------------------------------------------------------------------------------------------------
# Hugging Face
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hf-clip", "hf-altclip", "hf-chinese"])
def test_hf_teachers_match_the_library_features(files, loaded, kind):
    teacher = loaded(f"hf:{files[kind]}")
    pixels = check_teacher(teacher, EMBED, (32, 4, 4))
    model = type(teacher.model).from_pretrained(files[kind]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(files[kind])
    batch = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels)
        text = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = model.vision_model(pixel_values=pixels).last_hidden_state[:, 1:]
    embedding, fmap = teacher.encode_image(pixels)
    assert torch.allclose(embedding, normalize(image.pooler_output), atol=1e-5)
    assert torch.allclose(teacher.encode_text(TEXTS[:3]), normalize(text.pooler_output), atol=1e-5)
    # Token (row r, column c) of the 4x4 patch grid sits at fmap[..., r, c], after post_layernorm.
    tokens = model.vision_model.post_layernorm(hidden)
    assert torch.allclose(fmap[:, :, 1, 2], tokens[:, 1 * 4 + 2], atol=1e-5)


def test_hf_preprocessing_follows_the_image_processor(files, loaded):
    clip = loaded(f"hf:{files['hf-clip']}").preprocess
    altclip = loaded(f"hf:{files['hf-altclip']}").preprocess
    chinese = loaded(f"hf:{files['hf-chinese']}").preprocess
    assert (clip.image_size, clip.resize_mode, clip.interpolation) == (32, "shortest", "bicubic")
    assert altclip.interpolation == "bilinear"
    assert (chinese.image_size, chinese.resize_mode) == (32, "squash")
    assert chinese.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))


def test_preprocess_mapping_edge_cases():
    with pytest.warns(UserWarning, match="short side to 256 then crop 224"):
        legacy = preprocess_from_hf({"size": 256, "crop_size": 224, "image_mean": [0.5] * 3, "resample": 2}, 224)
    assert legacy == Preprocess(224, (0.5,) * 3, (0.26862954, 0.26130258, 0.27577711), "shortest", "bilinear")
    with pytest.warns(UserWarning, match="not supported"):
        mapped = preprocess_from_openclip({"size": (48, 48), "resize_mode": "longest"}, "openclip:x@y")
    assert (mapped.image_size, mapped.resize_mode) == (48, "shortest")
    with pytest.raises(TeacherLoadError, match="non-square"):
        preprocess_from_openclip({"size": (32, 48)})


# --------------------------------------------------------------------------------------------------------------------
# Composite (image teacher + multilingual text teacher)
# --------------------------------------------------------------------------------------------------------------------


def test_composite_mclip_text_side(files, loaded, vit_teacher):
    teacher = loaded(f"openclip:{files['vit']}#test-vit", text_spec=f"mclip:{files['mclip']}")
    assert isinstance(teacher, CompositeTeacher)
    pixels = check_teacher(teacher, 32, (32, 4, 4))
    assert torch.allclose(teacher.encode_image(pixels)[0], vit_teacher.encode_image(pixels)[0])
    assert not torch.allclose(teacher.encode_text(TEXTS[:2]), vit_teacher.encode_text(TEXTS[:2]), atol=1e-3)
    encoder = transformers.AutoModel.from_pretrained(files["mclip"]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(files["mclip"])
    batch = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    weights = transformers.modeling_utils.load_state_dict(str(files["mclip"] / "projection.safetensors"))
    expected = ((hidden * mask).sum(1) / mask.sum(1)) @ weights["weight"].T + weights["bias"]
    assert torch.allclose(teacher.encode_text(TEXTS[:2]), normalize(expected), atol=1e-5)
    assert teacher.fingerprint() != vit_teacher.fingerprint()


def test_composite_with_a_clip_text_tower(files, loaded):
    teacher = loaded(f"hf:{files['hf-clip']}", text_spec=f"hf:{files['hf-chinese']}")
    check_teacher(teacher, EMBED, (32, 4, 4))
    chinese = loaded(f"hf:{files['hf-chinese']}")
    assert torch.allclose(teacher.encode_text(TEXTS), chinese.encode_text(TEXTS), atol=1e-6)


def test_composite_cls_pooling_and_embed_dim_mismatch(files, loaded):
    teacher = loaded(f"hf:{files['hf-clip']}", text_spec=f"mclip:{files['mclip-cls']}")
    check_teacher(teacher, EMBED, (32, 4, 4))
    with pytest.raises(TeacherLoadError, match=r"32.*24|24.*32"):
        load_teacher(f"hf:{files['hf-clip']}", text_spec=f"mclip:{files['mclip']}")


# --------------------------------------------------------------------------------------------------------------------
# Frozen, no gradients, fingerprints
# --------------------------------------------------------------------------------------------------------------------


def test_gradients_reach_the_student_not_the_teacher(vit_teacher):
    student = torch.nn.Linear(3 * 32 * 32, 32)
    pixels = torch.randn(2, 3, 32, 32, requires_grad=True)  # e.g. from a differentiable augmentation
    target, fmap = vit_teacher.encode_image(pixels)
    assert target.grad_fn is None and fmap.grad_fn is None
    loss = (normalize(student(pixels.flatten(1))) - target).pow(2).sum() + fmap.mean()
    loss.backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert all(param.grad is None for param in vit_teacher.parameters())


def test_fingerprint_is_stable_and_tracks_the_weights(files, loaded, vit_teacher):
    again = load_teacher(f"openclip:{files['vit']}#test-vit")
    assert again.fingerprint() == vit_teacher.fingerprint() and len(again.fingerprint()) == 64
    other = load_teacher(f"openclip:{files['vit-other']}#test-vit")  # a training checkpoint: state_dict + module.
    assert other.fingerprint() != vit_teacher.fingerprint()
    hf_a, hf_b = loaded(f"hf:{files['hf-clip']}"), load_teacher(f"hf:{files['hf-clip-other']}")
    assert hf_a.fingerprint() == load_teacher(f"hf:{files['hf-clip']}").fingerprint() != hf_b.fingerprint()
    with torch.no_grad():
        next(again.parameters()).add_(1e-3)
    again.to(torch.float32)  # moving / casting forgets the cached value
    assert again.fingerprint() != vit_teacher.fingerprint()


# --------------------------------------------------------------------------------------------------------------------
# Spec strings and hub names
# --------------------------------------------------------------------------------------------------------------------


def test_parse_valid_specs(files):
    assert astuple(parse_teacher_spec("openclip:ViT-B-32@openai"))[:4] == ("openclip", "ViT-B-32", "openai", "tag")
    assert parse_teacher_spec("openclip:demo-teacher@random").source == "random"
    pt = parse_teacher_spec(f"openclip:{files['vit']}#test-vit")
    assert (pt.model, pt.pretrained, pt.source) == ("test-vit", str(files["vit"]), "file")
    assert parse_teacher_spec(f"openclip:{files['vit-dir']}").source == "dir"
    assert parse_teacher_spec(f"openclip:local-dir:{files['vit-dir']}").pretrained == str(files["vit-dir"])
    assert parse_teacher_spec("openclip:hf-hub:org/repo").source == "hub"
    assert astuple(parse_teacher_spec(f"hf:{files['hf-clip']}"))[:4] == ("hf", str(files["hf-clip"]), "", "dir")
    assert parse_teacher_spec("hf:openai/clip-vit-base-patch32").source == "hub"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "invalid teacher spec"),
        ("clip:ViT-B-32", "invalid teacher spec 'clip:ViT-B-32'"),
        ("openclip:ViT-B-32", r"names no weights.*@random"),
        ("openclip:/no/such/ckpt.pt#ViT-B-32", "/no/such/ckpt.pt does not exist"),
        ("openclip:/no/such/dir", "/no/such/dir does not exist"),
        ("hf:/no/such/dir", "/no/such/dir does not exist"),
        ("mclip:org/name", "local directory"),
    ],
)
def test_parse_invalid_specs_name_the_spec(spec, message):
    with pytest.raises(TeacherSpecError, match=message):
        parse_teacher_spec(spec)


def test_spec_errors_while_loading(files):
    with pytest.raises(TeacherSpecError, match="names a checkpoint file without its architecture"):
        load_teacher(f"openclip:{files['vit']}")
    with pytest.raises(TeacherSpecError, match=r"unknown pretrained tag 'nope' for ViT-B-32.*openai"):
        load_teacher("openclip:ViT-B-32@nope")
    with pytest.raises(TeacherSpecError, match="neither an open_clip architecture nor a dcclip teacher"):
        load_teacher(f"openclip:{files['vit']}#no-such-arch")
    with pytest.raises(TeacherSpecError, match="text-only"):
        load_teacher(f"mclip:{files['mclip']}")


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("openclip:ViT-B-32@openai", ["ViT-B-32", "openai", "hf download timm/vit_base_patch32_clip_224.openai"]),
        ("openclip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", ["hf download laion/CLIP-ViT-B-32-laion2B"]),
        ("hf:openai/clip-vit-base-patch32", ["hf download openai/clip-vit-base-patch32 --local-dir DIR"]),
    ],
)
def test_hub_names_fail_fast_offline(spec, names, tmp_path, monkeypatch):
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE, "tests run with HF_HUB_OFFLINE=1 (tests/conftest.py)"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever this machine holds
    start = time.perf_counter()
    with pytest.raises(TeacherLoadError) as raised:
        load_teacher(spec)
    assert time.perf_counter() - start < 5.0
    message = str(raised.value)
    assert spec in message and "HF_HUB_OFFLINE=1" in message
    for name in names:
        assert name in message


def test_a_pickled_object_checkpoint_is_refused_saying_how_to_convert_it(tmp_path):
    import argparse

    model = openclip_model("test-vit", 0)
    path = tmp_path / "with-args.pt"
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=1e-3)}, path)
    with pytest.raises(TeacherLoadError, match=r"with-args\.pt holds Python objects.*weights_only.*torch\.save"):
        load_teacher(f"openclip:{path}#test-vit")
