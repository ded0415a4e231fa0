"""Student checkpoints: the config.json fields a student needs beside its weights, and saving / loading a student
with its tokenizer in the form export, eval and serve read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dcclip.models.students.build import rebuild_student, student_preprocess
from dcclip.models.students.modules import Student
from dcclip.runtime.constants import TOKENIZER_FILE
from dcclip.runtime.preprocess import Preprocess


@dataclass
class LoadedStudent:
    """A trained student with everything needed to use it: tokenizer, preprocessing, languages, text length."""

    model: Student
    tokenizer: Any
    preprocess: Preprocess
    langs: list[str]
    max_text_len: int
    config: dict[str, Any]
    path: Path


def student_checkpoint_config(
    student: Student, langs: Sequence[str], max_text_len: int | None = None
) -> dict[str, Any]:
    """The config.json fields ``load_student_checkpoint`` needs: architecture, preprocessing, tokenizer file, text
    length (at most the text tower's) and languages."""
    limit = int(student.text.max_length)
    return {
        "arch": student.arch,
        "preprocess": student_preprocess(student.arch).to_dict(),
        "tokenizer": TOKENIZER_FILE,
        "max_text_len": limit if max_text_len is None else min(max_text_len, limit),
        "langs": list(langs),
    }


def save_student_checkpoint(
    run_dir: str | Path,
    step: int,
    student: Student,
    tokenizer_file: str | Path,
    langs: Sequence[str],
    max_text_len: int | None = None,
) -> Path:
    """Save a student with its tokenizer as step ``step`` of ``run_dir``: the form export, eval and serve read."""
    from dcclip import checkpoint as ckpt

    config = student_checkpoint_config(student, langs, max_text_len)
    return ckpt.write_checkpoint(Path(run_dir), step, student, config, None, {TOKENIZER_FILE: Path(tokenizer_file)})


def load_student_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedStudent:
    """Rebuild a student from a checkpoint directory (or a run directory's latest) in eval mode."""
    from dcclip import checkpoint as ckpt
    from dcclip.models.tokenizers import TextTokenizer

    loaded = ckpt.read_checkpoint(path, with_state=False)
    student = rebuild_student(loaded.config["arch"])
    ckpt.load_weights(student, loaded)
    student.to(device).eval()
    tokenizer_file = loaded.path / loaded.config.get("tokenizer", TOKENIZER_FILE)
    return LoadedStudent(
        model=student,
        tokenizer=TextTokenizer.from_path(tokenizer_file),
        preprocess=Preprocess.from_config(loaded.config["preprocess"]),
        langs=list(loaded.config.get("langs", [])),
        max_text_len=int(loaded.config.get("max_text_len", student.text.max_length)),
        config=loaded.config,
        path=loaded.path,
    )
