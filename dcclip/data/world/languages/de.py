"""German (de) for the toy world: words, grammar and templates."""

from __future__ import annotations

from dcclip.data.world.registry import Language, Thing

# German: (noun, gender); adjective stems take mixed-declension endings after "ein" except the invariable "rosa".
# Cases: nominative, accusative, dative.
ARTICLES = {
    "nom": {"m": "ein", "f": "eine", "n": "ein"},
    "acc": {"m": "einen", "f": "eine", "n": "ein"},
    "dat": {"m": "einem", "f": "einer", "n": "einem"},
}
COLOURS = {
    "red": "rot",
    "orange": "orangefarben",
    "yellow": "gelb",
    "green": "grün",
    "blue": "blau",
    "purple": "violett",
    "pink": "rosa",
    "brown": "braun",
    "black": "schwarz",
    "white": "weiß",
}
DATIVE = {"heart": "Herzen"}
ENDINGS = {
    "nom": {"m": "er", "f": "e", "n": "es"},
    "acc": {"m": "en", "f": "e", "n": "es"},
    "dat": {"m": "en", "f": "en", "n": "en"},
}
INVARIABLE = frozenset({"rosa"})
POS = {"left": "links", "right": "rechts", "top": "oben", "bottom": "unten", "centre": "in der Mitte"}
SHAPES = {
    "circle": ("Kreis", "m"),
    "ellipse": ("Ellipse", "f"),
    "square": ("Quadrat", "n"),
    "triangle": ("Dreieck", "n"),
    "star": ("Stern", "m"),
    "hexagon": ("Sechseck", "n"),
    "cross": ("Kreuz", "n"),
    "ring": ("Ring", "m"),
    "heart": ("Herz", "n"),
}
SIZES = {"small": "klein", "large": "groß"}


def adjective(stem: str, case: str, gender: str) -> str:
    """German adjective after an indefinite article (mixed declension); invariable ones keep their form."""
    return stem if stem in INVARIABLE else stem + ENDINGS[case][gender]


def noun_phrase(t: Thing, case: str) -> str:
    """German: article and adjectives inflected for case and gender ("einen kleinen roten Kreis")."""
    noun, gender = SHAPES[t.shape]
    words = [ARTICLES[case][gender]]
    if t.size:
        words.append(adjective(SIZES[t.size], case, gender))
    noun = DATIVE.get(t.shape, noun) if case == "dat" else noun
    return " ".join([*words, adjective(COLOURS[t.colour], case, gender), noun])


LANGUAGE = Language(
    code="de",
    prob=0.85,
    noun_phrase=noun_phrase,
    positions=POS,
    located="{np} {pos}",
    join=" und ",
    shape_templates=(
        ("{np}", "{np}"),
        ("das Bild zeigt {acc}", "das Bild zeigt {acc}"),
        ("ein Foto mit {dat}", "ein Foto mit {dat}"),
        ("eine Zeichnung mit {dat}", "eine Zeichnung mit {dat}"),
        ("man sieht {acc}", "man sieht {acc}"),
        ("auf dem Bild ist {np}", "auf dem Bild sind {np}"),
    ),
    digit_words=("Null", "Eins", "Zwei", "Drei", "Vier", "Fünf", "Sechs", "Sieben", "Acht", "Neun"),
    digit_templates=(
        "die handgeschriebene Ziffer {w}",
        "die Ziffer {w}, von Hand geschrieben",
        "ein Foto der handgeschriebenen Ziffer {w}",
        "die handschriftliche Zahl {n}",
        "handgeschriebene Ziffer: {w}",
    ),
    shape_class_templates=("{c}", "auf dem Bild ist {c}", "zu sehen ist {c}", "Bild: {c}", "Foto: {c}"),
    digit_class_name="die Ziffer {w}",
    digit_class_templates=(
        "{c}",
        "ein Foto: {c}",
        "{c}, von Hand geschrieben",
        "hier sieht man {c}",
        "handschriftlich: {c}",
    ),
)
