"""Typed run configuration: YAML file -> dotted command-line overrides -> validated, frozen dataclasses.

Every field has a type hint; values are converted and checked against it, unknown keys fail with their dotted path
and the closest valid names, and the resolved config is saved into each run directory (``config.yaml``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from dcclip.runtime.constants import LOGIT_SCALE_MAX

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is wrong; the message names its dotted path."""


@dataclass(frozen=True)
class DataConfig:
    """Where training shards are and how samples become batches."""

    train: str = ""  # shard-set directory, tar file, or brace pattern; several joined with '::'
    features: str = ""  # parallel shard set holding cached teacher features ('' = none, or in `train` itself)
    langs: tuple[str, ...] = ()  # languages to use; empty = every language found
    caption_sampling: Literal["all", "uniform", "temperature"] = "all"
    temperature: float = 0.5  # language weights ~ frequency**temperature when caption_sampling=temperature
    batch_size: int = 32  # images per batch per rank
    workers: int = 2
    resampled: bool = True  # sample shards with replacement: every rank sees the same number of batches
    epoch_samples: int = 0  # samples per epoch over all ranks in resampled mode; 0 = the shard set's size
    shuffle_buffer: int = 500
    max_text_len: int = 64
    # Decode the whole shard set once into RAM (small data sets: the toy world, ~10^5 low-resolution images);
    # JPEG decoding then costs nothing per step.
    in_memory: bool = False
    # Geometric augmentation applied identically to the student's and the teacher's view (see dcclip.data.augment);
    # needs the teacher online, since cached features describe the unaugmented image.
    augment: Literal["none", "flip", "geometric"] = "none"
    # Shards with one caption per sample in KEY.txt (img2dataset, most public WebDatasets): the caption's language,
    # or the KEY.json field that names it per sample (laion2B-multi: LANGUAGE); see dcclip.data.langcodes.
    caption_lang: str = ""
    lang_field: str = ""
    # Train on machine-translated captions too (`dcclip shards translate` marks them in caption_sources)
    machine_captions: bool = True

    def validate(self, path: str) -> None:
        _require(self.batch_size >= 1, f"{path}.batch_size", "must be >= 1")
        _require(self.workers >= 0, f"{path}.workers", "must be >= 0")
        _require(self.temperature > 0, f"{path}.temperature", "must be > 0")
        _require(self.max_text_len >= 4, f"{path}.max_text_len", "must be >= 4")
        _require(self.epoch_samples >= 0, f"{path}.epoch_samples", "must be >= 0")


@dataclass(frozen=True)
class TeacherConfig:
    """The frozen teacher: a spec string such as ``openclip:ViT-B-32@openai`` or ``hf:/path/to/altclip``."""

    spec: str = ""
    text_spec: str = ""  # optional multilingual text teacher (composite teacher) for an English-only CLIP
    feature_map: bool = True  # produce (and cache) the image feature map for the adapter loss
    batch_size: int = 64  # batch size when caching features

    def validate(self, path: str) -> None:
        _require(self.batch_size >= 1, f"{path}.batch_size", "must be >= 1")


@dataclass(frozen=True)
class StudentConfig:
    """The student architecture (a JSON in configs/models or a path) and its tokenizer."""

    model: str = ""
    tokenizer: str = ""  # tokenizer.json, a directory holding one, or a Hugging Face tokenizer directory
    pretrained: bool = False  # load timm / transformers pretrained weights for the towers when available
    # A Hugging Face text encoder directory (e.g. the teacher's XLM-R) whose embeddings and every k-th layer start the
    # student's text tower (TinyCLIP / DistilBERT style); it must share the student's tokenizer and hidden size.
    inherit_text: str = ""


