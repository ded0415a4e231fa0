"""One name per concept across every command, defaults in every --help, old spellings kept as hidden aliases."""

from __future__ import annotations

import argparse
import inspect

import pytest
import yaml

from dcclip.cli import build_parser, main
from dcclip.configs import CONFIG_DIR
from dcclip.runtime.labels import split_labels

REAL_STAGE1 = ["openclip-vitb32-mclip", "hf-altclip", "hf-chinese-clip"]


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, its parser) for every command and subcommand."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def options(parser: argparse.ArgumentParser):
    """The visible options of one parser (not --help, not hidden aliases, not subcommand choosers)."""
    for action in parser._actions:
        hidden = action.help == argparse.SUPPRESS
        plumbing = isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction))
        if action.option_strings and not hidden and not plumbing:
            yield action


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_every_option_says_its_default_in_help():
    missing = []
    for path, parser in commands(build_parser()):
        for action in options(parser):
            if action.required or isinstance(action, (argparse._StoreTrueAction, argparse._StoreConstAction)):
                continue
            text = parser._get_formatter()._get_help_string(action) or ""  # what --help prints for it
            if "default" not in text.lower() and "required" not in text.lower():
                missing.append(f"dcclip {' '.join(path)} {action.option_strings[0]}")
    assert missing == []


def test_help_prints_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["index", "build", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 32)" in out and "--threads" in out


@pytest.mark.parametrize(
    ("argv", "dest", "value"),
    [
        (["shards", "build", "--from", "wds", "s", "--out", "o", "--caption-lang", "en"], "caption_lang", "en"),
        (["shards", "build", "--from", "wds", "s", "--out", "o", "--source-lang", "fr"], "caption_lang", "fr"),
        (
            [
                "shards",
                "translate",
                "--shards",
                "s",
                "--out",
                "o",
                "--model",
                "m",
                "--langs",
                "zh",
                "--source-lang",
                "de",
            ],
            "caption_lang",
            "de",
        ),
        (["shards", "validate", "--shards", "s", "--caption-lang", "en"], "caption_lang", "en"),
        (["shards", "inspect", "old-positional"], "dir", "old-positional"),
        (["distill", "--caption-lang", "en", "--shards", "s"], "caption_lang", "en"),
        (["cache-teacher", "--out", "o", "--caption-lang", "en"], "caption_lang", "en"),
        (["align", "--checkpoint", "ck"], "checkpoint", "ck"),
        (["align", "--init", "ck"], "checkpoint", "ck"),
        (["export", "--checkpoint", "ck", "--out", "b", "--calib-shards", "s"], "shards", "s"),
        (["card", "--bundle", "b", "--report", "r", "--model", "m"], "names", "m"),
        (["search", "--index", "i", "t", "-k", "3"], "top_k", 3),
        (["search", "--index", "i", "t", "--top-k", "3"], "top_k", 3),
        (["classify", "--bundle", "b", "x.jpg", "--labels", "a", "-k", "2"], "top_k", 2),
        (["index", "build", "--bundle", "b", "--images", "i", "--out", "o", "--threads", "2"], "threads", 2),
        (["index", "add", "--index", "i", "--images", "i", "--threads", "2"], "threads", 2),
        (["eval", "zeroshot", "--model", "m", "--dataset", "d", "--out", "o", "--threads", "2"], "threads", 2),
        (
            ["eval", "zeroshot", "--model", "m", "--dataset", "d", "--out", "o", "--precision", "int8"],
            "precision",
            "int8",
        ),
        (["cache-teacher", "--out", "o", "--max-samples", "5"], "max_samples", 5),
        (["shards", "build", "--from", "csv", "s", "--out", "o", "--max-samples", "5"], "max_samples", 5),
        (
            ["tokenizer", "train", "--shards", "s", "--vocab-size", "9", "--out", "o", "--max-samples", "5"],
            "max_samples",
            5,
        ),
    ],
)
def test_one_name_per_concept_and_old_spellings_still_work(argv, dest, value):
    assert getattr(parse(argv), dest) == value


