"""The built-in multilingual toy world: drawn shape scenes and scikit-learn's handwritten digits, captioned in ten
languages, written as training shards plus three eval sets in the clip_benchmark WebDataset layout.

It is the embedded default data for the tests and for ``dcclip demo``: an English-only teacher learns it, small
multilingual students are distilled from that teacher, and the eval sets score them per language. Each language is
one record in ``languages/<code>.py`` (grammar spelled out: gender, case, agreement, word order, measure words,
particles), found by the registry in ``registry.py``; ``grammar.py`` captions scenes from the records, ``render.py``
draws them and ``write.py`` writes the splits.

Everything is deterministic: each sample draws from its own numpy Generator seeded by (seed, stream, index), so the
same arguments give byte-identical files whatever the order of generation, and no file holds a time or a path.
"""

from dcclip.data.world.grammar import (
    class_names,
    class_templates,
    describe_digit,
    describe_shapes,
    noun_phrase,
    shape_class_name,
    shape_classes,
)
from dcclip.data.world.registry import (
    BUILTIN as LANGS,
)
from dcclip.data.world.registry import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Language,
    Thing,
    check_language,
    language,
    language_codes,
    register,
    unregister,
)
from dcclip.data.world.render import PALETTE
from dcclip.data.world.write import WORLD_FORMAT, WORLD_VERSION, generate_world

__all__ = [
    "COLOURS",
    "LANGS",
    "PALETTE",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "WORLD_FORMAT",
    "WORLD_VERSION",
    "Language",
    "Thing",
    "check_language",
    "class_names",
    "class_templates",
    "describe_digit",
    "describe_shapes",
    "generate_world",
    "language",
    "language_codes",
    "noun_phrase",
    "register",
    "shape_class_name",
    "shape_classes",
    "unregister",
]
