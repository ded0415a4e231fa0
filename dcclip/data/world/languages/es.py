"""Spanish (es) for the toy world: words, grammar and templates."""

from __future__ import annotations

from dcclip.data.world.registry import Language, Thing

# Spanish: (noun, gender); adjectives (masculine, feminine), both after the noun: "una estrella roja pequeña".
COLOURS = {
    "red": ("rojo", "roja"),
    "orange": ("naranja", "naranja"),
    "yellow": ("amarillo", "amarilla"),
    "green": ("verde", "verde"),
    "blue": ("azul", "azul"),
    "purple": ("morado", "morada"),
    "pink": ("rosa", "rosa"),
    "brown": ("marrón", "marrón"),
    "black": ("negro", "negra"),
    "white": ("blanco", "blanca"),
}
POS = {"left": "a la izquierda", "right": "a la derecha", "top": "arriba", "bottom": "abajo", "centre": "en el centro"}
SHAPES = {
    "circle": ("círculo", "m"),
    "ellipse": ("elipse", "f"),
    "square": ("cuadrado", "m"),
    "triangle": ("triángulo", "m"),
    "star": ("estrella", "f"),
    "hexagon": ("hexágono", "m"),
    "cross": ("cruz", "f"),
    "ring": ("anillo", "m"),
    "heart": ("corazón", "m"),
}
SIZES = {"small": ("pequeño", "pequeña"), "large": ("grande", "grande")}


def noun_phrase(t: Thing, case: str) -> str:
    """Spanish: un/una + noun + colour + size, adjectives agreeing in gender."""
    noun, gender = SHAPES[t.shape]
    g = gender == "f"
    words = ["una" if g else "un", noun, COLOURS[t.colour][g]]
    if t.size:
        words.append(SIZES[t.size][g])
    return " ".join(words)


LANGUAGE = Language(
    code="es",
    prob=0.9,
    noun_phrase=noun_phrase,
    positions=POS,
    located="{np} {pos}",
    join=" y ",
    shape_templates=(
        ("{np}", "{np}"),
        ("una foto de {np}", "una foto de {np}"),
        ("una imagen con {np}", "una imagen con {np}"),
        ("un dibujo de {np}", "un dibujo de {np}"),
        ("en la imagen hay {np}", "en la imagen hay {np}"),
    ),
    digit_words=("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"),
    digit_templates=(
        "el dígito {w} escrito a mano",
        "un dígito {w} manuscrito",
        "una foto del dígito manuscrito {w}",
        "el número {n} escrito a mano",
        "dígito manuscrito: {w}",
    ),
    shape_class_templates=("{c}", "una foto de {c}", "una imagen con {c}", "en la imagen hay {c}", "un dibujo de {c}"),
    digit_class_name="el dígito {w}",
    digit_class_templates=(
        "{c}",
        "una foto: {c}",
        "{c}, escrito a mano",
        "una imagen que muestra {c}",
        "se ve {c} escrito a mano",
    ),
)
