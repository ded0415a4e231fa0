"""English (en) for the toy world: words, grammar and templates."""

from __future__ import annotations

from dcclip.data.world.registry import Language, Thing

POS = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}


def noun_phrase(t: Thing, case: str) -> str:
    """English: article chosen by the next sound ("an orange circle")."""
    words = [w for w in (t.size, t.colour, t.shape) if w]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def shape_class_name(t: Thing) -> str:
    """English class names carry no article ("red circle"): the templates supply "the"."""
    return f"{t.colour} {t.shape}"


LANGUAGE = Language(
    code="en",
    prob=1.0,
    noun_phrase=noun_phrase,
    positions=POS,
    located="{np} {pos}",
    join=" and ",
    shape_templates=(
        ("{np}", "{np}"),
        ("a photo of {np}", "a photo of {np}"),
        ("a drawing of {np}", "a drawing of {np}"),
        ("an image showing {np}", "an image showing {np}"),
        ("a picture with {np}", "a picture with {np}"),
    ),
    digit_words=("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    digit_templates=(
        "a handwritten digit {w}",
        "a photo of the handwritten digit {w}",
        "the digit {w}, written by hand",
        "a handwritten number {n}",
        "a scan of a handwritten {w}",
    ),
    shape_class_templates=("a photo of the {c}", "a drawing of the {c}", "the {c}", "an image showing the {c}", "{c}"),
    digit_class_name="the digit {w}",
    digit_class_templates=(
        "{c}",
        "a photo of {c}",
        "{c}, written by hand",
        "a scan of {c} written by hand",
        "a blurry photo of {c}",
    ),
    shape_class_name=shape_class_name,
)
