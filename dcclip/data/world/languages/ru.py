"""Russian (ru) for the toy world: words, grammar and templates."""

from __future__ import annotations

from dcclip.data.world.registry import Language, Thing

# Russian: (nominative, gender, accusative); adjectives (m, f, n, feminine accusative). Shapes are inanimate, so
# masculine and neuter accusatives equal the nominative.
COLOURS = {
    "red": ("красный", "красная", "красное", "красную"),
    "orange": ("оранжевый", "оранжевая", "оранжевое", "оранжевую"),
    "yellow": ("жёлтый", "жёлтая", "жёлтое", "жёлтую"),
    "green": ("зелёный", "зелёная", "зелёное", "зелёную"),
    "blue": ("синий", "синяя", "синее", "синюю"),
    "purple": ("фиолетовый", "фиолетовая", "фиолетовое", "фиолетовую"),
    "pink": ("розовый", "розовая", "розовое", "розовую"),
    "brown": ("коричневый", "коричневая", "коричневое", "коричневую"),
    "black": ("чёрный", "чёрная", "чёрное", "чёрную"),
    "white": ("белый", "белая", "белое", "белую"),
}
POS = {"left": "слева", "right": "справа", "top": "сверху", "bottom": "снизу", "centre": "в центре"}
SHAPES = {
    "circle": ("круг", "m", "круг"),
    "ellipse": ("эллипс", "m", "эллипс"),
    "square": ("квадрат", "m", "квадрат"),
    "triangle": ("треугольник", "m", "треугольник"),
    "star": ("звезда", "f", "звезду"),
    "hexagon": ("шестиугольник", "m", "шестиугольник"),
    "cross": ("крест", "m", "крест"),
    "ring": ("кольцо", "n", "кольцо"),
    "heart": ("сердце", "n", "сердце"),
}
SIZES = {
    "small": ("маленький", "маленькая", "маленькое", "маленькую"),
    "large": ("большой", "большая", "большое", "большую"),
}


def noun_phrase(t: Thing, case: str) -> str:
    """Russian: size + colour + noun, adjectives agreeing in gender and (feminine) accusative case."""
    nom, gender, acc = SHAPES[t.shape]
    slot = 3 if (gender == "f" and case == "acc") else "mfn".index(gender)
    words = [SIZES[t.size][slot]] if t.size else []
    return " ".join([*words, COLOURS[t.colour][slot], acc if case == "acc" else nom])


LANGUAGE = Language(
    code="ru",
    prob=0.8,
    noun_phrase=noun_phrase,
    positions=POS,
    located="{np} {pos}",
    join=" и ",
    shape_templates=(
        ("{np}", "{np}"),
        ("на картинке {np}", "на картинке {np}"),
        ("на изображении {np}", "на изображении {np}"),
        ("рисунок: {np}", "рисунок: {np}"),
        ("на фото можно увидеть {acc}", "на фото можно увидеть {acc}"),
        ("здесь нарисовали {acc}", "здесь нарисовали {acc}"),
    ),
    digit_words=("ноль", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять"),
    digit_templates=(
        "рукописная цифра {w}",
        "цифра {w}, написанная от руки",
        "фотография рукописной цифры {w}",
        "написанная от руки цифра {n}",
        "рукописная цифра: {w}",
    ),
    shape_class_templates=("{c}", "на картинке {c}", "на изображении {c}", "рисунок: {c}"),
    digit_class_name="цифра {w}",
    digit_class_templates=("{c}", "{c}, написанная от руки", "на картинке {c}", "изображение: {c}", "фото: {c}"),
)
