"""Chinese (zh) for the toy world: words, grammar and templates."""

from __future__ import annotations

from dcclip.data.world.registry import Language, Thing

# Chinese: (noun, measure word): 颗 for stars and hearts, 个 otherwise; size is a prefix of the noun.
COLOURS = {
    "red": "红色",
    "orange": "橙色",
    "yellow": "黄色",
    "green": "绿色",
    "blue": "蓝色",
    "purple": "紫色",
    "pink": "粉色",
    "brown": "棕色",
    "black": "黑色",
    "white": "白色",
}
POS = {"left": "左边", "right": "右边", "top": "上方", "bottom": "下方", "centre": "中间"}
SHAPES = {
    "circle": ("圆形", "个"),
    "ellipse": ("椭圆形", "个"),
    "square": ("正方形", "个"),
    "triangle": ("三角形", "个"),
    "star": ("五角星", "颗"),
    "hexagon": ("六边形", "个"),
    "cross": ("十字形", "个"),
    "ring": ("圆环", "个"),
    "heart": ("爱心", "颗"),
}
SIZES = {"small": "小", "large": "大"}


def noun_phrase(t: Thing, case: str) -> str:
    """Chinese: 一 + measure word + colour 的 + size-prefixed noun ("一颗蓝色的大五角星")."""
    noun, measure = SHAPES[t.shape]
    size = SIZES[t.size] if t.size else ""
    return f"一{measure}{COLOURS[t.colour]}的{size}{noun}"


LANGUAGE = Language(
    code="zh",
    prob=0.95,
    noun_phrase=noun_phrase,
    positions=POS,
    located="{pos}有{np}",
    join="和",
    shape_templates=(
        ("{np}", "{np}"),
        ("图片中有{np}", "图片中有{np}"),
        ("一张图片，上面画着{np}", "一张图片，上面画着{np}"),
        ("这张图里有{np}", "这张图里有{np}"),
        ("画面上是{np}", "画面上是{np}"),
    ),
    digit_words=("零", "一", "二", "三", "四", "五", "六", "七", "八", "九"),
    digit_templates=(
        "手写数字{w}",
        "一个手写的数字{w}",
        "手写的数字{n}",
        "一张手写数字{w}的图片",
        "图片中是手写的数字{w}",
    ),
    shape_class_templates=("{c}", "图片中有{c}", "一张图片，上面画着{c}", "这张图里有{c}"),
    digit_class_name="数字{w}",
    digit_class_templates=("{c}", "手写的{c}", "一张{c}的图片", "图片中是{c}"),
    clause_templates=(
        ("{np}", "{np}"),
        ("图片中，{np}", "图片中，{np}"),
        ("画面上，{np}", "画面上，{np}"),
        ("在这张图里，{np}", "在这张图里，{np}"),
    ),
    clause_join="，",
)
