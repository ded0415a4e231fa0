"""French (fr) for the toy world: words, grammar and templates."""

from __future__ import annotations

from dcclip.data.world.registry import Language, Thing

# French: (noun, gender); adjectives (masculine, feminine). Size adjectives go before the noun, colours after.
COLOURS = {
    "red": ("rouge", "rouge"),
    "orange": ("orange", "orange"),
    "yellow": ("jaune", "jaune"),
    "green": ("vert", "verte"),
    "blue": ("bleu", "bleue"),
    "purple": ("violet", "violette"),
    "pink": ("rose", "rose"),
    "brown": ("marron", "marron"),
    "black": ("noir", "noire"),
    "white": ("blanc", "blanche"),
}
POS = {"left": "à gauche", "right": "à droite", "top": "en haut", "bottom": "en bas", "centre": "au centre"}
SHAPES = {
    "circle": ("cercle", "m"),
    "ellipse": ("ellipse", "f"),
    "square": ("carré", "m"),
    "triangle": ("triangle", "m"),
    "star": ("étoile", "f"),
    "hexagon": ("hexagone", "m"),
    "cross": ("croix", "f"),
    "ring": ("anneau", "m"),
    "heart": ("cœur", "m"),
}
SIZES = {"small": ("petit", "petite"), "large": ("grand", "grande")}


def noun_phrase(t: Thing, case: str) -> str:
    """French: un/une + size before the noun + colour after it, all agreeing in gender."""
    noun, gender = SHAPES[t.shape]
    g = gender == "f"
    words = ["une" if g else "un"]
    if t.size:
        words.append(SIZES[t.size][g])
    return " ".join([*words, noun, COLOURS[t.colour][g]])


LANGUAGE = Language(
    code="fr",
    prob=0.9,
    noun_phrase=noun_phrase,
    positions=POS,
    located="{np} {pos}",
    join=" et ",
    shape_templates=(
        ("{np}", "{np}"),
        ("une image avec {np}", "une image avec {np}"),
        ("on voit {np}", "on voit {np}"),
        ("il y a {np} sur l'image", "il y a {np} sur l'image"),
        ("l'image montre {np}", "l'image montre {np}"),
        ("un dessin représentant {np}", "un dessin représentant {np}"),
    ),
    digit_words=("zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"),
    digit_templates=(
        "un chiffre {w} manuscrit",
        "le chiffre {w} écrit à la main",
        "une photo du chiffre manuscrit {w}",
        "le nombre {n} écrit à la main",
        "chiffre manuscrit : {w}",
    ),
    shape_class_templates=("{c}", "une image avec {c}", "on voit {c}", "il y a {c} sur l'image", "l'image montre {c}"),
    digit_class_name="le chiffre {w}",
    digit_class_templates=(
        "{c}",
        "une photo : {c}",
        "{c}, écrit à la main",
        "une image montrant {c}",
        "on voit {c} écrit à la main",
    ),
)