@pytest.mark.parametrize(
    ("command", "hidden"),
    [
        (["shards", "build"], "--source-lang"),
        (["shards", "translate"], "--source-lang"),
        (["align"], "--init"),
        (["export"], "--calib-shards"),
        (["card"], "--model"),
    ],
)
def test_old_spellings_are_hidden_from_help(command, hidden, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    assert hidden not in capsys.readouterr().out


def test_the_same_concept_has_the_same_flag_everywhere():
    """Caption language, shards, threads, top-k and precision: where a command has the concept, it has the name."""
    seen: dict[str, set[str]] = {}
    for _path, parser in commands(build_parser()):
        for action in options(parser):
            seen.setdefault(action.dest, set()).update(action.option_strings)
    assert seen["caption_lang"] == {"--caption-lang"}
    assert seen["top_k"] == {"-k", "--top-k"}
    assert seen["threads"] == {"--threads"}
    assert "source_lang" not in seen and "calib_shards" not in seen and "init" not in seen


def test_serve_defaults_are_serve_own():
    from dcclip.serve.server import serve

    args = parse(["serve", "--bundle", "b"])
    for name, param in inspect.signature(serve).parameters.items():
        if hasattr(args, name) and name != "bundle":
            assert getattr(args, name) == param.default, name


def test_serve_passes_every_server_option_through(monkeypatch):
    import dcclip.serve

    seen = {}
    monkeypatch.setattr(dcclip.serve, "serve", lambda bundle, **kwargs: seen.update(kwargs))
    assert main(["serve", "--bundle", "b", "--batch-max", "8", "--batch-wait-ms", "3", "--threads", "2"]) == 0
    assert seen["batch_max"] == 8 and seen["batch_wait_ms"] == 3.0 and seen["threads"] == 2


def test_print_config_prints_the_resolved_config(capsys):
    argv = ["distill", "--config", "demo", "--shards", "/x/shards", "--caption-lang", "en", "optim.lr=0.5"]
    assert main([*argv, "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data"]["train"] == "/x/shards" and cfg["data"]["caption_lang"] == "en"
    assert cfg["optim"]["lr"] == 0.5 and "batch_size" in cfg["data"]


def test_run_help_lists_the_shipped_configs(capsys):
    with pytest.raises(SystemExit):
        main(["align", "--help"])
    out = "".join(capsys.readouterr().out.split())
    assert "demo-align" in out and "openclip-vitb32-mclip-align" in out and "--print-config" in out


def test_align_without_config_points_to_the_align_configs(capsys):
    assert main(["align"]) == 2
    err = capsys.readouterr().err
    assert "dcclip align --config" in err and "demo-align" in err and "openclip-vitb32-mclip-align" in err


@pytest.mark.parametrize("stage1", REAL_STAGE1)
def test_each_real_config_has_its_align_config(stage1, capsys):
    from dcclip.config import load_config

    assert (CONFIG_DIR / f"{stage1}-align.yaml").is_file()
    cfg = load_config(f"{stage1}-align")
    first = load_config(stage1)
    assert cfg.stage == "align" and cfg.loss.contrastive > 0 and cfg.train.init == first.train.out_dir
    assert cfg.teacher == first.teacher and cfg.student == first.student  # stage 1's features fit stage 2
    assert main(["align", "--config", stage1]) == 2
    assert f"--config {stage1}-align" in capsys.readouterr().err


@pytest.mark.slow
def test_models_list_shows_family_image_size_embed_dim_and_params(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "params" in out and "family" in out
    row = next(line.split() for line in out.splitlines() if line.startswith("mnv4s-text6 "))
    assert row[1:5] == ["student", "26.3M", "224", "teacher"] and "mobilenetv4_conv_small" in row[5]
    assert main(["models", "list", "--names", "--kind", "teacher"]) == 0
    assert "demo-teacher" in capsys.readouterr().out.split()


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        ("红色的圆形，红色的六边形，蓝色的正方形", ["红色的圆形", "红色的六边形", "蓝色的正方形"]),
        ("赤い円、青い四角", ["赤い円", "青い四角"]),
        ("دائرة حمراء، مربع أزرق", ["دائرة حمراء", "مربع أزرق"]),
        ("a cat, a dog\na bird\r\n,, ", ["a cat", "a dog", "a bird"]),
    ],
)
def test_one_label_rule(text, labels):
    assert split_labels(text) == labels
