"""Text-layer inheritance: initialise the text student from a teacher encoder of the same layout family
(DistilBERT / TinyCLIP style: embeddings and every k-th layer)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from dcclip.models.students.arch import family_of_type
from dcclip.models.students.modules import TextStudent

if TYPE_CHECKING:
    import transformers


def _family(model: nn.Module) -> str:
    """The layout family of a Hugging Face encoder."""
    return family_of_type(getattr(getattr(model, "config", None), "model_type", type(model).__name__))


def _check_inheritable(student: nn.Module, teacher: nn.Module) -> None:
    """Same layout family, same hidden size and an embeddings + encoder.layer structure, else ValueError."""
    s_family, t_family = _family(student), _family(teacher)
    if s_family != t_family:
        raise ValueError(f"cannot inherit layers: student is a {s_family} encoder, teacher a {t_family} encoder")
    if not hasattr(teacher, "embeddings") or not hasattr(getattr(teacher, "encoder", None), "layer"):
        raise ValueError(f"cannot inherit layers: {type(teacher).__name__} has no embeddings + encoder.layer")
    s_hidden, t_hidden = student.config.hidden_size, teacher.config.hidden_size
    if s_hidden != t_hidden:
        raise ValueError(f"cannot inherit layers: hidden size {s_hidden} (student) != {t_hidden} (teacher)")


def _copy_parameters(
    student: nn.Module, teacher: nn.Module, prefix: str, slice_rows: tuple[str, ...] = ()
) -> list[str]:
    """Copy same-named parameters; tables named in slice_rows may take the teacher's first rows."""
    teacher_params = dict(teacher.named_parameters())
    copied = []
    for name, param in student.named_parameters():
        source = teacher_params.get(name)
        if source is None:
            raise ValueError(f"cannot inherit {prefix}{name}: the teacher has no such parameter")
        sliceable = any(name.startswith(table) for table in slice_rows)
        if source.shape != param.shape and sliceable and source.shape[1:] == param.shape[1:]:
            source = source[: param.shape[0]] if source.shape[0] >= param.shape[0] else None
        if source is None or source.shape != param.shape:
            shape = tuple(teacher_params[name].shape)
            hint = " (the student must use the teacher's tokenizer)" if "word_embeddings" in name else ""
            raise ValueError(f"cannot inherit {prefix}{name}: shape {tuple(param.shape)} vs teacher {shape}{hint}")
        with torch.no_grad():
            param.copy_(source)
        copied.append(prefix + name)
    return copied


def inherit_text_layers(
    text: TextStudent, teacher_encoder: transformers.PreTrainedModel, every_k: int | None = None
) -> list[str]:
    """Initialise the text student from a teacher encoder (DistilBERT/TinyCLIP style): embeddings and layers 0, k, 2k…

    ``k`` defaults to teacher_layers // student_layers. Returns the names of the copied student parameters.
    """
    teacher = getattr(teacher_encoder, "base_model", teacher_encoder)
    student = text.transformer
    _check_inheritable(student, teacher)
    n_student, n_teacher = len(student.encoder.layer), len(teacher.encoder.layer)
    k = every_k if every_k is not None else n_teacher // n_student
    if k < 1 or (n_student - 1) * k >= n_teacher:
        raise ValueError(f"cannot take {n_student} layers every {k} from a teacher with {n_teacher} layers")
    tables = ("position_embeddings", "token_type_embeddings")
    copied = _copy_parameters(student.embeddings, teacher.embeddings, "transformer.embeddings.", tables)
    for i in range(n_student):
        prefix = f"transformer.encoder.layer.{i}."
        copied += _copy_parameters(student.encoder.layer[i], teacher.encoder.layer[i * k], prefix)
    return copied
