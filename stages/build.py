"""Turn a validated RunConfig into what the loop needs: task, data stream and FitSpec. Shared by both stages."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dcclip import __version__
from dcclip import checkpoint as ckpt
from dcclip.config import ConfigError, DataConfig, RunConfig, save_config, to_dict
from dcclip.data.features import check_fingerprint, feature_fields, find_cached_features
from dcclip.data.memory import MemoryLoader, decode_shard_set
from dcclip.data.pipeline import ShardLoader, caption_format
from dcclip.engine.distributed import DistEnv
from dcclip.engine.loop import FitSpec
from dcclip.engine.tasks import StudentTask
from dcclip.models.teacher_spec import teacher_fingerprint
from dcclip.runtime.constants import TOKENIZER_FILE
from dcclip.runtime.preprocess import Preprocess

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "dcclip-checkpoint"


@dataclass
class TeacherSide:
    """What the student needs to know about its teacher, whether it is loaded or only cached."""

    teacher: Any  # a loaded Teacher, or None when features are cached
    spec: str
    embed_dim: int
    fmap_channels: int | None
    fmap_grid: tuple[int, int] | None
    fingerprint: str | None
    feature_dir: str | None
    fields: list[str]
    feature_info: dict[str, Any] | None = None  # teacher.json of cached features: what they cover


@dataclass
class PreparedRun:
    task: StudentTask
    loader: ShardLoader | MemoryLoader
    spec: FitSpec


def load_tokenizer(cfg: RunConfig, init: ckpt.Checkpoint | None) -> Any:
    """The student tokenizer: the config's, else the one saved with the initialising checkpoint."""
    from dcclip.models.tokenizers import TextTokenizer

    if cfg.student.tokenizer:
        return TextTokenizer.from_path(cfg.student.tokenizer)
    if init is not None and (init.path / TOKENIZER_FILE).is_file():
        return TextTokenizer.from_path(init.path / TOKENIZER_FILE)
    raise ValueError("student.tokenizer is not set (train one with `dcclip tokenizer train`)")


def _refuse_features_with_augment(cfg: RunConfig) -> None:
    """Cached features describe the unaugmented image: with augmentation they would be computed and never used."""
    where = f"data.features={cfg.data.features}" if cfg.data.features else f"teacher features in {cfg.data.train}"
    raise ConfigError(
        f"{where} with data.augment={cfg.data.augment}: cached features describe the unaugmented image, so an "
        "augmented run cannot use them. Either keep the features and add data.augment=none, or drop data.features "
        "(and use shards without features) so the teacher runs online on each augmented view"
    )


def teacher_side(cfg: RunConfig, needed: bool, init: ckpt.Checkpoint | None, device: Any) -> TeacherSide:
    """Cached features when the data has them (no teacher loaded), else the teacher itself, else the init's record."""
    if not needed:
        known = (init.config.get("teacher") or {}) if init is not None else {}
        return TeacherSide(None, known.get("spec", ""), known.get("embed_dim", 0), None, None, None, None, [])
    cached = find_cached_features(cfg.data.train, cfg.data.features)
    if cached is not None and cfg.data.augment != "none":
        _refuse_features_with_augment(cfg)
    if cached is not None:
        feature_dir, info = cached
        spec, text_spec, fmap = cfg.teacher.spec, cfg.teacher.text_spec, cfg.teacher.feature_map
        check_fingerprint(info, feature_dir, spec, text_spec, fmap, teacher_fingerprint(spec, text_spec, fmap))
        grid = tuple(info["fmap_grid"]) if info.get("fmap_grid") else None
        log.info("using cached teacher features from %s (no teacher loaded)", feature_dir)
        return TeacherSide(
            None, info["spec"], info["embed_dim"], info.get("fmap_channels"), grid, info["fingerprint"],
            feature_dir, feature_fields(info), info,
        )  # fmt: skip
    if not cfg.teacher.spec:
        raise ValueError("teacher.spec is not set and the data holds no cached teacher features")
    from dcclip.models.teachers import load_teacher

    teacher = load_teacher(cfg.teacher.spec, cfg.teacher.text_spec, device=device)
    channels = teacher.fmap_channels if cfg.teacher.feature_map else None
    grid = teacher.fmap_grid if cfg.teacher.feature_map else None
    fingerprint = teacher_fingerprint(cfg.teacher.spec, cfg.teacher.text_spec, cfg.teacher.feature_map)
    return TeacherSide(teacher, cfg.teacher.spec, teacher.embed_dim, channels, grid, fingerprint, None, [])


def build_student_for(cfg: RunConfig, side: TeacherSide, tokenizer: Any, init: ckpt.Checkpoint | None) -> Any:
    """A fresh student sized to the teacher, or the initialising checkpoint's student with its weights."""
    from dcclip.models.students import build_student, rebuild_student

    if init is None:
        torch.manual_seed(cfg.train.seed)  # the same initial student whether or not a teacher was built first
        if not cfg.student.model:
            raise ValueError("student.model is not set (see `dcclip models list --kind student`)")
        student = build_student(
            cfg.student.model,
            embed_dim=side.embed_dim,
            fmap_channels=side.fmap_channels,
            fmap_grid=side.fmap_grid,
            vocab_size=tokenizer.vocab_size,
            pad_id=tokenizer.pad_id,
            pretrained=cfg.student.pretrained,
            logit_scale_init=cfg.loss.logit_scale_init,
        )
        if cfg.student.inherit_text:
            inherit_from(student, cfg.student.inherit_text)
        return student
    student = rebuild_student(init.config["arch"])
    ckpt.load_weights(student, init)
    return student


