"""The composite teacher (M-CLIP form): the image side from one CLIP teacher, the text side from another text teacher
that embeds into the same space (``teacher.text_spec``)."""

from __future__ import annotations

from torch import Tensor, nn

from dcclip.models.teachers.base import Teacher
from dcclip.models.teachers.hub import TeacherLoadError


class CompositeTeacher(Teacher):
    """Image side from one CLIP teacher, text side from another text teacher in the same embedding space."""

    def __init__(self, image_teacher: Teacher, text_encoder: nn.Module) -> None:
        super().__init__(f"{image_teacher.spec} + {text_encoder.spec}", image_teacher.preprocess)
        if image_teacher.embed_dim != text_encoder.embed_dim:
            raise TeacherLoadError(
                f"image teacher {image_teacher.spec!r} embeds in {image_teacher.embed_dim} dims but text teacher "
                f"{text_encoder.spec!r} in {text_encoder.embed_dim}: they must share one embedding space"
            )
        self.image_teacher = image_teacher
        self.text_encoder = text_encoder
        self.embed_dim = image_teacher.embed_dim
        self.fmap_channels = image_teacher.fmap_channels
        self.fmap_grid = image_teacher.fmap_grid
        self._freeze()

    def _image_forward(self, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        """Embedding and feature map from the image teacher."""
        return self.image_teacher._image_forward(pixels)

    def _text_forward(self, texts: list[str]) -> Tensor:
        """Embedding from the text teacher (its own tokenizer)."""
        return self.text_encoder._text_forward(texts)
