"""Hindi (hi) for the toy world: words, grammar and templates."""

from __future__ import annotations

from dcclip.data.world.registry import Language, Thing

# Hindi: (noun, gender); adjectives (masculine, feminine): -ā adjectives agree (नीला/नीली), the rest are invariable.
COLOURS = {
    "red": ("लाल", "लाल"),
    "orange": ("नारंगी", "नारंगी"),
    "yellow": ("पीला", "पीली"),
    "green": ("हरा", "हरी"),
    "blue": ("नीला", "नीली"),
    "purple": ("बैंगनी", "बैंगनी"),
    "pink": ("गुलाबी", "गुलाबी"),
    "brown": ("भूरा", "भूरी"),
    "black": ("काला", "काली"),
    "white": ("सफ़ेद", "सफ़ेद"),
}
POS = {"left": "बाईं ओर", "right": "दाईं ओर", "top": "ऊपर", "bottom": "नीचे", "centre": "बीच में"}
SHAPES = {
    "circle": ("वृत्त", "m"),
    "ellipse": ("अंडाकार आकृति", "f"),
    "square": ("वर्ग", "m"),
    "triangle": ("त्रिभुज", "m"),
    "star": ("तारा", "m"),
    "hexagon": ("षट्भुज", "m"),
    "cross": ("क्रॉस", "m"),
    "ring": ("छल्ला", "m"),
    "heart": ("दिल", "m"),
}
SIZES = {"small": ("छोटा", "छोटी"), "large": ("बड़ा", "बड़ी")}


def noun_phrase(t: Thing, case: str) -> str:
    """Hindi: एक + size + colour + noun; -ā adjectives take the feminine -ī with feminine nouns."""
    noun, gender = SHAPES[t.shape]
    g = gender == "f"
    words = ["एक"] + ([SIZES[t.size][g]] if t.size else [])
    return " ".join([*words, COLOURS[t.colour][g], noun])


def shape_class_name(t: Thing) -> str:
    """Hindi class names drop the article एक: the templates that need it supply it."""
    return noun_phrase(t, "nom").removeprefix("एक ")


LANGUAGE = Language(
    code="hi",
    prob=0.6,
    noun_phrase=noun_phrase,
    positions=POS,
    located="{pos} {np}",
    join=" और ",
    shape_templates=(
        ("{np}", "{np}"),
        ("चित्र: {np}", "चित्र: {np}"),
        ("तस्वीर में {np} है", "तस्वीर में {np} हैं"),
        ("इस चित्र में {np} है", "इस चित्र में {np} हैं"),
        ("एक चित्र जिसमें {np} है", "एक चित्र जिसमें {np} हैं"),
    ),
    digit_words=("शून्य", "एक", "दो", "तीन", "चार", "पाँच", "छह", "सात", "आठ", "नौ"),
    digit_templates=(
        "हाथ से लिखा अंक {w}",
        "हाथ से लिखा हुआ अंक {w}",
        "अंक {w}, हाथ से लिखा हुआ",
        "हस्तलिखित अंक {n}",
        "हाथ से लिखी संख्या {w}",
    ),
    shape_class_templates=("{c}", "चित्र: {c}", "तस्वीर में एक {c} है", "इस चित्र में एक {c} है"),
    digit_class_name="अंक {w}",
    digit_class_templates=("{c}", "हाथ से लिखा {c}", "चित्र: {c}", "तस्वीर में {c} है"),
    shape_class_name=shape_class_name,
)
