"""Arabic (ar) for the toy world: words, grammar and templates."""

from __future__ import annotations

from dcclip.data.world.registry import Language, Thing

# Arabic: (noun, gender); adjectives (masculine, feminine) follow the noun: noun, colour, size.
COLOURS = {
    "red": ("أحمر", "حمراء"),
    "orange": ("برتقالي", "برتقالية"),
    "yellow": ("أصفر", "صفراء"),
    "green": ("أخضر", "خضراء"),
    "blue": ("أزرق", "زرقاء"),
    "purple": ("بنفسجي", "بنفسجية"),
    "pink": ("وردي", "وردية"),
    "brown": ("بني", "بنية"),
    "black": ("أسود", "سوداء"),
    "white": ("أبيض", "بيضاء"),
}
POS = {"left": "على اليسار", "right": "على اليمين", "top": "في الأعلى", "bottom": "في الأسفل", "centre": "في الوسط"}
SHAPES = {
    "circle": ("دائرة", "f"),
    "ellipse": ("شكل بيضاوي", "m"),
    "square": ("مربع", "m"),
    "triangle": ("مثلث", "m"),
    "star": ("نجمة", "f"),
    "hexagon": ("شكل سداسي", "m"),
    "cross": ("صليب", "m"),
    "ring": ("حلقة", "f"),
    "heart": ("قلب", "m"),
}
SIZES = {"small": ("صغير", "صغيرة"), "large": ("كبير", "كبيرة")}


def noun_phrase(t: Thing, case: str) -> str:
    """Arabic: noun, then colour, then size, adjectives agreeing with the noun's gender (indefinite)."""
    noun, gender = SHAPES[t.shape]
    g = gender == "f"
    words = [noun, COLOURS[t.colour][g]]
    if t.size:
        words.append(SIZES[t.size][g])
    return " ".join(words)


LANGUAGE = Language(
    code="ar",
    prob=0.7,
    noun_phrase=noun_phrase,
    positions=POS,
    located="{np} {pos}",
    join=" و",
    shape_templates=(
        ("{np}", "{np}"),
        ("صورة فيها {np}", "صورة فيها {np}"),
        ("في الصورة {np}", "في الصورة {np}"),
        ("صورة تحتوي على {np}", "صورة تحتوي على {np}"),
        ("رسم يحتوي على {np}", "رسم يحتوي على {np}"),
    ),
    digit_words=("صفر", "واحد", "اثنان", "ثلاثة", "أربعة", "خمسة", "ستة", "سبعة", "ثمانية", "تسعة"),
    digit_templates=(
        "الرقم {w} مكتوب بخط اليد",
        "رقم {w} مكتوب باليد",
        "صورة الرقم {w} بخط اليد",
        "الرقم {n} بخط اليد",
        "رقم مكتوب بخط اليد: {w}",
    ),
    shape_class_templates=("{c}", "صورة فيها {c}", "في الصورة {c}", "صورة تحتوي على {c}"),
    digit_class_name="الرقم {w}",
    digit_class_templates=("{c}", "صورة {c}", "{c} مكتوب بخط اليد", "في الصورة {c}"),
)
