"""What each ``dcclip`` subcommand does: turn parsed arguments into one library call (imports stay lazy)."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from dcclip.cli.common import INPUT_EXIT, _caption_format, _print_run_summary, _shards_arg, _split_list


def _cmd_world(args: argparse.Namespace) -> int:
    from dcclip.data.world import generate_world

    summary = generate_world(
        Path(args.out),
        train_samples=args.train_samples,
        seed=args.seed,
        eval_samples=args.eval_samples,
        image_size=args.image_size,
        shard_size=args.shard_size,
        progress=True,
    )
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def _cmd_shards_build(args: argparse.Namespace) -> int:
    from dcclip.data.shard_build import build_shards, refuse_empty

    manifest = build_shards(
        args.source_kind,
        args.src,
        Path(args.out),
        max_count=args.max_count,
        max_size_mb=args.max_size,
        max_side=args.max_side,
        source_lang=_build_caption_lang(args),
        langs=_split_list(args.langs),
        image_column=args.image_column,
        lang_field=args.lang_field or "",
        max_samples=args.max_samples,
    )
    refuse_empty(manifest, args.src, Path(args.out))
    skipped = len(manifest["skipped"])
    print(f"{manifest['samples']} samples in {len(manifest['shards'])} shards -> {args.out}; skipped {skipped}")
    for item in manifest["skipped"][:20]:
        print(f"  skipped {item['key']} ({item['source']}): {item['reason']}")
    if skipped > 20:
        print(f"  ... {skipped - 20} more in {Path(args.out) / 'manifest.json'}")
    return 0


def _build_caption_lang(args: argparse.Namespace) -> str:
    """--caption-lang, else en for folder/csv/jsonl rows; a WebDataset's .txt captions get no silent English."""
    if args.caption_lang:
        return args.caption_lang
    return "en" if args.source_kind != "wds" or args.lang_field else ""


def _cmd_shards_validate(args: argparse.Namespace) -> int:
    from dcclip.data.shard_validate import validate_shards

    report = validate_shards(_shards_arg(args), fmt=_caption_format(args))
    print(report.format_table())
    return 0 if report.ok else INPUT_EXIT


def _cmd_shards_inspect(args: argparse.Namespace) -> int:
    from dcclip.data.shard_inspect import format_inspect, inspect_shards

    sheet = Path(args.contact_sheet) if args.contact_sheet else None
    stats = inspect_shards(_shards_arg(args), contact_sheet=sheet, n=args.n, fmt=_caption_format(args))
    print(json.dumps(stats, indent=2, ensure_ascii=False) if args.json else format_inspect(stats))
    return INPUT_EXIT if stats["errors"] else 0


def _cmd_shards_translate(args: argparse.Namespace) -> int:
    from dcclip.data.translate import run
    from dcclip.engine import distributed

    summary = run(
        args.shards, args.out, args.model, _split_list(args.langs) or [], source_lang=args.caption_lang,
        batch_size=args.batch_size, device=args.device, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
        group=distributed,
    )  # fmt: skip
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from dcclip.data.shards import iter_captions
    from dcclip.models.tokenizers import train_tokenizer

    captions = iter_captions(args.shards, _split_list(args.langs), _caption_format(args))
    try:
        path = train_tokenizer(
            itertools.islice(captions, args.max_samples) if args.max_samples else captions,
            args.vocab_size,
            Path(args.out),
            args.algorithm,
            split_han=not args.keep_han_words,
        )
    except ValueError as exc:
        if "no texts" not in str(exc):
            raise
        raise ValueError(
            f"{args.shards}: no caption to train on (every sample's captions unreadable, blank or not in --langs); "
            f"`dcclip shards validate --shards {args.shards}` says which samples are bad"
        ) from exc
    print(f"tokenizer written to {path}")
    return 0


CATALOG_VOCAB = 32000  # the vocabulary students' parameter counts assume (a `dcclip tokenizer train` size)
CATALOG_EMBED = 512  # the embed dim a student sized "teacher" is counted at (ViT-B/32's)


