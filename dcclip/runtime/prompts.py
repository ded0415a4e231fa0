"""Prompt ensembling, the one way dcclip turns class names into class embeddings (runtime, eval and export share it).

Every template is filled with every class name, class-major; a class embedding is the L2-normalised mean of the
L2-normalised embeddings of its prompts (CLIP's and clip_benchmark's rule). numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dcclip.runtime.errors import InvalidTemplateError, check_unicode

PLACEHOLDER = "{c}"


def checked_templates(templates: object) -> tuple[str, ...]:
    """A caller's templates as a tuple, each a valid string holding ``{c}``; InvalidTemplateError names the bad one."""
    if isinstance(templates, str) or not isinstance(templates, Sequence) or not templates:
        raise InvalidTemplateError("templates must be a non-empty list of strings")
    for index, template in enumerate(templates):
        if not isinstance(template, str) or PLACEHOLDER not in template:
            raise InvalidTemplateError(f"templates[{index}] must be a string holding {PLACEHOLDER}: {template!r}")
        check_unicode(template, f"templates[{index}]", InvalidTemplateError)
    return tuple(templates)


def fill_templates(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every template with every class name, class-major: [c0 t0, c0 t1, ..., c1 t0, ...]."""
    return [template.replace(PLACEHOLDER, name) for name in classnames for template in templates]


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation in float32 (zero rows stay zero instead of becoming NaN)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.float32(eps))


def class_embeddings(prompt_embeddings: np.ndarray, n_classes: int) -> np.ndarray:
    """[C*T, D] prompt embeddings (class-major, as ``fill_templates`` orders them) -> [C, D] class embeddings."""
    per_class = np.asarray(prompt_embeddings).reshape(n_classes, -1, prompt_embeddings.shape[-1])
    return l2_normalize(l2_normalize(per_class).mean(axis=1))
