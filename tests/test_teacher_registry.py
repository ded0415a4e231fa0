"""Adding a teacher backend is one new file and one registry line: a fixture backend written to a tmp dir, registered
with one entry, loads through ``load_teacher`` like the shipped ones (as a CLIP teacher and as a text side)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from dcclip.models.teacher_spec import TeacherSpecError, parse_teacher_spec  # noqa: E402
from dcclip.models.teachers import CompositeTeacher, Teacher, load_teacher  # noqa: E402
from dcclip.models.teachers.registry import BACKENDS, TEXT, Backend  # noqa: E402

# The whole of a new backend: a Teacher subclass and ``load(spec)``. Its weights are seeded, its size read from the
# spec's directory, so the test also sees that the parsed spec reaches the backend.
FIXTURE_BACKEND = '''
"""A fixture teacher: a linear image tower over 16x16 pixels and byte embeddings for text."""

from pathlib import Path

import torch
from torch import nn

from dcclip.models.teachers.base import Teacher
from dcclip.runtime.preprocess import Preprocess


class FixtureTeacher(Teacher):
    def __init__(self, spec: str, embed_dim: int) -> None:
        super().__init__(spec, Preprocess(image_size=16))
        torch.manual_seed(0)
        self.image_proj = nn.Linear(3 * 16 * 16, embed_dim)
        self.fmap_proj = nn.Conv2d(3, 5, kernel_size=4, stride=4)
        self.text_table = nn.Embedding(256, embed_dim)
        self._finish()

    def _image_forward(self, pixels):
        return self.image_proj(pixels.flatten(1)), self.fmap_proj(pixels)

    def _text_forward(self, texts):
        ids = torch.tensor([list(text.encode()[:8].ljust(8, b" ")) for text in texts], device=self.device)
        return self.text_table(ids).mean(dim=1)


def load(spec):
    return FixtureTeacher(spec.raw, int((Path(spec.model) / "embed_dim.txt").read_text()))
'''

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def fixture_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The new file (imported from a tmp dir) and its one registry line; returns a spec of the new backend."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "fixture_teacher.py").write_text(textwrap.dedent(FIXTURE_BACKEND), encoding="utf-8")
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.setitem(BACKENDS, "fixture", Backend("fixture_teacher"))  # the one registry line
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "embed_dim.txt").write_text("12", encoding="utf-8")
    return f"fixture:{weights}"


def test_an_unregistered_backend_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TeacherSpecError, match="invalid teacher spec"):
        parse_teacher_spec(f"fixture:{tmp_path}")


def test_a_registered_backend_loads_through_load_teacher(fixture_backend: str) -> None:
    parsed = parse_teacher_spec(fixture_backend)
    assert (parsed.backend, parsed.source) == ("fixture", "dir")
    teacher = load_teacher(fixture_backend)
    assert isinstance(teacher, Teacher) and type(teacher).__name__ == "FixtureTeacher"
    assert (teacher.embed_dim, teacher.fmap_channels, teacher.fmap_grid) == (12, 5, (4, 4))
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.train().training
    image, fmap = teacher.encode_image(torch.rand(2, 3, 16, 16))
    text = teacher.encode_text(["a red circle", "un cercle rouge"])
    assert image.shape == (2, 12) and fmap.shape == (2, 5, 4, 4) and text.shape == (2, 12)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    assert len(teacher.fingerprint()) == 64


def test_a_registered_text_backend_is_a_composite_text_side(
    fixture_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(BACKENDS, "fixturetext", Backend("fixture_teacher", role=TEXT))
    text_spec = fixture_backend.replace("fixture:", "fixturetext:", 1)
    with pytest.raises(TeacherSpecError, match="text-only"):
        load_teacher(text_spec)
    teacher = load_teacher(fixture_backend, text_spec=text_spec)
    assert isinstance(teacher, CompositeTeacher) and teacher.spec == f"{fixture_backend} + {text_spec}"
    assert teacher.encode_text(["a red circle"]).shape == (1, 12)


def test_the_registry_and_the_spec_grammar_import_without_torch() -> None:
    code = "import sys, dcclip.models.teacher_spec, dcclip.models.teachers.registry; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