def _model_params(name: str, kind: str, cfg: dict) -> int | None:
    """Parameters of an architecture, built on torch's meta device (no memory, no weights); None without torch."""
    try:
        import torch
    except ImportError:
        return None
    with torch.device("meta"):
        if kind == "student":
            from dcclip.models.students import build_student

            model = build_student(name, embed_dim=CATALOG_EMBED, vocab_size=CATALOG_VOCAB)
        else:
            import open_clip

            model = open_clip.CLIP(**cfg)
    return sum(p.numel() for p in model.parameters())


def _model_row(name: str, kind: str) -> dict[str, object]:
    """One architecture's family, image size, embed dim and parameters, from its JSON."""
    from dcclip.models.registry import get_model_config

    cfg = get_model_config(name, kind)
    if kind == "student":
        image, text = cfg["image"], cfg["text"]
        family = f"timm:{image['timm_model']} + {text['arch']} {text['num_layers']}x{text['hidden_size']}"
        size, dim = image["image_size"], cfg.get("embed_dim")
    else:
        vision = cfg.get("vision_cfg", {})
        trunk = vision.get("timm_model_name") or ("resnet" if isinstance(vision.get("layers"), list) else "vit")
        family, size, dim = f"open_clip:{trunk}", vision.get("image_size"), cfg.get("embed_dim")
    return {"name": name, "kind": kind, "family": family, "image_size": size, "embed_dim": dim,
            "params": _model_params(name, kind, cfg)}  # fmt: skip


def _format_models(rows: list[dict[str, object]]) -> str:
    """The `models list` table; student parameters assume a 32k vocabulary and a 512-d embedding."""
    head = f"{'name':<20} {'kind':<8} {'params':>8} {'image':>6} {'embed':>7}  family"
    lines = [head]
    for row in rows:
        params = f"{row['params'] / 1e6:.1f}M" if row["params"] else "-"
        lines.append(f"{row['name']:<20} {row['kind']:<8} {params:>8} {row['image_size']!s:>6} "
                     f"{row['embed_dim']!s:>7}  {row['family']}")  # fmt: skip
    lines.append(f"(students counted with a {CATALOG_VOCAB}-piece tokenizer; embed 'teacher' = the teacher's, "
                 f"counted at {CATALOG_EMBED})")  # fmt: skip
    return "\n".join(lines)


def _cmd_models_list(args: argparse.Namespace) -> int:
    from dcclip.models.registry import KINDS, list_models

    kinds = [args.kind] if args.kind else list(KINDS)
    if args.names:
        print("\n".join(name for kind in kinds for name in list_models(kind)))
        return 0
    print(_format_models([_model_row(name, kind) for kind in kinds for name in list_models(kind)]))
    return 0


def _run_config(args: argparse.Namespace, extra: list[str] | None = None):
    """The run's config: YAML, then the command's flags (--shards, --caption-lang...), then KEY=VALUE overrides."""
    from dcclip.config import load_config

    flags = {"data.train": args.shards, "data.caption_lang": args.caption_lang, "data.lang_field": args.lang_field}
    given = [f"{key}={value}" for key, value in flags.items() if value is not None]
    return load_config(args.config, [*(extra or []), *given, *args.overrides])


def _print_config(cfg: object) -> int:
    """--print-config: the resolved config as YAML (every key, with its value), then exit."""
    import yaml

    from dcclip.config import to_dict

    print(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), end="")
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from dcclip.stages.distill import run

    cfg = _run_config(args, ["stage=distill"])
    if args.print_config:
        return _print_config(cfg)
    _print_run_summary(run(cfg))
    return 0


def _align_config_hint(config: str | None) -> str:
    """Which shipped stage-2 config to use: the -align one beside a stage-1 config, else all of them."""
    from dcclip.configs import CONFIG_DIR

    shipped = sorted(path.stem for path in CONFIG_DIR.glob("*-align.yaml"))
    sibling = f"{Path(config).stem}-align" if config else ""
    if sibling in shipped:
        return f"use its stage-2 config: dcclip align --config {sibling}"
    return f"give a stage-2 config: dcclip align --config {' | '.join(shipped)} (the toy world: demo-align)"


