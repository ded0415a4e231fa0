"""Korean (ko) for the toy world: words, grammar and templates."""

from __future__ import annotations

import re

from dcclip.data.world.registry import Language, Thing

# Korean: attributive forms; particles are written "(이)가", "(과)와", "(을)를" and resolved by the final consonant.
COLOURS = {
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
POS = {"left": "왼쪽", "right": "오른쪽", "top": "위쪽", "bottom": "아래쪽", "centre": "가운데"}
SHAPES = {
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
SIZES = {"small": "작은", "large": "큰"}


def noun_phrase(t: Thing, case: str) -> str:
    """Korean: size + colour + noun, attributive forms, no article."""
    words = [SIZES[t.size]] if t.size else []
    return " ".join([*words, COLOURS[t.colour], SHAPES[t.shape]])


PARTICLE = re.compile(r"(.)\((이|과|을|은)\)(가|와|를|는)")


def resolve_particles(text: str) -> str:
    """Pick 이/가, 과/와, 을/를, 은/는 by whether the preceding Hangul syllable ends in a consonant."""

    def pick(match: re.Match) -> str:
        prev = match.group(1)
        code = ord(prev) - 0xAC00
        closed = 0 <= code < 11172 and code % 28 != 0
        return prev + (match.group(2) if closed else match.group(3))

    return PARTICLE.sub(pick, text)


LANGUAGE = Language(
    code="ko",
    prob=0.75,
    noun_phrase=noun_phrase,
    positions=POS,
    located="{pos}에 있는 {np}",
    join="(과)와 ",
    shape_templates=(
        ("{np}", "{np}"),
        ("{np}의 사진", "{np}의 사진"),
        ("{np}의 이미지", "{np}의 이미지"),
        ("{np}(이)가 보이는 사진", "{np}(이)가 보이는 사진"),
        ("{np} 하나가 그려진 그림", "{np}(이)가 그려진 그림"),
    ),
    digit_words=("영", "일", "이", "삼", "사", "오", "육", "칠", "팔", "구"),
    digit_templates=(
        "손으로 쓴 숫자 {w}",
        "손글씨 숫자 {n}",
        "손으로 쓴 숫자 {w}의 사진",
        "숫자 {w}(을)를 손으로 쓴 그림",
        "필기체 숫자 {w}",
    ),
    shape_class_templates=("{c}", "{c}의 사진", "{c}의 이미지", "{c} 하나가 그려진 그림"),
    digit_class_name="숫자 {w}",
    digit_class_templates=("{c}", "손으로 쓴 {c}", "{c}의 사진", "{c} 이미지"),
    finish=resolve_particles,
)
