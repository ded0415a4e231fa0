"""The built-in multilingual toy world: drawn shape scenes and scikit-learn's handwritten digits, captioned in ten
languages, written as training shards plus three eval sets in the clip_benchmark WebDataset layout.

It is the embedded default data for the tests and for ``dcclip demo``: an English-only teacher learns it, small
multilingual students are distilled from that teacher, and the eval sets score them per language. The caption tables
are the multilingual ground truth, so grammar (gender, case, agreement, word order, measure words, particles) is
spelled out per language instead of being glued together from English word order.

Everything is deterministic: each sample draws from its own numpy Generator seeded by (seed, stream, index), so the
same arguments give byte-identical files whatever the order of generation, and no file holds a time or a path.
"""

from __future__ import annotations

import colorsys
import functools
import io
import json
import math
import re
import string
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from dcclip.data.shards import ShardSetWriter, write_shard
from dcclip.io import write_json_atomic

WORLD_FORMAT = "dcclip-world"
WORLD_VERSION = 1

LANGS: tuple[str, ...] = ("en", "zh", "ja", "ko", "fr", "de", "es", "ru", "ar", "hi")
# How often a training sample carries each language, so the students see uneven language frequencies.
LANG_PROBS: dict[str, float] = {
    "en": 1.0,
    "zh": 0.95,
    "es": 0.9,
    "fr": 0.9,
    "de": 0.85,
    "ja": 0.85,
    "ru": 0.8,
    "ko": 0.75,
    "ar": 0.7,
    "hi": 0.6,
}
COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
SHAPES: tuple[str, ...] = ("circle", "ellipse", "square", "triangle", "star", "hexagon", "cross", "ring", "heart")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")
DIGIT_FRACTION = 0.25  # share of training samples that are sklearn's handwritten digits
JPEG_QUALITY = 90

# Palette centres; object colours are jittered around them but always stay nearest to their own name.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (210, 35, 40),
    "orange": (245, 135, 25),
    "yellow": (240, 215, 40),
    "green": (45, 160, 65),
    "blue": (35, 85, 215),
    "purple": (130, 55, 175),
    "pink": (240, 130, 185),
    "brown": (125, 80, 45),
    "black": (25, 25, 30),
    "white": (240, 240, 240),
}
_PALETTE_ARRAY = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)

# Random streams: (seed, stream, index) seeds one Generator, so samples never share draws across splits.
_TRAIN, _EVAL_SHAPES, _EVAL_DIGITS, _EVAL_RETRIEVAL, _PLAN = 1, 2, 3, 4, 5
_DIGIT_SPLIT_SEED = (20240601, 0, 0)  # fixed: the held-out digits are the same for every world seed
_DIGIT_TRAIN_FRACTION = 0.7

# ----------------------------------------------------------------------------------------------------------------
# Language tables: the ground truth. Genders: m, f, n. Adjective tuples follow the gender order given per language.
# ----------------------------------------------------------------------------------------------------------------

_EN_POS = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}