def _cmd_align(args: argparse.Namespace) -> int:
    from dcclip.config import ConfigError
    from dcclip.stages.align import run

    extra = ["stage=align"] + ([f"train.init={args.checkpoint}"] if args.checkpoint else [])
    cfg = _run_config(args, extra)
    if args.print_config:
        return _print_config(cfg)
    if cfg.loss.contrastive <= 0:
        what = f"{args.config} is a stage-1 config" if args.config else "no --config given"
        raise ConfigError(f"stage 2 needs loss.contrastive > 0 and {what}; {_align_config_hint(args.config)}")
    _print_run_summary(run(cfg))
    return 0


def _cmd_cache_teacher(args: argparse.Namespace) -> int:
    from dcclip.stages.cache_teacher import run

    extra = [f"teacher.spec={args.teacher}"] if args.teacher else []
    cfg = _run_config(args, extra)
    if args.print_config:
        return _print_config(cfg)
    summary = run(cfg, args.out, max_samples=args.max_samples)
    print(json.dumps(summary, indent=2))
    if summary["shards_failed"]:
        print(f"{summary['shards_failed']} shard(s) could not be read; run the same command again to finish them")
        return 1
    return 0


def _cmd_teacher_train_demo(args: argparse.Namespace) -> int:
    from dcclip.demo.teacher import TeacherRecipe, train_demo_teacher

    steps = {"image_steps": args.image_steps, "text_steps": args.text_steps}
    recipe = TeacherRecipe(seed=args.seed, **{k: v for k, v in steps.items() if v is not None})
    summary = train_demo_teacher(Path(args.world), Path(args.out), recipe)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_teacher_convert_mclip(args: argparse.Namespace) -> int:
    from dcclip.models.teachers.mclip_convert import convert_mclip

    summary = convert_mclip(Path(args.src), Path(args.out), base_config=args.base_config)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from dcclip.eval.distributed import is_main
    from dcclip.eval.report import console_report, run_eval

    _torch_threads(args.threads)
    report = run_eval(
        args.eval_task,
        [_eval_model(ref, args.precision, args.threads) for ref in args.model],
        args.dataset,
        _split_list(args.langs),
        Path(args.out),
        batch_size=args.batch_size,
        max_samples=args.max_samples,
        device=args.device,
        names=_split_list(args.names),
        teacher_text=args.teacher_text or "",
    )
    if is_main():  # under torchrun every rank holds the report; one prints it
        print(console_report(report))
    return 0


def _torch_threads(threads: int | None) -> None:
    """--threads for the torch models of an eval (checkpoints, teachers); bundles take it in _eval_model."""
    if threads is None:
        return
    try:
        import torch
    except ImportError:  # a bundle-only eval on the core install
        return
    torch.set_num_threads(threads)


def _eval_model(ref: str, precision: str | None, threads: int | None) -> object:
    """A bundle directory opened at --precision with --threads; any other reference (or BUNDLE@int8) as given."""
    if (precision is None and threads is None) or not (Path(ref) / "manifest.json").is_file():
        return ref
    from dcclip.eval.models import OnnxEvalModel
    from dcclip.runtime.bundle import load_bundle_model

    model = OnnxEvalModel(ref, precision=precision)
    if threads is not None:  # reopen its sessions with the thread count; the name and ref stay
        model.runtime = load_bundle_model(Path(ref), precision, intra_op_num_threads=threads)
    return model


def _cmd_export(args: argparse.Namespace) -> int:
    from dcclip.export.bundle import export_bundle
    from dcclip.export.precision import TimingPlan, choice_table

    manifest = export_bundle(
        Path(args.checkpoint),
        Path(args.out),
        precision=args.precision,
        calib_shards=args.shards,
        eval_set=[Path(p) for p in args.eval_set] if args.eval_set else None,
        min_agreement=args.min_agreement,
        timing=TimingPlan(batches=tuple(args.time_batch)) if args.time_batch else None,
        exporter=args.exporter,
        license=args.license,
    )
    print(
        json.dumps({"bundle": args.out, "precisions": manifest["precisions"], "parity": manifest["parity"]}, indent=2)
    )
    if "precision_choice" in manifest:
        print(choice_table(manifest["precision_choice"]))
    return 0


