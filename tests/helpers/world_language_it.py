"""Italian as an 11th toy-world language: the whole of what adding a language takes (used by tests/test_world.py)."""

from __future__ import annotations

from dcclip.data.world import Language, Thing

# (noun, gender); adjectives (masculine, feminine) follow the noun; size before it: "un piccolo cerchio rosso".
SHAPES = {
    "circle": ("cerchio", "m"),
    "ellipse": ("ellisse", "f"),
    "square": ("quadrato", "m"),
    "triangle": ("triangolo", "m"),
    "star": ("stella", "f"),
    "hexagon": ("esagono", "m"),
    "cross": ("croce", "f"),
    "ring": ("anello", "m"),
    "heart": ("cuore", "m"),
}
COLOURS = {
    "red": ("rosso", "rossa"),
    "orange": ("arancione", "arancione"),
    "yellow": ("giallo", "gialla"),
    "green": ("verde", "verde"),
    "blue": ("blu", "blu"),
    "purple": ("viola", "viola"),
    "pink": ("rosa", "rosa"),
    "brown": ("marrone", "marrone"),
    "black": ("nero", "nera"),
    "white": ("bianco", "bianca"),
}
SIZES = {"small": ("piccolo", "piccola"), "large": ("grande", "grande")}
POS = {"left": "a sinistra", "right": "a destra", "top": "in alto", "bottom": "in basso", "centre": "al centro"}


def noun_phrase(t: Thing, case: str) -> str:
    """un/una + size + noun + colour, agreeing in gender."""
    noun, gender = SHAPES[t.shape]
    g = gender == "f"
    words = ["una" if g else "un"] + ([SIZES[t.size][g]] if t.size else [])
    return " ".join([*words, noun, COLOURS[t.colour][g]])


LANGUAGE = Language(
    code="it",
    prob=0.5,
    noun_phrase=noun_phrase,
    positions=POS,
    located="{np} {pos}",
    join=" e ",
    shape_templates=(
        ("{np}", "{np}"),
        ("una foto di {np}", "una foto di {np}"),
        ("un disegno con {np}", "un disegno con {np}"),
    ),
    digit_words=("zero", "uno", "due", "tre", "quattro", "cinque", "sei", "sette", "otto", "nove"),
    digit_templates=("la cifra {w} scritta a mano", "il numero {n} scritto a mano"),
    shape_class_templates=("{c}", "una foto di {c}"),
    digit_class_name="la cifra {w}",
    digit_class_templates=("{c}", "{c}, scritta a mano"),
)