# French: (noun, gender); adjectives (masculine, feminine). Size adjectives go before the noun, colours after.
_FR_SHAPES = {
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
_FR_COLOURS = {
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
_FR_SIZES = {"small": ("petit", "petite"), "large": ("grand", "grande")}
_FR_POS = {"left": "à gauche", "right": "à droite", "top": "en haut", "bottom": "en bas", "centre": "au centre"}

# German: (noun, gender); adjective stems take mixed-declension endings after "ein" except the invariable "rosa".
# Cases: nominative, accusative, dative.
_DE_SHAPES = {
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
_DE_COLOURS = {
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
_DE_INVARIABLE = frozenset({"rosa"})
_DE_DATIVE = {"heart": "Herzen"}  # "mit einem roten Herzen": Herz keeps its old weak dative
_DE_SIZES = {"small": "klein", "large": "groß"}
_DE_ARTICLES = {
    "nom": {"m": "ein", "f": "eine", "n": "ein"},
    "acc": {"m": "einen", "f": "eine", "n": "ein"},
    "dat": {"m": "einem", "f": "einer", "n": "einem"},
}
_DE_ENDINGS = {
    "nom": {"m": "er", "f": "e", "n": "es"},
    "acc": {"m": "en", "f": "e", "n": "es"},
    "dat": {"m": "en", "f": "en", "n": "en"},
}
_DE_POS = {"left": "links", "right": "rechts", "top": "oben", "bottom": "unten", "centre": "in der Mitte"}

# Spanish: (noun, gender); adjectives (masculine, feminine), both after the noun: "una estrella roja pequeña".
_ES_SHAPES = {
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
_ES_COLOURS = {
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
_ES_SIZES = {"small": ("pequeño", "pequeña"), "large": ("grande", "grande")}
_ES_POS = {
    "left": "a la izquierda",
    "right": "a la derecha",
    "top": "arriba",
    "bottom": "abajo",
    "centre": "en el centro",
}

# Russian: (nominative, gender, accusative); adjectives (m, f, n, feminine accusative). Shapes are inanimate, so
# masculine and neuter accusatives equal the nominative.
_RU_SHAPES = {
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
_RU_COLOURS = {
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
_RU_SIZES = {
    "small": ("маленький", "маленькая", "маленькое", "маленькую"),
    "large": ("большой", "большая", "большое", "большую"),
}
_RU_POS = {"left": "слева", "right": "справа", "top": "сверху", "bottom": "снизу", "centre": "в центре"}

# Arabic: (noun, gender); adjectives (masculine, feminine) follow the noun: noun, colour, size.
_AR_SHAPES = {
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
_AR_COLOURS = {
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
_AR_SIZES = {"small": ("صغير", "صغيرة"), "large": ("كبير", "كبيرة")}
_AR_POS = {"left": "على اليسار", "right": "على اليمين", "top": "في الأعلى", "bottom": "في الأسفل", "centre": "في الوسط"}

# Hindi: (noun, gender); adjectives (masculine, feminine): -ā adjectives agree (नीला/नीली), the rest are invariable.
_HI_SHAPES = {
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
_HI_COLOURS = {
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
_HI_SIZES = {"small": ("छोटा", "छोटी"), "large": ("बड़ा", "बड़ी")}
_HI_POS = {"left": "बाईं ओर", "right": "दाईं ओर", "top": "ऊपर", "bottom": "नीचे", "centre": "बीच में"}

# Chinese: (noun, measure word): 颗 for stars and hearts, 个 otherwise; size is a prefix of the noun.
_ZH_SHAPES = {
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
_ZH_COLOURS = {
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
_ZH_SIZES = {"small": "小", "large": "大"}
_ZH_POS = {"left": "左边", "right": "右边", "top": "上方", "bottom": "下方", "centre": "中间"}

# Japanese: attributive forms (い-adjectives and noun+の); no articles; counters live in the templates (一つ).
_JA_SHAPES = {
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
_JA_COLOURS = {
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
_JA_SIZES = {"small": "小さな", "large": "大きな"}
_JA_POS = {"left": "左", "right": "右", "top": "上", "bottom": "下", "centre": "中央"}

# Korean: attributive forms; particles are written "(이)가", "(과)와", "(을)를" and resolved by the final consonant.
_KO_SHAPES = {
    "circle": "원",
    "ellipse": "타원",
    "square": "정사각형",
    "triangle": "삼각형",
    "star": "별",
    "hexagon": "육각형",
    "cross": "십자 모양",
    "ring": "고리",
    "heart": "하트",
}
_KO_COLOURS = {
    "red": "빨간",
    "orange": "주황색",
    "yellow": "노란",
    "green": "초록색",
    "blue": "파란",
    "purple": "보라색",
    "pink": "분홍색",
    "brown": "갈색",
    "black": "검은",
    "white": "하얀",
}
_KO_SIZES = {"small": "작은", "large": "큰"}
_KO_POS = {"left": "왼쪽", "right": "오른쪽", "top": "위쪽", "bottom": "아래쪽", "centre": "가운데"}

_POSITION_WORDS: dict[str, dict[str, str]] = {
    "en": _EN_POS,
    "fr": _FR_POS,
    "de": _DE_POS,
    "es": _ES_POS,
    "ru": _RU_POS,
    "ar": _AR_POS,
    "hi": _HI_POS,
    "zh": _ZH_POS,
    "ja": _JA_POS,
    "ko": _KO_POS,
}
# How a position attaches to its noun phrase: after it in most languages, before it in Hindi, as a modifier in
# Japanese and Korean, and as an existential clause ("左边有…") in Chinese.
_LOCATED: dict[str, str] = {
    "en": "{np} {pos}",
    "fr": "{np} {pos}",
    "de": "{np} {pos}",
    "es": "{np} {pos}",
    "ru": "{np} {pos}",
    "ar": "{np} {pos}",
    "hi": "{pos} {np}",
    "ja": "{pos}の{np}",
    "ko": "{pos}에 있는 {np}",
    "zh": "{pos}有{np}",
}
_JOIN: dict[str, str] = {
    "en": " and ",
    "fr": " et ",
    "de": " und ",
    "es": " y ",
    "ru": " и ",
    "ar": " و",
    "hi": " और ",
    "zh": "和",
    "ja": "と",
    "ko": "(과)와 ",
}
_ZH_CLAUSE_JOIN = "，"


def _same(*templates: str) -> tuple[tuple[str, str], ...]:
    """Templates that read the same for one object and for two (no verb agreeing in number)."""
    return tuple((t, t) for t in templates)


# Caption templates: (one object, two objects). Fields: {np} nominative, {acc} accusative, {dat} dative.
_SHAPE_TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    "en": _same("{np}", "a photo of {np}", "a drawing of {np}", "an image showing {np}", "a picture with {np}"),
    "fr": _same(
        "{np}",
        "une image avec {np}",
        "on voit {np}",
        "il y a {np} sur l'image",
        "l'image montre {np}",
        "un dessin représentant {np}",
    ),
    "de": (
        *_same("{np}", "das Bild zeigt {acc}", "ein Foto mit {dat}", "eine Zeichnung mit {dat}", "man sieht {acc}"),
        ("auf dem Bild ist {np}", "auf dem Bild sind {np}"),
    ),
    "es": _same("{np}", "una foto de {np}", "una imagen con {np}", "un dibujo de {np}", "en la imagen hay {np}"),
    "ru": _same(
        "{np}",
        "на картинке {np}",
        "на изображении {np}",
        "рисунок: {np}",
        "на фото можно увидеть {acc}",
        "здесь нарисовали {acc}",
    ),
    "ar": _same("{np}", "صورة فيها {np}", "في الصورة {np}", "صورة تحتوي على {np}", "رسم يحتوي على {np}"),
    "hi": (
        *_same("{np}", "चित्र: {np}"),
        ("तस्वीर में {np} है", "तस्वीर में {np} हैं"),
        ("इस चित्र में {np} है", "इस चित्र में {np} हैं"),
        ("एक चित्र जिसमें {np} है", "एक चित्र जिसमें {np} हैं"),
    ),
    "zh": _same("{np}", "图片中有{np}", "一张图片，上面画着{np}", "这张图里有{np}", "画面上是{np}"),
    "ja": (*_same("{np}", "{np}の画像", "{np}の写真", "{np}がある画像"), ("{np}が一つ描かれた絵", "{np}が描かれた絵")),
    "ko": (
        *_same("{np}", "{np}의 사진", "{np}의 이미지", "{np}(이)가 보이는 사진"),
        ("{np} 하나가 그려진 그림", "{np}(이)가 그려진 그림"),
    ),
}
# Chinese positions are clauses, not noun modifiers, so located scenes use their own frames.
_ZH_LOCATED_TEMPLATES = _same("{np}", "图片中，{np}", "画面上，{np}", "在这张图里，{np}")

_DIGIT_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "fr": ("zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"),
    "de": ("Null", "Eins", "Zwei", "Drei", "Vier", "Fünf", "Sechs", "Sieben", "Acht", "Neun"),
    "es": ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"),
    "ru": ("ноль", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять"),
    "ar": ("صفر", "واحد", "اثنان", "ثلاثة", "أربعة", "خمسة", "ستة", "سبعة", "ثمانية", "تسعة"),
    "hi": ("शून्य", "एक", "दो", "तीन", "चार", "पाँच", "छह", "सात", "आठ", "नौ"),
    "zh": ("零", "一", "二", "三", "四", "五", "六", "七", "八", "九"),
    "ja": ("ゼロ", "一", "二", "三", "四", "五", "六", "七", "八", "九"),
    "ko": ("영", "일", "이", "삼", "사", "오", "육", "칠", "팔", "구"),
}
# Digit captions: {w} is the number word, {n} the numeral.
_DIGIT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": (
        "a handwritten digit {w}",
        "a photo of the handwritten digit {w}",
        "the digit {w}, written by hand",
        "a handwritten number {n}",
        "a scan of a handwritten {w}",
    ),
    "fr": (
        "un chiffre {w} manuscrit",
        "le chiffre {w} écrit à la main",
        "une photo du chiffre manuscrit {w}",
        "le nombre {n} écrit à la main",
        "chiffre manuscrit : {w}",
    ),
    "de": (
        "die handgeschriebene Ziffer {w}",
        "die Ziffer {w}, von Hand geschrieben",
        "ein Foto der handgeschriebenen Ziffer {w}",
        "die handschriftliche Zahl {n}",
        "handgeschriebene Ziffer: {w}",
    ),
    "es": (
        "el dígito {w} escrito a mano",
        "un dígito {w} manuscrito",
        "una foto del dígito manuscrito {w}",
        "el número {n} escrito a mano",
        "dígito manuscrito: {w}",
    ),
    "ru": (
        "рукописная цифра {w}",
        "цифра {w}, написанная от руки",
        "фотография рукописной цифры {w}",
        "написанная от руки цифра {n}",
        "рукописная цифра: {w}",
    ),
    "ar": (
        "الرقم {w} مكتوب بخط اليد",
        "رقم {w} مكتوب باليد",
        "صورة الرقم {w} بخط اليد",
        "الرقم {n} بخط اليد",
        "رقم مكتوب بخط اليد: {w}",
    ),
    "hi": (
        "हाथ से लिखा अंक {w}",
        "हाथ से लिखा हुआ अंक {w}",
        "अंक {w}, हाथ से लिखा हुआ",
        "हस्तलिखित अंक {n}",
        "हाथ से लिखी संख्या {w}",
    ),
    "zh": ("手写数字{w}", "一个手写的数字{w}", "手写的数字{n}", "一张手写数字{w}的图片", "图片中是手写的数字{w}"),
    "ja": (
        "手書きの数字の{w}",
        "手書きの{n}",
        "手書き数字「{w}」の画像",
        "数字の{w}を手で書いたもの",
        "手で書かれた数字の{n}",
    ),
    "ko": (
        "손으로 쓴 숫자 {w}",
        "손글씨 숫자 {n}",
        "손으로 쓴 숫자 {w}의 사진",
        "숫자 {w}(을)를 손으로 쓴 그림",
        "필기체 숫자 {w}",
    ),
}

# Eval class names and zero-shot templates. Shape class names carry their own article/measure word where the
# language needs one, so every template works for every gender ("une image avec {c}", "一张图片，上面画着{c}").
_SHAPE_CLASS_TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": ("a photo of the {c}", "a drawing of the {c}", "the {c}", "an image showing the {c}", "{c}"),
    "fr": ("{c}", "une image avec {c}", "on voit {c}", "il y a {c} sur l'image", "l'image montre {c}"),
    "de": ("{c}", "auf dem Bild ist {c}", "zu sehen ist {c}", "Bild: {c}", "Foto: {c}"),
    "es": ("{c}", "una foto de {c}", "una imagen con {c}", "en la imagen hay {c}", "un dibujo de {c}"),
    "ru": ("{c}", "на картинке {c}", "на изображении {c}", "рисунок: {c}"),
    "ar": ("{c}", "صورة فيها {c}", "في الصورة {c}", "صورة تحتوي على {c}"),
    "hi": ("{c}", "चित्र: {c}", "तस्वीर में एक {c} है", "इस चित्र में एक {c} है"),
    "zh": ("{c}", "图片中有{c}", "一张图片，上面画着{c}", "这张图里有{c}"),
    "ja": ("{c}", "{c}の画像", "{c}の写真", "{c}が一つ描かれた絵"),
    "ko": ("{c}", "{c}의 사진", "{c}의 이미지", "{c} 하나가 그려진 그림"),
}
_DIGIT_CLASS_NAME: dict[str, str] = {
    "en": "the digit {w}",
    "fr": "le chiffre {w}",
    "de": "die Ziffer {w}",
    "es": "el dígito {w}",
    "ru": "цифра {w}",
    "ar": "الرقم {w}",
    "hi": "अंक {w}",
    "zh": "数字{w}",
    "ja": "数字の{w}",
    "ko": "숫자 {w}",
}
_DIGIT_CLASS_TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": ("{c}", "a photo of {c}", "{c}, written by hand", "a scan of {c} written by hand", "a blurry photo of {c}"),
    "fr": ("{c}", "une photo : {c}", "{c}, écrit à la main", "une image montrant {c}", "on voit {c} écrit à la main"),
    "de": ("{c}", "ein Foto: {c}", "{c}, von Hand geschrieben", "hier sieht man {c}", "handschriftlich: {c}"),
    "es": ("{c}", "una foto: {c}", "{c}, escrito a mano", "una imagen que muestra {c}", "se ve {c} escrito a mano"),
    "ru": ("{c}", "{c}, написанная от руки", "на картинке {c}", "изображение: {c}", "фото: {c}"),
    "ar": ("{c}", "صورة {c}", "{c} مكتوب بخط اليد", "في الصورة {c}"),
    "hi": ("{c}", "हाथ से लिखा {c}", "चित्र: {c}", "तस्वीर में {c} है"),
    "zh": ("{c}", "手写的{c}", "一张{c}的图片", "图片中是{c}"),
    "ja": ("{c}", "手書きの{c}", "{c}の画像", "{c}が書かれた紙"),
    "ko": ("{c}", "손으로 쓴 {c}", "{c}의 사진", "{c} 이미지"),
}

# ----------------------------------------------------------------------------------------------------------------
# Grammar: noun phrases, positions, coordination, templates
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thing:
    """What a caption says about one object: colour and shape always; size and position only when mentioned."""

    colour: str
    shape: str
    size: str | None = None  # "small" | "large" | None (not mentioned)
    pos: str | None = None  # one of POSITIONS | None (not mentioned)


def _np_en(t: Thing, case: str) -> str:
    """English: article chosen by the next sound ("an orange circle")."""
    words = [w for w in (t.size, t.colour, t.shape) if w]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def _np_fr(t: Thing, case: str) -> str:
    """French: un/une + size before the noun + colour after it, all agreeing in gender."""
    noun, gender = _FR_SHAPES[t.shape]
    g = gender == "f"
    words = ["une" if g else "un"]
    if t.size:
        words.append(_FR_SIZES[t.size][g])
    return " ".join([*words, noun, _FR_COLOURS[t.colour][g]])


def _de_adjective(stem: str, case: str, gender: str) -> str:
    """German adjective after an indefinite article (mixed declension); invariable ones keep their form."""
    return stem if stem in _DE_INVARIABLE else stem + _DE_ENDINGS[case][gender]


def _np_de(t: Thing, case: str) -> str:
    """German: article and adjectives inflected for case and gender ("einen kleinen roten Kreis")."""
    noun, gender = _DE_SHAPES[t.shape]
    words = [_DE_ARTICLES[case][gender]]
    if t.size:
        words.append(_de_adjective(_DE_SIZES[t.size], case, gender))
    noun = _DE_DATIVE.get(t.shape, noun) if case == "dat" else noun
    return " ".join([*words, _de_adjective(_DE_COLOURS[t.colour], case, gender), noun])


def _np_es(t: Thing, case: str) -> str:
    """Spanish: un/una + noun + colour + size, adjectives agreeing in gender."""
    noun, gender = _ES_SHAPES[t.shape]
    g = gender == "f"
    words = ["una" if g else "un", noun, _ES_COLOURS[t.colour][g]]
    if t.size:
        words.append(_ES_SIZES[t.size][g])
    return " ".join(words)


def _np_ru(t: Thing, case: str) -> str:
    """Russian: size + colour + noun, adjectives agreeing in gender and (feminine) accusative case."""
    nom, gender, acc = _RU_SHAPES[t.shape]
    slot = 3 if (gender == "f" and case == "acc") else "mfn".index(gender)
    words = [_RU_SIZES[t.size][slot]] if t.size else []
    return " ".join([*words, _RU_COLOURS[t.colour][slot], acc if case == "acc" else nom])


def _np_ar(t: Thing, case: str) -> str:
    """Arabic: noun, then colour, then size, adjectives agreeing with the noun's gender (indefinite)."""
    noun, gender = _AR_SHAPES[t.shape]
    g = gender == "f"
    words = [noun, _AR_COLOURS[t.colour][g]]
    if t.size:
        words.append(_AR_SIZES[t.size][g])
    return " ".join(words)


def _np_hi(t: Thing, case: str) -> str:
    """Hindi: एक + size + colour + noun; -ā adjectives take the feminine -ī with feminine nouns."""
    noun, gender = _HI_SHAPES[t.shape]
    g = gender == "f"
    words = ["एक"] + ([_HI_SIZES[t.size][g]] if t.size else [])
    return " ".join([*words, _HI_COLOURS[t.colour][g], noun])


def _np_zh(t: Thing, case: str) -> str:
    """Chinese: 一 + measure word + colour 的 + size-prefixed noun ("一颗蓝色的大五角星")."""
    noun, measure = _ZH_SHAPES[t.shape]
    size = _ZH_SIZES[t.size] if t.size else ""
    return f"一{measure}{_ZH_COLOURS[t.colour]}的{size}{noun}"


def _np_ja(t: Thing, case: str) -> str:
    """Japanese: size + colour + noun, attributive forms, no article."""
    size = _JA_SIZES[t.size] if t.size else ""
    return f"{size}{_JA_COLOURS[t.colour]}{_JA_SHAPES[t.shape]}"


def _np_ko(t: Thing, case: str) -> str:
    """Korean: size + colour + noun, attributive forms, no article."""
    words = [_KO_SIZES[t.size]] if t.size else []
    return " ".join([*words, _KO_COLOURS[t.colour], _KO_SHAPES[t.shape]])


_NOUN_PHRASE: dict[str, Callable[[Thing, str], str]] = {
    "en": _np_en,
    "fr": _np_fr,
    "de": _np_de,
    "es": _np_es,
    "ru": _np_ru,
    "ar": _np_ar,
    "hi": _np_hi,
    "zh": _np_zh,
    "ja": _np_ja,
    "ko": _np_ko,
}
_CASES = {"np": "nom", "acc": "acc", "dat": "dat"}
_KO_PARTICLE = re.compile(r"(.)\((이|과|을|은)\)(가|와|를|는)")


def _check_lang(lang: str) -> None:
    """Reject an unknown language code with the list of known ones."""
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {', '.join(LANGS)}; got {lang!r}")


def _check_thing(thing: Thing) -> None:
    """Reject a colour, shape, size or position the tables do not know, naming the field."""
    for name, value, known in (
        ("colour", thing.colour, COLOURS),
        ("shape", thing.shape, SHAPES),
        ("size", thing.size, (None, *SIZES)),
        ("pos", thing.pos, (None, *POSITIONS)),
    ):
        if value not in known:
            raise ValueError(f"unknown {name} {value!r}; expected one of {[k for k in known if k]}")


def noun_phrase(lang: str, thing: Thing, case: str = "nom") -> str:
    """One object as an indefinite noun phrase in ``lang`` and ``case`` (nom/acc/dat), without its position."""
    _check_lang(lang)
    _check_thing(thing)
    if case not in ("nom", "acc", "dat"):
        raise ValueError(f"case must be nom, acc or dat; got {case!r}")
    return _NOUN_PHRASE[lang](thing, case)


def _located(lang: str, thing: Thing, case: str) -> str:
    """The noun phrase with its position attached the way ``lang`` attaches it."""
    phrase = noun_phrase(lang, thing, case)
    if thing.pos is None:
        return phrase
    return _LOCATED[lang].format(np=phrase, pos=_POSITION_WORDS[lang][thing.pos])


def _resolve_ko_particles(text: str) -> str:
    """Pick 이/가, 과/와, 을/를, 은/는 by whether the preceding Hangul syllable ends in a consonant."""

    def pick(match: re.Match) -> str:
        prev = match.group(1)
        code = ord(prev) - 0xAC00
        closed = 0 <= code < 11172 and code % 28 != 0
        return prev + (match.group(2) if closed else match.group(3))

    return _KO_PARTICLE.sub(pick, text)


def _template_fields(template: str) -> list[str]:
    """The named fields a template uses, e.g. ["acc"]."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def describe_shapes(lang: str, things: Iterable[Thing], template: int = 0) -> str:
    """Caption a scene of one or two objects in ``lang`` with template number ``template`` (taken modulo the count)."""
    _check_lang(lang)
    things = list(things)
    if not 1 <= len(things) <= 2:
        raise ValueError(f"a scene has one or two objects; got {len(things)}")
    located = any(t.pos for t in things)
    clauses = lang == "zh" and located
    templates = _ZH_LOCATED_TEMPLATES if clauses else _SHAPE_TEMPLATES[lang]
    one, many = templates[template % len(templates)]
    text = one if len(things) == 1 else many
    join = _ZH_CLAUSE_JOIN if clauses else _JOIN[lang]
    fields = {f: join.join(_located(lang, t, _CASES[f]) for t in things) for f in _template_fields(text)}
    return _resolve_ko_particles(text.format(**fields))


def describe_digit(lang: str, digit: int, template: int = 0) -> str:
    """Caption a handwritten digit in ``lang`` with template number ``template`` (taken modulo the count)."""
    _check_lang(lang)
    if not 0 <= digit <= 9:
        raise ValueError(f"digit must be 0-9; got {digit}")
    templates = _DIGIT_TEMPLATES[lang]
    text = templates[template % len(templates)].format(w=_DIGIT_WORDS[lang][digit], n=digit)
    return _resolve_ko_particles(text)


def shape_class_name(lang: str, colour: str, shape: str) -> str:
    """Eval class name of a colour-shape pair, phrased so every zero-shot template of ``lang`` accepts it."""
    if lang == "en":
        return f"{colour} {shape}"
    phrase = noun_phrase(lang, Thing(colour, shape))
    return phrase.removeprefix("एक ") if lang == "hi" else phrase


def shape_classes() -> list[tuple[str, str]]:
    """Every (colour, shape) class of the shapes eval, in class-index order."""
    return [(c, s) for c in COLOURS for s in SHAPES]


def class_names(task: str) -> dict[str, list[str]]:
    """Class names per language for ``task`` ("shapes" or "digits"), in the same class order for every language."""
    if task == "shapes":
        return {lang: [shape_class_name(lang, c, s) for c, s in shape_classes()] for lang in LANGS}
    if task == "digits":
        return {lang: [_DIGIT_CLASS_NAME[lang].format(w=w) for w in _DIGIT_WORDS[lang]] for lang in LANGS}
    raise ValueError(f"task must be 'shapes' or 'digits'; got {task!r}")


def class_templates(task: str) -> dict[str, list[str]]:
    """Zero-shot templates per language for ``task``; each has one ``{c}``."""
    table = {"shapes": _SHAPE_CLASS_TEMPLATES, "digits": _DIGIT_CLASS_TEMPLATES}.get(task)
    if table is None:
        raise ValueError(f"task must be 'shapes' or 'digits'; got {task!r}")
    return {lang: list(table[lang]) for lang in LANGS}


def _pick_langs(rng: np.random.Generator) -> list[str]:
    """Languages a training sample carries: English always, the others with their own probability."""
    draws = rng.random(len(LANGS))
    return [lang for lang, u in zip(LANGS, draws, strict=True) if u < LANG_PROBS[lang]]


def _captions(rng: np.random.Generator, langs: list[str], describe: Callable[[str, int], str]) -> dict[str, str]:
    """Captions for ``langs``, each with its own randomly chosen template."""
    picks = rng.integers(0, 1 << 30, size=len(langs))
    return {lang: describe(lang, int(k)) for lang, k in zip(langs, picks, strict=True)}


# ----------------------------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------------------------

_SUPERSAMPLE = 2  # shapes are drawn at 2x and box-filtered down, for clean anti-aliased edges
_BACKGROUNDS = ("plain", "stripes", "dots", "checker", "gradient")
# Object radius as a fraction of the image side, per size category; "tiny" only appears in the hard eval set.
_RADIUS = {"tiny": (0.05, 0.08), "small": (0.08, 0.14), "medium": (0.16, 0.22), "large": (0.25, 0.34)}
_MARGIN = 0.02
_MIN_CONTRAST = 90.0  # RGB distance every background tone keeps from every object colour


def _polygon(points: int, radius_ratio: float = 1.0) -> np.ndarray:
    """Unit polygon with ``points`` corners (alternating with an inner radius for stars), first corner up."""
    n = points * (2 if radius_ratio != 1.0 else 1)
    angles = -math.pi / 2 + np.arange(n) * 2 * math.pi / n
    radii = np.where(np.arange(n) % 2 == 0, 1.0, radius_ratio) if radius_ratio != 1.0 else np.ones(n)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _heart() -> np.ndarray:
    """Unit heart outline from the classic parametric curve, point up at the bottom."""
    t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y + 2.5], axis=1)


def _plus(arm: float = 0.36) -> np.ndarray:
    """Unit plus sign with arms ``arm`` wide (half-width relative to the radius)."""
    a = arm
    return np.array(
        [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)],
        dtype=np.float64,
    )


def _unit(points: np.ndarray) -> np.ndarray:
    """Scale an outline so its farthest point is at radius 1: every shape then fits the circle it is placed in."""
    return points / np.linalg.norm(points, axis=1).max()


_UNIT_SHAPES: dict[str, np.ndarray] = {
    "square": _unit(_polygon(4)),
    "triangle": _unit(_polygon(3)),
    "star": _unit(_polygon(5, 0.45)),
    "hexagon": _unit(_polygon(6)),
    "cross": _unit(_plus()),
    "heart": _unit(_heart()),
}
_MAX_TILT = {"heart": 25.0}  # degrees; hearts stay roughly upright, the rest turn freely


@dataclass(frozen=True)
class Placed:
    """One drawn object: class, size category, where it sits (pixels) and how it is turned."""

    colour: str
    shape: str
    size: str
    pos: str | None
    cx: float
    cy: float
    r: float
    angle: float
    aspect: float = 1.0  # minor/major axis ratio, ellipses only


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The Generator of one sample: independent of generation order and of every other split."""
    return np.random.default_rng([seed, stream, index])


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) of a square image, cached per size."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return xx, yy


def _hsv_rgb(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] to an RGB float vector in [0, 255]."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), np.float32) * 255


def _contrast(tones: list[np.ndarray], avoid: list[np.ndarray]) -> float:
    """Smallest RGB distance between any background tone and any object colour."""
    if not avoid:
        return float("inf")
    return min(float(np.linalg.norm(t - a)) for t in tones for a in avoid)


def _background_tones(rng: np.random.Generator, avoid: list[np.ndarray], paper: bool) -> list[np.ndarray]:
    """Two related muted tones for the background, far enough from every object colour to keep objects visible."""
    best: list[np.ndarray] = []
    best_score = -1.0
    for _ in range(24):
        h = rng.random()
        s = rng.uniform(0.0, 0.12) if paper else rng.uniform(0.0, 0.35)
        v = rng.uniform(0.82, 0.98) if paper else rng.uniform(0.3, 0.95)
        dv = rng.uniform(0.06, 0.2) * (1 if rng.random() < 0.5 else -1)
        tones = [_hsv_rgb(h, s, v), _hsv_rgb(h + rng.normal(0, 0.04), s * rng.uniform(0.6, 1.4), v + dv)]
        score = _contrast(tones, avoid)
        if score >= _MIN_CONTRAST:
            return tones
        if score > best_score:
            best, best_score = tones, score
    return best


def _pattern(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """Mixing weights in [0, 1] between the two background tones for texture ``kind``."""
    xx, yy = _grid(size)
    theta = rng.uniform(0, math.pi)
    period = size * rng.uniform(0.06, 0.2)
    if kind == "stripes":
        u = (xx * math.cos(theta) + yy * math.sin(theta)) / period
        return ((u % 1.0) < rng.uniform(0.3, 0.6)).astype(np.float32)
    if kind == "dots":
        dx, dy = (xx % period) - period / 2, (yy % period) - period / 2
        return (dx * dx + dy * dy < (period * rng.uniform(0.15, 0.35)) ** 2).astype(np.float32)
    if kind == "checker":
        return ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    if kind == "gradient":
        u = xx * math.cos(theta * 2) + yy * math.sin(theta * 2)
        return ((u - u.min()) / max(float(u.max() - u.min()), 1e-6)).astype(np.float32)
    raise ValueError(f"unknown background texture {kind!r}")


def _background(
    rng: np.random.Generator, size: int, avoid: list[np.ndarray], paper: bool = False
) -> tuple[np.ndarray, str]:
    """A textured background as float RGB (size, size, 3) and the name of its texture."""
    textures = ("plain", "gradient") if paper else _BACKGROUNDS
    kind = textures[int(rng.integers(len(textures)))]
    c1, c2 = _background_tones(rng, avoid, paper)
    image = np.empty((size, size, 3), np.float32)
    image[:] = c1
    if kind != "plain":
        image += (c2 - c1) * _pattern(rng, kind, size)[..., None]
    return image, kind


def _nearest_colour(rgb: np.ndarray) -> str:
    """Palette name nearest to an RGB colour."""
    return COLOURS[int(np.argmin(((_PALETTE_ARRAY - rgb) ** 2).sum(axis=1)))]


def _object_rgb(rng: np.random.Generator, name: str, jitter: float) -> np.ndarray:
    """A jittered shade of palette colour ``name`` that is still nearest to ``name`` (so labels stay true)."""
    base = np.array(PALETTE[name], np.float32)
    for _ in range(8):
        rgb = np.clip((base + rng.uniform(-jitter, jitter, 3)) * rng.uniform(0.9, 1.06), 0, 255).astype(np.float32)
        if _nearest_colour(rgb) == name:
            return rgb
    return base


def _shape_points(obj: Placed, scale: float) -> list[tuple[float, float]]:
    """Polygon corners of a placed object, in pixels of a canvas ``scale`` times the image."""
    if obj.shape == "ellipse":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        unit = np.stack([np.cos(t), obj.aspect * np.sin(t)], axis=1)
    else:
        unit = _UNIT_SHAPES[obj.shape]
    a = math.radians(obj.angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = (unit @ rot.T) * obj.r + (obj.cx, obj.cy)
    return [(float(x) * scale, float(y) * scale) for x, y in pts]


def _shape_mask(obj: Placed, size: int) -> np.ndarray:
    """Anti-aliased coverage (size, size) in [0, 1] of one object."""
    s = _SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(canvas)
    if obj.shape in ("circle", "ring"):
        x, y, r = obj.cx * s, obj.cy * s, obj.r * s
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
        if obj.shape == "ring":
            inner = r * 0.55
            draw.ellipse((x - inner, y - inner, x + inner, y + inner), fill=0)
    else:
        draw.polygon(_shape_points(obj, s), fill=255)
    return np.asarray(canvas.reduce(s), dtype=np.float32) / 255.0


def _box(cx: float, cy: float, r: float, size: int) -> tuple[slice, slice]:
    """Rows and columns an object of radius ``r`` can touch: painting only there keeps generation fast."""
    lo_x, hi_x = max(0, int(cx - r) - 2), min(size, int(cx + r) + 3)
    lo_y, hi_y = max(0, int(cy - r) - 2), min(size, int(cy + r) + 3)
    return slice(lo_y, hi_y), slice(lo_x, hi_x)


def _paint(image: np.ndarray, mask: np.ndarray, rgb: np.ndarray, box: tuple[slice, slice]) -> None:
    """Blend a flat colour into ``image`` through ``mask`` inside ``box``, in place."""
    region, m = image[box], mask[box][..., None]
    region *= 1.0 - m
    region += rgb * m


def _draw_strokes(rng: np.random.Generator, image: Image.Image, count: int) -> None:
    """Clutter: thin lines and arcs in random palette shades, drawn over the scene."""
    draw = ImageDraw.Draw(image)
    size = image.size[0]
    width = max(1, round(size / 128))
    for _ in range(count):
        rgb = tuple(int(v) for v in _object_rgb(rng, COLOURS[int(rng.integers(len(COLOURS)))], 30))
        p = rng.uniform(0, size, 4)
        w = int(width * rng.integers(1, 3))
        if rng.random() < 0.5:
            draw.line([(p[0], p[1]), (p[2], p[3])], fill=rgb, width=w)
        else:
            box = (min(p[0], p[2]), min(p[1], p[3]), max(p[0], p[2]) + 4, max(p[1], p[3]) + 4)
            start = float(rng.uniform(0, 360))
            draw.arc(box, start, start + float(rng.uniform(40, 200)), fill=rgb, width=w)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Sensor-like noise of std ``sigma``: mostly Gaussian luminance plus a uniform per-channel part (cheap to draw)."""
    if sigma <= 0:
        return np.zeros(shape, np.float32)
    chroma = rng.random(shape, dtype=np.float32)
    chroma -= np.float32(0.5)
    chroma *= np.float32(0.6 * math.sqrt(12.0) * sigma)  # uniform with std 0.6 * sigma
    chroma += rng.standard_normal((*shape[:-1], 1), dtype=np.float32) * np.float32(0.8 * sigma)
    return chroma


def _finish(rng: np.random.Generator, image: np.ndarray, noise: float, strokes: int) -> bytes:
    """Clutter, pixel noise and JPEG encoding with fixed settings (same pixels, same bytes)."""
    pixels = image
    if strokes:
        pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")
        _draw_strokes(rng, pil, strokes)
        pixels = np.asarray(pil, dtype=np.float32)
    jitter = _noise(rng, pixels.shape, noise)
    jitter += pixels
    jitter += np.float32(0.5)  # round to nearest on the uint8 cast
    out = Image.fromarray(np.clip(jitter, 0, 255, out=jitter).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    return buf.getvalue()


def _render_shapes(
    rng: np.random.Generator, objects: list[Placed], size: int, jitter: float, noise: float, strokes: int
) -> tuple[bytes, str]:
    """Draw objects over a contrasting textured background; returns JPEG bytes and the texture name."""
    colours = [_object_rgb(rng, o.colour, jitter) for o in objects]
    image, texture = _background(rng, size, colours)
    for obj, rgb in zip(objects, colours, strict=True):
        _paint(image, _shape_mask(obj, size), rgb, _box(obj.cx, obj.cy, obj.r, size))
    return _finish(rng, image, noise, strokes), texture


# ----------------------------------------------------------------------------------------------------------------
# Scene layout
# ----------------------------------------------------------------------------------------------------------------


def _radius(rng: np.random.Generator, category: str, size: int) -> float:
    """Object radius in pixels for a size category."""
    lo, hi = _RADIUS[category]
    return max(float(rng.uniform(lo, hi)) * size, 3.0)  # at least 3 px, so tiny objects stay recognisable


def _pose(rng: np.random.Generator, shape: str) -> tuple[float, float]:
    """Rotation in degrees (limited for hearts) and aspect ratio (ellipses only)."""
    tilt = _MAX_TILT.get(shape)
    angle = float(rng.uniform(-tilt, tilt)) if tilt else float(rng.uniform(0, 360))
    aspect = float(rng.uniform(0.45, 0.65)) if shape == "ellipse" else 1.0
    return angle, aspect


def _span(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Uniform draw in [lo, hi], or the midpoint when the range is empty."""
    return float(rng.uniform(lo, hi)) if hi > lo else (lo + hi) / 2


def _single_centre(rng: np.random.Generator, pos: str | None, r: float, size: int) -> tuple[float, float]:
    """Centre of a lone object so that its position word (left, top, centre, ...) is plainly true."""
    lo, hi = r + _MARGIN * size, size - r - _MARGIN * size
    if pos is None:
        return _span(rng, lo, hi), _span(rng, lo, hi)
    if pos == "centre":
        return _span(rng, 0.44 * size, 0.56 * size), _span(rng, 0.44 * size, 0.56 * size)
    along = _span(rng, lo, max(lo, 0.3 * size))
    across = _span(rng, max(lo, 0.3 * size), min(hi, 0.7 * size))
    along = size - along if pos in ("right", "bottom") else along
    return (along, across) if pos in ("left", "right") else (across, along)


def _plan_single(
    rng: np.random.Generator, size: int, colour: str, shape: str, sizes: tuple[str, ...], placed: bool
) -> Placed:
    """One object of a given class; ``placed`` lets it take a captionable position when its size allows."""
    category = sizes[int(rng.integers(len(sizes)))]
    r = _radius(rng, category, size)
    pos = None
    if placed and rng.random() < 0.6:
        side_ok = r <= 0.22 * size
        pos = POSITIONS[int(rng.integers(5))] if side_ok else "centre"
    cx, cy = _single_centre(rng, pos, r, size)
    return Placed(colour, shape, category, pos, cx, cy, r, *_pose(rng, shape))


_PAIR_SIZES = (
    ("small", "small"),
    ("small", "medium"),
    ("medium", "small"),
    ("medium", "medium"),
    ("small", "large"),
    ("large", "small"),
)


def _plan_pair(
    rng: np.random.Generator, size: int, classes: list[tuple[str, str]], sizes: tuple[str, str], vertical: bool
) -> list[Placed]:
    """Two objects side by side (or one above the other), never overlapping; the first is left/top."""
    ra, rb = (_radius(rng, c, size) for c in sizes)
    gap, margin = 0.04 * size, _MARGIN * size
    deficit = 2 * (ra + rb) + gap + 2 * margin - size
    if deficit > 0:  # only a large partner can overflow; shrink it, it stays in the large range
        ra, rb = (ra - deficit / 2, rb) if ra > rb else (ra, rb - deficit / 2)
    slack = max(0.0, size - 2 * margin - gap - 2 * (ra + rb))
    before, between, _ = rng.dirichlet((1.0, 1.0, 1.0)) * slack
    along_a = margin + before + ra
    along_b = along_a + ra + gap + between + rb
    names = ("top", "bottom") if vertical else ("left", "right")
    objects = []
    for (colour, shape), category, r, along, pos in zip(
        classes, sizes, (ra, rb), (along_a, along_b), names, strict=True
    ):
        across = _span(rng, r + margin, size - r - margin)
        cx, cy = (across, along) if vertical else (along, across)
        objects.append(Placed(colour, shape, category, pos, cx, cy, r, *_pose(rng, shape)))
    return objects


def _random_class(rng: np.random.Generator) -> tuple[str, str]:
    """A uniformly drawn (colour, shape)."""
    return COLOURS[int(rng.integers(len(COLOURS)))], SHAPES[int(rng.integers(len(SHAPES)))]


def _things(objects: list[Placed], say_size: bool, say_pos: bool) -> list[Thing]:
    """What captions say: sizes only for small/large objects, positions only where the layout makes them true."""
    return [
        Thing(o.colour, o.shape, o.size if say_size and o.size in SIZES else None, o.pos if say_pos else None)
        for o in objects
    ]


def _object_meta(objects: list[Placed], size: int) -> list[dict[str, Any]]:
    """Labels of drawn objects for the sample metadata (coordinates as fractions of the image side)."""
    return [
        {
            "colour": o.colour,
            "shape": o.shape,
            "size": o.size,
            "pos": o.pos,
            "x": round(o.cx / size, 4),
            "y": round(o.cy / size, 4),
            "r": round(o.r / size, 4),
            "angle": round(o.angle, 2),
        }
        for o in objects
    ]


# ----------------------------------------------------------------------------------------------------------------
# Digits (scikit-learn's 1,797 real 8x8 handwritten digits)
# ----------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The sklearn digits (images 0-16, labels) and a fixed stratified 70/30 split of their indices."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - the train extra installs it
        raise ImportError("the toy world needs scikit-learn's digits: pip install 'dcclip[train]'") from exc
    data = load_digits()
    images, labels = data.images.astype(np.float32), data.target.astype(np.int64)
    rng = np.random.default_rng(list(_DIGIT_SPLIT_SEED))
    train, held = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        cut = round(len(idx) * _DIGIT_TRAIN_FRACTION)
        train.append(idx[:cut])
        held.append(idx[cut:])
    return images, labels, np.sort(np.concatenate(train)), np.concatenate(held)


def _digit_mask(rng: np.random.Generator, pixels: np.ndarray, size: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """An 8x8 digit upscaled with bicubic smoothing, sharpened into strokes, tilted and placed on the canvas."""
    side = int(size * rng.uniform(0.45, 0.85))
    small = Image.fromarray((pixels * (255.0 / 16.0)).astype(np.uint8), "L")
    big = small.resize((side, side), Image.BICUBIC).rotate(float(rng.uniform(-15, 15)), Image.BICUBIC)
    ink = np.clip((np.asarray(big, np.float32) / 255.0 - 0.15) / 0.55, 0.0, 1.0)
    mask = np.zeros((size, size), np.float32)
    x0, y0 = (int(rng.integers(0, size - side + 1)) for _ in range(2))
    box = (slice(y0, y0 + side), slice(x0, x0 + side))
    mask[box] = ink
    return mask, box


def _render_digit(
    rng: np.random.Generator, pixels: np.ndarray, size: int, noise: float, strokes: int
) -> tuple[bytes, dict[str, Any]]:
    """A digit in dark ink on paper, or in a palette colour on a textured background."""
    paper = rng.random() < 0.6
    if paper:
        ink = np.array((20, 25, 60) if rng.random() < 0.3 else (25, 25, 30), np.float32) + rng.uniform(0, 25, 3)
        ink_name = "dark"
    else:
        ink_name = COLOURS[int(rng.integers(len(COLOURS)))]
        ink = _object_rgb(rng, ink_name, 20)
    image, texture = _background(rng, size, [ink], paper=paper)
    mask, box = _digit_mask(rng, pixels, size)
    _paint(image, mask, ink.astype(np.float32), box)
    return _finish(rng, image, noise, strokes), {"ink": ink_name, "background": texture}


# ----------------------------------------------------------------------------------------------------------------
# Samples of each split
# ----------------------------------------------------------------------------------------------------------------


def _train_shapes(rng: np.random.Generator, size: int) -> tuple[bytes, dict[str, Any], list[Thing]]:
    """A training shape scene: one object (60%) or two; sizes and positions mentioned when true and drawn to be."""
    if rng.random() < 0.6:
        objects = [_plan_single(rng, size, *_random_class(rng), ("small", "medium", "large"), placed=True)]
        say_pos = True
    else:
        sizes = _PAIR_SIZES[int(rng.integers(len(_PAIR_SIZES)))]
        objects = _plan_pair(rng, size, [_random_class(rng), _random_class(rng)], sizes, rng.random() < 0.4)
        say_pos = rng.random() < 0.6
    say_size = rng.random() < 0.7
    things = _things(objects, say_size, say_pos)
    if rng.random() < 0.5:  # the order objects are named in is not the drawing order
        things = things[::-1]
    image, texture = _render_shapes(rng, objects, size, 20.0, float(rng.uniform(0, 8)), _maybe_strokes(rng, 0.2, 3))
    meta = {"kind": "shapes", "objects": _object_meta(objects, size), "background": texture}
    return image, meta, things


def _maybe_strokes(rng: np.random.Generator, p: float, most: int) -> int:
    """How many clutter strokes to draw: none with probability 1 - p, else 1..most."""
    return int(rng.integers(1, most + 1)) if rng.random() < p else 0


def _train_sample(seed: int, index: int, size: int) -> tuple[bytes, dict[str, Any]]:
    """One training sample: image bytes and its metadata, captions in a random subset of languages."""
    rng = _rng(seed, _TRAIN, index)
    langs = _pick_langs(rng)
    if rng.random() < DIGIT_FRACTION:
        images, labels, train_idx, _ = _digits()
        source = int(train_idx[int(rng.integers(len(train_idx)))])
        digit = int(labels[source])
        image, extra = _render_digit(rng, images[source], size, float(rng.uniform(0, 8)), _maybe_strokes(rng, 0.1, 2))
        meta = {"kind": "digits", "digit": digit, "sklearn_index": source, **extra}
        captions = _captions(rng, langs, lambda lang, k: describe_digit(lang, digit, k))
    else:
        image, meta, things = _train_shapes(rng, size)
        captions = _captions(rng, langs, lambda lang, k: describe_shapes(lang, things, k))
    return image, {"captions": captions, "source_lang": "en", **meta}


def _eval_shape_sample(seed: int, index: int, size: int, cls: int) -> bytes:
    """A hard single-object eval image of class ``cls``: often tiny, cluttered, noisy, strongly jittered colours."""
    rng = _rng(seed, _EVAL_SHAPES, index)
    colour, shape = shape_classes()[cls]
    obj = _plan_single(rng, size, colour, shape, ("tiny", "small", "small", "medium", "large"), placed=False)
    image, _ = _render_shapes(rng, [obj], size, 28.0, float(rng.uniform(4, 16)), _maybe_strokes(rng, 0.85, 6))
    return image


def _eval_digit_sample(seed: int, index: int, size: int, source: int) -> bytes:
    """A held-out sklearn digit rendered with eval-stream randomness."""
    rng = _rng(seed, _EVAL_DIGITS, index)
    images, _, _, _ = _digits()
    image, _ = _render_digit(rng, images[source], size, float(rng.uniform(2, 12)), _maybe_strokes(rng, 0.5, 3))
    return image


_RETRIEVAL_SIZES = (("small", "small"), ("small", "large"), ("large", "small"))


def _retrieval_plans(seed: int, count: int) -> np.ndarray:
    """Distinct scene descriptors (two classes, two sizes, layout) so every retrieval caption names one image."""
    n_classes = len(COLOURS) * len(SHAPES)
    space = n_classes * n_classes * len(_RETRIEVAL_SIZES) * 2
    if count > space:
        raise ValueError(f"eval_samples must be <= {space} for distinct retrieval captions; got {count}")
    return _rng(seed, _PLAN, 0).choice(space, size=count, replace=False)


def _retrieval_sample(seed: int, index: int, size: int, plan: int) -> tuple[bytes, dict[str, str]]:
    """A two-object retrieval image and its captions in all languages, sizes and positions always named."""
    rng = _rng(seed, _EVAL_RETRIEVAL, index)
    classes = shape_classes()
    plan, sizes = divmod(int(plan), len(_RETRIEVAL_SIZES))
    plan, vertical = divmod(plan, 2)
    first, second = divmod(plan, len(classes))
    pair = [classes[first], classes[second]]
    objects = _plan_pair(rng, size, pair, _RETRIEVAL_SIZES[sizes], bool(vertical))
    things = _things(objects, say_size=True, say_pos=True)
    if rng.random() < 0.5:
        things = things[::-1]
    image, _ = _render_shapes(rng, objects, size, 24.0, float(rng.uniform(2, 10)), _maybe_strokes(rng, 0.3, 2))
    return image, _captions(rng, list(LANGS), lambda lang, k: describe_shapes(lang, things, k))


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


def _progress(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar when asked for, otherwise a no-op stand-in with the same ``update``/``close``."""
    if enabled:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="img")

    class _Quiet:
        def update(self, n: int = 1) -> None:
            pass

        def close(self) -> None:
            pass

    return _Quiet()


def _key_width(count: int) -> int:
    """Zero-padding so keys sort in sample order."""
    return max(6, len(str(max(count - 1, 0))))


def _write_train(
    out: Path, count: int, seed: int, size: int, shard_size: int, progress: bool
) -> tuple[dict[str, Any], Counter]:
    """Training shards through the shared writer; returns the shard-set manifest and the count of each kind."""
    for stale in out.glob("shard-*.tar"):
        stale.unlink()  # a smaller rerun must not leave earlier shards beside the new manifest
    width, bar, kinds = _key_width(count), _progress(count, "world train", progress), Counter()
    with ShardSetWriter(out, max_count=shard_size) as writer:
        for index in range(count):
            image, meta = _train_sample(seed, index, size)
            writer.add(f"train_{index:0{width}d}", {"jpg": image}, meta)
            kinds[meta["kind"]] += 1
            bar.update()
    bar.close()
    return json.loads((out / "manifest.json").read_text(encoding="utf-8")), kinds


def _write_wds(split_dir: Path, samples: Iterator[dict[str, bytes]], count: int, shard_size: int) -> int:
    """clip_benchmark shards ``0.tar``, ``1.tar``, ... plus ``nshards.txt``; members sorted by name within a shard."""
    split_dir.mkdir(parents=True, exist_ok=True)
    for stale in split_dir.glob("*.tar"):
        stale.unlink()
    width, nshards = _key_width(count), math.ceil(count / shard_size)
    for shard in range(nshards):
        indices = range(shard * shard_size, min(count, (shard + 1) * shard_size))
        write_shard(split_dir / f"{shard}.tar", ((f"{index:0{width}d}", next(samples)) for index in indices))
    (split_dir / "nshards.txt").write_text(f"{nshards}\n", encoding="ascii")
    return nshards


def _write_text(path: Path, lines: list[str]) -> None:
    """A UTF-8 text file with one entry per line and a final newline."""
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def _write_json(path: Path, payload: Any) -> None:
    """Stable, human-readable JSON (UTF-8, not escaped, fixed key order from the payload)."""
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _write_classification(
    root: Path, task: str, samples: Iterator[dict[str, bytes]], count: int, shard_size: int
) -> dict[str, Any]:
    """A zero-shot classification set: shards, English classnames/templates, and both keyed by language."""
    root.mkdir(parents=True, exist_ok=True)
    names, templates = class_names(task), class_templates(task)
    nshards = _write_wds(root / "test", samples, count, shard_size)
    _write_text(root / "classnames.txt", names["en"])
    _write_text(root / "zeroshot_classification_templates.txt", templates["en"])
    _write_json(root / "classnames.json", names)
    _write_json(root / "templates.json", templates)
    return {"samples": count, "shards": nshards, "classes": len(names["en"])}


def _shape_eval_stream(seed: int, count: int, size: int, bar: Any) -> Iterator[dict[str, bytes]]:
    """Samples of the shapes eval: classes balanced (counts differ by at most one), order shuffled per seed."""
    n_classes = len(COLOURS) * len(SHAPES)
    order = _rng(seed, _PLAN, 1).permutation(n_classes)
    for index in range(count):
        cls = int(order[index % n_classes])
        yield {"jpg": _eval_shape_sample(seed, index, size, cls), "cls": str(cls).encode("ascii")}
        bar.update()


def _digit_eval_stream(seed: int, count: int, size: int, bar: Any) -> Iterator[dict[str, bytes]]:
    """Samples of the digits eval: held-out digits only, classes balanced, each class's digits used in turn."""
    _, labels, _, held = _digits()
    per_class = [held[labels[held] == d] for d in range(10)]
    order = _rng(seed, _PLAN, 2).permutation(10)
    for index in range(count):
        digit = int(order[index % 10])
        pool = per_class[digit]
        source = int(pool[(index // 10) % len(pool)])
        yield {"jpg": _eval_digit_sample(seed, index, size, source), "cls": str(digit).encode("ascii")}
        bar.update()


def _retrieval_stream(seed: int, count: int, size: int, bar: Any) -> Iterator[dict[str, bytes]]:
    """Samples of the retrieval eval: image, English caption (.txt) and all ten captions (.json)."""
    for index, plan in enumerate(_retrieval_plans(seed, count)):
        image, captions = _retrieval_sample(seed, index, size, int(plan))
        meta = json.dumps({"captions": captions}, ensure_ascii=False, sort_keys=True).encode("utf-8")
        yield {"jpg": image, "txt": captions["en"].encode("utf-8"), "json": meta}
        bar.update()


def _write_retrieval(root: Path, seed: int, count: int, size: int, shard_size: int, bar: Any) -> dict[str, Any]:
    """The retrieval set in clip_benchmark layout, marked by ``dataset_type.txt``."""
    root.mkdir(parents=True, exist_ok=True)
    nshards = _write_wds(root / "test", _retrieval_stream(seed, count, size, bar), count, shard_size)
    (root / "dataset_type.txt").write_text("retrieval\n", encoding="ascii")
    return {"samples": count, "shards": nshards, "languages": list(LANGS)}


def _write_evals(out: Path, seed: int, count: int, size: int, shard_size: int, progress: bool) -> dict[str, Any]:
    """The three eval sets under ``out``: shapes, digits, retrieval."""
    bar = _progress(3 * count, "world eval", progress)
    try:
        return {
            "shapes": _write_classification(
                out / "shapes", "shapes", _shape_eval_stream(seed, count, size, bar), count, shard_size
            ),
            "digits": _write_classification(
                out / "digits", "digits", _digit_eval_stream(seed, count, size, bar), count, shard_size
            ),
            "retrieval": _write_retrieval(out / "retrieval", seed, count, size, shard_size, bar),
        }
    finally:
        bar.close()


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """An integer argument within bounds, or ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {bound}; got {value}")
    return int(value)


def _summary(args: dict[str, int], manifest: dict[str, Any], kinds: Counter, evals: dict[str, Any]) -> dict[str, Any]:
    """The world description written to world.json: arguments, counts, languages, classes, relative paths."""
    digits = _digits()
    return {
        "format": WORLD_FORMAT,
        "version": WORLD_VERSION,
        **args,
        "languages": list(LANGS),
        "language_probs": dict(LANG_PROBS),
        "colours": list(COLOURS),
        "shapes": list(SHAPES),
        "classes": {"shapes": [f"{c} {s}" for c, s in shape_classes()], "digits": list(_DIGIT_WORDS["en"])},
        "counts": {
            "train": manifest["samples"],
            "train_shards": len(manifest["shards"]),
            "train_shapes": kinds["shapes"],
            "train_digits": kinds["digits"],
            "train_langs": manifest["langs"],
            "digit_pool": {"train": len(digits[2]), "held_out": len(digits[3])},
            **{f"eval_{name}": info["samples"] for name, info in evals.items()},
        },
        "eval": evals,
        "paths": {"train": "train", **{f"eval_{name}": f"eval/{name}" for name in evals}},
    }


def generate_world(
    out_dir: Path,
    train_samples: int,
    seed: int = 0,
    eval_samples: int = 500,
    image_size: int = 128,
    shard_size: int = 1000,
    progress: bool = False,
) -> dict:
    """Write the toy world (training shards + three eval sets) under ``out_dir``; returns its summary.

    Layout: ``train/`` (dcclip shards + manifest.json), ``eval/shapes/`` and ``eval/digits/`` (clip_benchmark
    classification: ``test/nshards.txt``, ``test/N.tar`` with ``KEY.jpg`` + ``KEY.cls``, ``classnames.txt``,
    ``zeroshot_classification_templates.txt``, plus ``classnames.json``/``templates.json`` keyed by language),
    ``eval/retrieval/`` (``dataset_type.txt`` = retrieval; ``KEY.jpg`` + ``KEY.txt`` + ``KEY.json``) and
    ``world.json``. world.json holds the summary with paths relative to ``out_dir`` and no timing, so the same
    arguments always give the same bytes; the returned dict adds absolute ``paths`` and the wall-clock ``seconds``.
    """
    args = {
        "seed": _check_int("seed", seed, 0),
        "train_samples": _check_int("train_samples", train_samples, 1),
        "eval_samples": _check_int("eval_samples", eval_samples, 1),
        "image_size": _check_int("image_size", image_size, 32, 1024),
        "shard_size": _check_int("shard_size", shard_size, 1),
    }
    _retrieval_plans(args["seed"], args["eval_samples"])  # reject a too-large eval set before writing anything
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest, kinds = _write_train(
        out / "train", args["train_samples"], args["seed"], args["image_size"], args["shard_size"], progress
    )
    evals = _write_evals(
        out / "eval", args["seed"], args["eval_samples"], args["image_size"], args["shard_size"], progress
    )
    summary = _summary(args, manifest, kinds, evals)
    write_json_atomic(out / "world.json", summary)
    paths = {name: str(out / rel) for name, rel in summary["paths"].items()}
    return {**summary, "paths": {"root": str(out), **paths}, "seconds": round(time.perf_counter() - start, 3)}
