"""Small image and text students (DC-CLIP recipe), one module per concern: ``modules`` (the towers and the Student),
``arch`` (the architecture JSON: fields, validation, resolution against teacher and tokenizer), ``build``
(architecture -> modules, preprocessing, parameter counts), ``inherit`` (text layers from a teacher encoder) and
``checkpoint`` (saving and loading a student with its tokenizer). The public names are re-exported here.
"""

from __future__ import annotations

from dcclip.models.students.arch import StudentConfigError, load_student_config, validate_student_config
from dcclip.models.students.build import build_student, count_parameters, rebuild_student, student_preprocess
from dcclip.models.students.checkpoint import (
    LoadedStudent,
    load_student_checkpoint,
    save_student_checkpoint,
    student_checkpoint_config,
)
from dcclip.models.students.inherit import inherit_text_layers
from dcclip.models.students.modules import (
    LOGIT_SCALE_INIT,
    ImageStudent,
    Student,
    TextStudent,
    is_right_padded,
    length_groups,
    resize_grid,
)

__all__ = [
    "LOGIT_SCALE_INIT",
    "ImageStudent",
    "LoadedStudent",
    "Student",
    "StudentConfigError",
    "TextStudent",
    "build_student",
    "count_parameters",
    "inherit_text_layers",
    "is_right_padded",
    "length_groups",
    "load_student_checkpoint",
    "load_student_config",
    "rebuild_student",
    "resize_grid",
    "save_student_checkpoint",
    "student_checkpoint_config",
    "student_preprocess",
    "validate_student_config",
]