@dataclass(frozen=True)
class LossConfig:
    """Loss weights; a zero weight switches that loss off."""

    feature_map: float = 1.0  # SmoothL1 between adapted student and teacher feature maps (DC-CLIP)
    smooth_l1_beta: float = 1.0
    image_embed: float = 1.0  # image embedding mimicry
    image_embed_kind: Literal["cosine", "mse"] = "cosine"
    text_embed: float = 1.0  # every language's caption -> teacher embedding of the source caption
    text_embed_kind: Literal["cosine", "mse"] = "mse"
    contrastive: float = 0.0  # symmetric InfoNCE between student image and text embeddings (stage 2)
    # hard: CLIP's one-hot targets; teacher: the teacher's image-text match distribution (needs the teacher's targets,
    # cached or online), which spares same-class pairs from being pushed apart as negatives
    contrastive_targets: Literal["hard", "teacher"] = "hard"
    logit_scale_init: float = 14.285714  # 1 / 0.07, as in CLIP
    logit_scale_max: float = LOGIT_SCALE_MAX  # the one cap: runtime owns the number (export and demo read it)

    def validate(self, path: str) -> None:
        for name in ("feature_map", "image_embed", "text_embed", "contrastive"):
            _require(getattr(self, name) >= 0, f"{path}.{name}", "must be >= 0")
        _require(self.smooth_l1_beta > 0, f"{path}.smooth_l1_beta", "must be > 0")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a cosine schedule and linear warm-up."""

    lr: float = 1e-3
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 100
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    accum_steps: int = 1

    def validate(self, path: str) -> None:
        _require(self.lr > 0, f"{path}.lr", "must be > 0")
        _require(0 <= self.min_lr <= self.lr, f"{path}.min_lr", "must be between 0 and lr")
        _require(self.accum_steps >= 1, f"{path}.accum_steps", "must be >= 1")
        _require(self.warmup_steps >= 0, f"{path}.warmup_steps", "must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Length, precision, checkpointing and logging of a run."""

    out_dir: str = "runs/default"
    steps: int = 1000
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["fp32", "bf16", "auto"] = "fp32"  # auto: timed fp32 vs bf16 (engine/precision.py)
    # torch intra-op threads: "auto" (default) chooses by the machine's free cores so a shared machine does not collapse
    # a step (engine/threads.py; benchmarks/shared_cpu.py), "torch" leaves torch's own setting, or a positive integer
    threads: str = "auto"
    channels_last: bool = True  # for convolutional students
    log_every: int = 10
    ckpt_every: int = 200
    keep_last: int = 3
    resume: str = ""  # '' (start fresh), 'auto' (latest checkpoint in out_dir) or a checkpoint path
    init: str = ""  # checkpoint whose model weights start this run (stage 2 starts from stage 1)
    freeze_image: bool = False
    freeze_text: bool = False
    trust_state: bool = False  # resume from a trainer state that needs full unpickling (only files you made)
    keep_cpu_memory: bool = True  # on CPU with glibc: keep freed memory mapped between steps (engine/cpu_memory.py)

    def validate(self, path: str) -> None:
        _require(self.steps >= 1, f"{path}.steps", "must be >= 1")
        _require(self.log_every >= 1, f"{path}.log_every", "must be >= 1")
        _require(self.ckpt_every >= 1, f"{path}.ckpt_every", "must be >= 1")
        _require(self.keep_last >= 1, f"{path}.keep_last", "must be >= 1")
        _require(
            self.threads in ("torch", "auto") or (self.threads.isdigit() and int(self.threads) >= 1),
            f"{path}.threads",
            f"must be 'torch', 'auto' or a positive integer, got {self.threads!r}",
        )


@dataclass(frozen=True)
class RunConfig:
    """A whole run: data, teacher, student, losses, optimiser and training settings."""

    stage: Literal["distill", "align"] = "distill"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _require(ok: bool, path: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{path}: {message}")


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    return f"{hint}valid keys: {', '.join(valid)}"


def _convert(value: Any, hint: Any, path: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError naming the path."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], path)
    if origin is tuple:
        return _convert_tuple(value, args, path)
    if hint is bool:
        return _convert_bool(value, path)
    if hint is int:
        return _convert_number(value, int, path)
    if hint is float:
        return _convert_number(value, float, path)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
        return str(value)
    raise ConfigError(f"{path}: unsupported type {hint}")  # pragma: no cover - schema error


def _convert_tuple(value: Any, args: tuple, path: str) -> tuple:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
    return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))


def _convert_bool(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ConfigError(f"{path}: expected true or false, got {value!r}")


def _convert_number(value: Any, kind: type, path: str) -> Any:
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected {kind.__name__}, got a boolean")
    try:
        if isinstance(value, str):
            value = float(value) if kind is float else int(value)
        if kind is int and isinstance(value, float):
            if not value.is_integer():
                raise ValueError
            value = int(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: expected {kind.__name__}, got {value!r}") from None


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, converting and validating every field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"unknown key '{where}': {_suggest(str(key), names)}")
    kwargs = {k: _convert(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(path or cls.__name__)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain nested dict/list form of a config (tuples become lists), ready for YAML or JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (['a','b','c'], parsed value); values are read as YAML (``[en,zh]`` is a list)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: list[str], cls: type = RunConfig) -> dict:
    """Apply dotted overrides to a nested dict, checking each key path against the schema as it goes."""
    data = _deep_copy(data)
    for text in overrides:
        parts, value = parse_override(text)
        _check_path(cls, parts)
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a section")
        node[parts[-1]] = value
    return data


def _check_path(cls: type, parts: list[str]) -> None:
    current: Any = cls
    for depth, part in enumerate(parts):
        where = ".".join(parts[: depth + 1])
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"unknown key '{where}': '{'.'.join(parts[:depth])}' is a value, not a section")
        names = [f.name for f in dataclasses.fields(current)]
        if part not in names:
            raise ConfigError(f"unknown key '{where}': {_suggest(part, names)}")
        current = typing.get_type_hints(current)[part]


def _deep_copy(data: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def resolve_config_path(name: str | Path) -> Path:
    """Find a config by path, or by name among the shipped configs (``demo`` -> configs/demo.yaml)."""
    from dcclip.configs import CONFIG_DIR

    path = Path(name)
    candidates = [path, CONFIG_DIR / path, CONFIG_DIR / f"{path}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config file {str(name)!r} not found; shipped configs: {', '.join(shipped)}")


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping, naming the file when it is not one."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def load_config(config: str | Path | None = None, overrides: list[str] | None = None, cls: type[T] = RunConfig) -> T:
    """YAML defaults, then dotted overrides, then validation: the one way a run's config is made."""
    data = read_yaml(resolve_config_path(config)) if config else {}
    data = apply_overrides(data, list(overrides or []), cls)
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        source = f" (in {config})" if config else ""
        raise ConfigError(f"{exc}{source}") from None


def save_config(cfg: Any, path: Path) -> Path:
    """Write the resolved config as YAML, atomically; every run directory gets one."""
    import yaml

    from dcclip.io import write_text_atomic

    return write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