def _cmd_target(args: argparse.Namespace) -> int:
    from dcclip.export.targets import build_target

    if args.images and args.target != "web":
        raise SystemExit(f"dcclip target {args.target}: --images is for the web target only")
    options = {"images": Path(args.images)} if args.images else {}
    summary = build_target(args.target, Path(args.bundle), Path(args.out), **options)
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from dcclip.export.card import update_card

    manifest = update_card(Path(args.bundle), Path(args.report), _split_list(args.names))
    print(
        json.dumps({"bundle": args.bundle, "evaluation": manifest["card"]["evaluation"]}, indent=2, ensure_ascii=False)
    )
    return 0


def _cmd_classify(args: argparse.Namespace) -> int:
    from dcclip.runtime.classifier import ZeroShotClassifier
    from dcclip.runtime.labels import split_labels

    labels = split_labels(args.labels)
    classifier = ZeroShotClassifier.from_bundle(
        args.bundle, precision=args.precision, threads=args.threads, allow_unsealed=args.allow_unsealed
    )
    results = classifier.classify(args.images, labels, lang=args.lang, top_k=args.top_k)
    if args.json:
        payload = [
            {"image": image, "labels": [{"label": label, "probability": p} for label, p in ranked]}
            for image, ranked in zip(args.images, results, strict=True)
        ]
        print(json.dumps(payload, indent=2, ensure_ascii=False))
        return 0
    for image, ranked in zip(args.images, results, strict=True):
        print(image)
        for label, probability in ranked:
            print(f"  {probability:7.2%}  {label}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from dcclip.serve import serve

    serve(
        Path(args.bundle),
        host=args.host,
        port=args.port,
        workers=args.workers,
        precision=args.precision,
        threads=args.threads,
        batch_max=args.batch_max,
        batch_wait_ms=args.batch_wait_ms,
        read_timeout=args.read_timeout,
        max_connections=args.max_connections,
        ui=not args.no_ui,
        index=Path(args.index) if args.index else None,
        request_timeout=args.request_timeout,
        allow_unsealed=args.allow_unsealed,
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from dcclip.demo import DemoSettings, main_entry

    knobs = (
        "train_samples", "eval_samples", "teacher_image_steps", "teacher_text_steps", "distill_steps", "align_steps",
    )  # fmt: skip
    given = {name: getattr(args, name) for name in knobs if getattr(args, name) is not None}
    settings = DemoSettings(out=Path(args.out), **given)
    return main_entry(settings, fresh=args.fresh)


def _cmd_index_build(args: argparse.Namespace) -> int:
    from dcclip.search import build_index

    summary = build_index(
        args.bundle,
        args.images,
        args.out,
        args.precision,
        args.batch_size,
        progress=not args.no_progress,
        ann=args.ann,
        threads=args.threads,
    )
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def _cmd_index_add(args: argparse.Namespace) -> int:
    from dcclip.search import add_to_index

    ann = True if args.ann else False if args.no_ann else None
    summary = add_to_index(
        args.index,
        args.images,
        args.bundle,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        ann=ann,
        threads=args.threads,
    )
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from dcclip.search import search_index

    hits = search_index(
        args.index,
        args.text,
        args.lang,
        args.top_k,
        args.bundle,
        args.templates,
        exact=args.exact,
        threads=args.threads,
    )
    if args.json:
        print(json.dumps([asdict(hit) for hit in hits], indent=2, ensure_ascii=False))
        return 0
    print(f"{'rank':>4}  {'score':>7}  {'id':>7}  source")
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:>4}  {hit.score:7.4f}  {hit.id:>7}  {hit.source}")
    return 0
