"""The `dcclip` command: help everywhere, exit code 2 on usage errors, and the foundation commands end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.images import jpeg_bytes

from dcclip.cli import build_parser, main

COMMANDS = [
    [],
    ["world"],
    ["shards"],
    ["shards", "build"],
    ["shards", "validate"],
    ["shards", "inspect"],
    ["shards", "translate"],
    ["tokenizer", "train"],
    ["models", "list"],
    ["teacher", "train-demo"],
    ["distill"],
    ["align"],
    ["cache-teacher"],
    ["eval"],
    ["eval", "zeroshot"],
    ["eval", "retrieval"],
    ["eval", "alignment"],
    ["export"],
    ["target"],
    ["card"],
    ["classify"],
    ["serve"],
    ["index"],
    ["index", "build"],
    ["index", "add"],
    ["search"],
    ["demo"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "dcclip")
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: dcclip" in capsys.readouterr().out


def test_every_registered_command_is_in_the_help_list():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {c[0] for c in COMMANDS if c} == set(sub.choices)


@pytest.mark.parametrize(
    "argv", [["nope"], ["shards", "build", "src"], ["world"], ["shards", "build", "--from", "xml", "s", "--out", "o"]]
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2


def test_config_errors_exit_2_and_name_the_key(capsys):
    assert main(["distill", "data.batchsize=3"]) == 2
    err = capsys.readouterr().err
    assert "data.batchsize" in err and "batch_size" in err


def test_console_script_runs():
    exe = Path(sys.executable).parent / "dcclip"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("dcclip ")


def test_world_then_validate_inspect_and_tokenizer(tmp_path, capsys):
    world = tmp_path / "w"
    assert (
        main(["world", "--out", str(world), "--train-samples", "60", "--eval-samples", "30", "--shard-size", "25"]) == 0
    )
    capsys.readouterr()
    assert main(["shards", "validate", str(world / "train")]) == 0
    capsys.readouterr()
    sheet = tmp_path / "sheet.png"
    assert main(["shards", "inspect", str(world / "train"), "--contact-sheet", str(sheet), "-n", "4", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["samples"] == 60 and sheet.is_file()
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--shards",
                str(world / "train"),
                "--vocab-size",
                "600",
                "--out",
                str(tmp_path / "t"),
            ]
        )
        == 0
    )
    assert (tmp_path / "t" / "tokenizer.json").is_file()


def test_validate_exits_nonzero_on_a_corrupt_sample(tmp_path, capsys):
    from dcclip.data.shards import ShardSetWriter

    with ShardSetWriter(tmp_path / "bad", max_count=10) as writer:
        writer.add("ok", {"jpg": jpeg_bytes(1)}, {"captions": {"en": "fine"}, "source_lang": "en"})
        writer.add("broken", {"jpg": b"\xff\xd8garbage"}, {"captions": {"en": "bad"}, "source_lang": "en"})
    assert main(["shards", "validate", str(tmp_path / "bad")]) == 1
    assert "broken" in capsys.readouterr().out


def test_csv_build_lists_the_corrupt_image_as_skipped(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "good.jpg").write_bytes(jpeg_bytes(2))
    (images / "corrupt.jpg").write_bytes(b"not an image at all")
    (tmp_path / "pairs.csv").write_text(
        "image,en,fr\nimages/good.jpg,a cat,un chat\nimages/corrupt.jpg,a dog,un chien\n"
    )
    out = tmp_path / "shards"
    assert main(["shards", "build", "--from", "csv", str(tmp_path / "pairs.csv"), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"] == 1
    assert len(manifest["skipped"]) == 1
    skipped = manifest["skipped"][0]
    assert "corrupt.jpg" in skipped["reason"] + skipped["source"] and skipped["source"].endswith("pairs.csv:3")
    assert "skipped 1" in capsys.readouterr().out


def test_models_list(capsys):
    assert main(["models", "list", "--kind", "student"]) == 0
    names = capsys.readouterr().out.split()
    assert {"test-student", "demo-student", "mnv4s-text6", "fastvit-t8-text4"} <= set(names)


def test_missing_input_is_a_clean_error(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert main(["shards", "validate", str(missing)]) == 1
    captured = capsys.readouterr()
    # one line on stderr naming the command and the path, no traceback, nothing on stdout
    assert captured.err == f"dcclip shards: error: {missing}: no such shard file or directory\n"
    assert captured.out == ""
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_export_takes_several_eval_sets_and_an_agreement_bar(monkeypatch, tmp_path, capsys):
    import dcclip.export.bundle as bundle

    seen = {}

    def fake_export(checkpoint, out, **kwargs):
        seen.update(kwargs, checkpoint=checkpoint, out=out)
        return {"precisions": ["fp32", "int8"], "parity": {}}

    monkeypatch.setattr(bundle, "export_bundle", fake_export)
    argv = ["export", "--checkpoint", "ck", "--out", str(tmp_path / "b"), "--eval-set", "a", "--eval-set", "b"]
    assert main([*argv, "--min-agreement", "0.99"]) == 0
    assert seen["eval_set"] == [Path("a"), Path("b")] and seen["min_agreement"] == 0.99
    assert json.loads(capsys.readouterr().out)["precisions"] == ["fp32", "int8"]
