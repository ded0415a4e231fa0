"""A published Multilingual-CLIP checkpoint (``transformer.*`` + ``LinearTransformation.*``, M-CLIP config.json) is
converted into an ``mclip:`` directory whose embeddings are the published model's: mean pool over the mask, project.

The checkpoint is built here with the key names of the published format (no hub access in tests).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from test_teachers import ROBERTA_SPECIALS, TINY_BERT, openclip_model, write_tokenizer

from dcclip.cli import main
from dcclip.models.teachers.mclip_convert import MClipConvertError, convert_mclip
from dcclip.models.teachers.registry import load_teacher

TEXTS = ["a red circle", "a blue square and a red circle", "circle"]
NUM_DIMS = 32  # the embedding size of the tiny open_clip image teacher it is paired with

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_published(
    root: Path, weights: str = "pytorch_model.bin", drop: tuple[str, ...] = (), extra: dict | None = None
) -> Path:
    """A tiny checkpoint in the published M-CLIP layout; the base encoder's config.json sits in ``root/base``."""
    torch.manual_seed(0)
    base_config = transformers.XLMRobertaConfig(vocab_size=40, max_position_embeddings=18, pad_token_id=1, **TINY_BERT)
    base_config.save_pretrained(root / "base")
    encoder = transformers.XLMRobertaModel(base_config).eval()
    linear = torch.nn.Linear(TINY_BERT["hidden_size"], NUM_DIMS)
    state = {f"transformer.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"LinearTransformation.{k}": v for k, v in linear.state_dict().items()})
    state = {k: v.contiguous() for k, v in {**state, **(extra or {})}.items() if k not in drop}
    src = root / "M-CLIP-tiny"
    src.mkdir()
    if weights.endswith(".safetensors"):
        save_file(state, str(src / weights))
    else:
        torch.save(state, src / weights)
    config = {"architectures": ["MultilingualCLIP"], "model_type": "M-CLIP", "modelBase": str(root / "base"),
              "transformerDimensions": TINY_BERT["hidden_size"], "numDims": NUM_DIMS}  # fmt: skip
    (src / "config.json").write_text(json.dumps(config))
    write_tokenizer(src, ROBERTA_SPECIALS, "<s>", "</s>", "<pad>")
    torch.save({"encoder": encoder, "linear": linear}, root / "reference.pt")
    return src


def published_embeddings(src: Path, texts: list[str]) -> torch.Tensor:
    """The published model's forward, computed here: encoder, mean over the attention mask, linear; then unit norm."""
    reference = torch.load(src.parent / "reference.pt", weights_only=False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(src)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = reference["encoder"](**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return F.normalize(reference["linear"](pooled), dim=-1)


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.safetensors"])
def test_converted_directory_embeds_like_the_published_model(tmp_path, weights):
    src = write_published(tmp_path, weights)
    summary = convert_mclip(src, tmp_path / "mclip")
    assert summary["encoder"] == "XLMRobertaModel" and summary["embed_dim"] == NUM_DIMS
    assert json.loads((tmp_path / "mclip" / "mclip_config.json").read_text()) == {
        "pooling": "mean",
        "embed_dim": NUM_DIMS,
    }
    torch.save(openclip_model("test-vit", 1).state_dict(), tmp_path / "vit.pt")
    teacher = load_teacher(f"openclip:{tmp_path / 'vit.pt'}#test-vit", text_spec=f"mclip:{tmp_path / 'mclip'}")
    got = teacher.encode_text(TEXTS)
    torch.testing.assert_close(got, published_embeddings(src, TEXTS), atol=1e-5, rtol=1e-5)


def test_cli_converts_and_prints_a_summary(tmp_path, capsys):
    src = write_published(tmp_path)
    assert main(["teacher", "convert-mclip", str(src), "--out", str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out)["embed_dim"] == NUM_DIMS
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], "no temporary left behind"


def test_an_older_export_with_position_ids_and_no_pooler_converts(tmp_path):
    position_ids = {"transformer.embeddings.position_ids": torch.arange(18)[None]}  # saved by transformers 4.x
    pooler = ("transformer.pooler.dense.weight", "transformer.pooler.dense.bias")  # unused by mean pooling
    src = write_published(tmp_path, extra=position_ids, drop=pooler)
    convert_mclip(src, tmp_path / "mclip")
    torch.save(openclip_model("test-vit", 1).state_dict(), tmp_path / "vit.pt")
    teacher = load_teacher(f"openclip:{tmp_path / 'vit.pt'}#test-vit", text_spec=f"mclip:{tmp_path / 'mclip'}")
    torch.testing.assert_close(teacher.encode_text(TEXTS), published_embeddings(src, TEXTS), atol=1e-5, rtol=1e-5)


def test_an_encoder_key_of_another_architecture_is_named(tmp_path):
    src = write_published(tmp_path, extra={"transformer.encoder.layer.9.attention.self.query.weight": torch.zeros(2)})
    with pytest.raises(MClipConvertError, match=r"unexpected \['transformer\.encoder\.layer\.9\.attention"):
        convert_mclip(src, tmp_path / "out")


def test_a_missing_projection_names_the_file_and_the_key(tmp_path):
    src = write_published(tmp_path, drop=("LinearTransformation.weight",))
    with pytest.raises(MClipConvertError, match=r"pytorch_model\.bin: missing key 'LinearTransformation\.weight'"):
        convert_mclip(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_missing_encoder_weight_names_the_key(tmp_path):
    src = write_published(tmp_path, "model.safetensors", drop=("transformer.encoder.layer.1.output.dense.weight",))
    with pytest.raises(MClipConvertError, match=r"model\.safetensors: .*transformer\.encoder\.layer\.1\.output"):
        convert_mclip(src, tmp_path / "out")


def test_a_config_without_the_mclip_fields_is_refused(tmp_path, capsys):
    src = write_published(tmp_path)
    config = json.loads((src / "config.json").read_text())
    del config["numDims"]
    (src / "config.json").write_text(json.dumps(config))
    assert main(["teacher", "convert-mclip", str(src), "--out", str(tmp_path / "out")]) == 1
    assert f"{src / 'config.json'}: missing numDims" in capsys.readouterr().err


def test_an_unavailable_base_model_says_how_to_get_its_config(tmp_path):
    src = write_published(tmp_path)
    with pytest.raises(
        MClipConvertError, match=r"(?s)--base-config 'no-such/base-model'.*hf download no-such/base-model"
    ):
        convert_mclip(src, tmp_path / "out", base_config="no-such/base-model")


def test_a_projection_of_the_wrong_shape_is_refused(tmp_path):
    src = write_published(tmp_path)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "numDims": 7}))
    with pytest.raises(MClipConvertError, match=r"'LinearTransformation\.weight' is \(32, 32\).*\[7, 32\]"):
        convert_mclip(src, tmp_path / "out")


def test_a_missing_mclip_directory_names_the_converter_and_the_dry_run_override():
    from dcclip.models.teacher_spec import TeacherSpecError, parse_teacher_spec

    with pytest.raises(TeacherSpecError, match=r"/no/such/mclip does not exist.*convert-mclip.*teacher\.text_spec="):
        parse_teacher_spec("mclip:/no/such/mclip")