def inherit_from(student: Any, encoder_dir: str) -> None:
    """Initialise the student's text tower from a larger Hugging Face encoder's embeddings and every k-th layer."""
    from transformers import AutoModel

    from dcclip.models.students import inherit_text_layers

    if not Path(encoder_dir).is_dir():
        raise FileNotFoundError(f"student.inherit_text={encoder_dir}: not a local Hugging Face model directory")
    copied = inherit_text_layers(student.text, AutoModel.from_pretrained(encoder_dir))
    log.info("student text tower: %d tensors inherited from %s", len(copied), encoder_dir)


def checkpoint_config(cfg: RunConfig, student: Any, side: TeacherSide, langs: list[str]) -> dict[str, Any]:
    """config.json of every checkpoint: enough to rebuild, preprocess, tokenize and export the student alone."""
    from dcclip.models.students import student_checkpoint_config

    return {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "dcclip_version": __version__,
        "stage": cfg.stage,
        **student_checkpoint_config(student, langs, cfg.data.max_text_len),
        "teacher": {"spec": side.spec, "embed_dim": side.embed_dim, "fingerprint": side.fingerprint},
        "run_config": to_dict(cfg),
    }


def build_loader(
    data: DataConfig,
    side: TeacherSide,
    pre: Preprocess,
    tokenizer: Any,
    env: DistEnv,
    seed: int,
    teacher_pre: Preprocess | None,
) -> ShardLoader | MemoryLoader:
    """The run's batch stream: decoded once into memory (``data.in_memory``) or streamed from the shards."""
    if data.in_memory:
        if side.fields:
            raise ValueError("data.in_memory reads images only; cached teacher features need the streaming reader")
        views = [pre] + ([teacher_pre] if teacher_pre is not None else [])
        decoded = decode_shard_set(data.train, views, progress=env.is_main, fmt=caption_format(data))
        log.info("decoded %d samples into memory (%d skipped)", len(decoded), len(decoded.skipped))
        return MemoryLoader(data, decoded, pre, tokenizer, env.rank, env.world_size, seed, teacher_pre)
    return ShardLoader(
        data, pre, tokenizer, rank=env.rank, world_size=env.world_size, seed=seed, feature_fields=side.fields,
        feature_source=side.feature_dir if side.feature_dir and side.feature_dir != data.train else None,
        teacher_preprocess=teacher_pre, feature_info=side.feature_info,
    )  # fmt: skip


def prepare_run(cfg: RunConfig, env: DistEnv) -> PreparedRun:
    """Build tokenizer, teacher side, student, task and data stream for a run, and save its resolved config."""
    from dcclip.models.students import student_preprocess

    run_dir = Path(cfg.train.out_dir)
    init = ckpt.read_checkpoint(cfg.train.init, with_state=False) if cfg.train.init else None
    tokenizer = load_tokenizer(cfg, init)
    probe = StudentTask.weights_from(cfg.loss)
    side = teacher_side(cfg, any(probe[k] > 0 for k in StudentTask.DISTILL_LOSSES), init, env.device)
    student = build_student_for(cfg, side, tokenizer, init)
    max_text_len = min(cfg.data.max_text_len, int(student.text.max_length))
    data_cfg = dataclasses.replace(cfg.data, max_text_len=max_text_len)
    teacher_pre = None
    if side.teacher is not None and side.teacher.preprocess != student_preprocess(student.arch):
        teacher_pre = side.teacher.preprocess
    loader = build_loader(data_cfg, side, student_preprocess(student.arch), tokenizer, env, cfg.train.seed, teacher_pre)
    gather = None
    if env.distributed and cfg.loss.contrastive > 0:
        from dcclip.engine.distributed import gather_embeddings

        gather = gather_embeddings
    task = StudentTask(student, side.teacher, cfg.loss, cfg.train.freeze_image, cfg.train.freeze_text, gather)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        tokenizer.save(run_dir)
    from dcclip.engine.distributed import barrier

    barrier()
    spec = FitSpec(
        run_dir=run_dir,
        train=cfg.train,
        optim=cfg.optim,
        checkpoint_config=checkpoint_config(cfg, student, side, loader.langs),
        checkpoint_files={TOKENIZER_FILE: run_dir / TOKENIZER_FILE},
        description=cfg.stage,
    )
    return PreparedRun(task, loader, spec)


def run_stage(cfg: RunConfig) -> dict[str, Any]:
    """Prepare and fit one stage in this process (a torchrun rank or a single process); returns the summary."""
    import json

    from dcclip.engine.distributed import init_distributed, shutdown_distributed
    from dcclip.engine.loop import fit

    env = init_distributed(cfg.train.device)
    try:
        prepared = prepare_run(cfg, env)
        result = fit(prepared.task, prepared.loader, prepared.spec, env)
        summary = {
            "stage": cfg.stage,
            "run_dir": str(prepared.spec.run_dir),
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            "steps": result.step,
            "samples_seen": result.samples_seen,
            "seconds": round(result.seconds, 2),
            "final_losses": result.losses,
            "skipped_samples": prepared.loader.skipped_samples,
            "world_size": env.world_size,
            "replica_checksums": result.replica_checksums,
            "precision": result.precision,
            "threads": result.threads,
        }
        if env.is_main:
            (prepared.spec.run_dir / "summary.json").write_text(json.dumps(summary, indent=2), "utf-8")
        return summary
    finally:
        shutdown_distributed()
