"""Japanese (ja) for the toy world: words, grammar and templates."""

from __future__ import annotations

from dcclip.data.world.registry import Language, Thing

# Japanese: attributive forms (い-adjectives and noun+の); no articles; counters live in the templates (一つ).
COLOURS = {
    "red": "赤い",
    "orange": "オレンジ色の",
    "yellow": "黄色い",
    "green": "緑の",
    "blue": "青い",
    "purple": "紫の",
    "pink": "ピンクの",
    "brown": "茶色の",
    "black": "黒い",
    "white": "白い",
}
POS = {"left": "左", "right": "右", "top": "上", "bottom": "下", "centre": "中央"}
SHAPES = {
    "circle": "円",
    "ellipse": "楕円",
    "square": "正方形",
    "triangle": "三角形",
    "star": "星",
    "hexagon": "六角形",
    "cross": "十字",
    "ring": "リング",
    "heart": "ハート",
}
SIZES = {"small": "小さな", "large": "大きな"}


def noun_phrase(t: Thing, case: str) -> str:
    """Japanese: size + colour + noun, attributive forms, no article."""
    size = SIZES[t.size] if t.size else ""
    return f"{size}{COLOURS[t.colour]}{SHAPES[t.shape]}"


LANGUAGE = Language(
    code="ja",
    prob=0.85,
    noun_phrase=noun_phrase,
    positions=POS,
    located="{pos}の{np}",
    join="と",
    shape_templates=(
        ("{np}", "{np}"),
        ("{np}の画像", "{np}の画像"),
        ("{np}の写真", "{np}の写真"),
        ("{np}がある画像", "{np}がある画像"),
        ("{np}が一つ描かれた絵", "{np}が描かれた絵"),
    ),
    digit_words=("ゼロ", "一", "二", "三", "四", "五", "六", "七", "八", "九"),
    digit_templates=(
        "手書きの数字の{w}",
        "手書きの{n}",
        "手書き数字「{w}」の画像",
        "数字の{w}を手で書いたもの",
        "手で書かれた数字の{n}",
    ),
    shape_class_templates=("{c}", "{c}の画像", "{c}の写真", "{c}が一つ描かれた絵"),
    digit_class_name="数字の{w}",
    digit_class_templates=("{c}", "手書きの{c}", "{c}の画像", "{c}が書かれた紙"),
)
