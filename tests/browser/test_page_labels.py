"""The page's labels in a real Chromium: split by the same rule as the CLI and the API, isolated when right-to-left,
drawn with real glyphs in every built-in script (not .notdef boxes); the search tab's language and an empty search;
/docs with no internet.
"""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from test_page import choose_images, classify, console_errors, open_page, shown_message, wait

from dcclip.runtime.labels import split_labels

LABEL_CASES = [
    "a red circle, a blue square",
    "红色的圆形，红色的六边形，蓝色的正方形",
    "赤い円、青い四角\n緑の星",
    "نجمة صفراء، دائرة حمراء",
    " a ,, b \r\n c ,",
    "一个圆,\n\n，、، 两个",
    "",
]
# One word per script of the built-in languages; each must be drawn with real glyphs where labels are shown.
SCRIPTS = {
    "Latin": "circle",
    "Cyrillic": "круг",
    "Arabic": "دائرة",
    "Devanagari": "वृत्त",
    "Han": "圆形",
    "Kana": "まる",
    "Hangul": "원형",
}
# Draw a string in the label area's font; the pixels of a glyph-less string are the .notdef boxes of that font stack.
GLYPHS_SCRIPT = """
const [text, font] = arguments;
const canvas = document.createElement("canvas");
canvas.width = 64; canvas.height = 64;
const ctx = canvas.getContext("2d", { willReadFrequently: true });
const draw = (s) => {
  ctx.clearRect(0, 0, 64, 64); ctx.font = font; ctx.fillStyle = "#000"; ctx.textBaseline = "top";
  ctx.fillText(s, 4, 4);
  return Array.from(ctx.getImageData(0, 0, 64, 64).data).join(",");
};
const notdef = draw(String.fromCodePoint(0x10fffd));  // a private-use code point no font draws
return [...text].filter((c) => c.trim()).map((c) => draw(c) === notdef);
"""


def test_the_page_splits_labels_like_the_cli_and_the_api(driver, server):
    open_page(driver, server)
    for text in LABEL_CASES:
        assert driver.execute_script("return parseLabels(arguments[0])", text) == split_labels(text), text


def test_right_to_left_labels_are_isolated_in_the_results(driver, server, world):
    open_page(driver, server)
    choose_images(driver, [world.images[0].path])
    classify(driver, "نجمة صفراء، دائرة حمراء", "en", 2)
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result .prediction")) == 2)
    top = driver.find_element(By.CSS_SELECTOR, "#results .result-top")
    assert top.find_element(By.TAG_NAME, "bdi").text in {"نجمة صفراء", "دائرة حمراء"}
    labels = driver.find_elements(By.CSS_SELECTOR, "#results .prediction .label")
    assert {label.tag_name for label in labels} == {"bdi"} and {label.get_attribute("dir") for label in labels} == {
        "auto"
    }
    assert console_errors(driver) == []


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_built_in_script_is_drawn_not_tofu(driver, server, script):
    """Fails on a machine without a font for the script (Makefile browser-tools installs them)."""
    open_page(driver, server)
    font = driver.execute_script("const s = getComputedStyle(document.getElementById('labels')); return s.font")
    tofu = driver.execute_script(GLYPHS_SCRIPT, SCRIPTS[script], font)
    assert tofu and not any(tofu), f"{script} ({SCRIPTS[script]}) is drawn as .notdef boxes in {font!r}: install a font"


def test_an_empty_search_clears_the_previous_hits(driver, server):
    open_page(driver, server, "#search")
    driver.find_element(By.ID, "query").send_keys("a red circle")
    driver.find_element(By.ID, "search-button").click()
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#hits .hit")) > 0)
    driver.find_element(By.ID, "query").clear()
    driver.find_element(By.ID, "search-button").click()
    assert "Type what to look for" in shown_message(driver, "search-message")
    assert driver.find_elements(By.CSS_SELECTOR, "#hits .hit") == []
    assert driver.find_element(By.ID, "search-summary").text == ""


def test_the_search_language_picks_its_templates_when_asked(driver, server, api):
    open_page(driver, server, "#search")
    driver.find_element(By.ID, "query").send_keys("一个红色的圆形")
    driver.find_element(By.CSS_SELECTOR, "#search-lang option[value='zh']").click()
    driver.find_element(By.ID, "search-lang-templates").click()
    driver.find_element(By.ID, "search-button").click()
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#hits .hit")) > 0)
    shown = [key.text for key in driver.find_elements(By.CSS_SELECTOR, "#hits .hit .hit-key")]
    body = {"text": "一个红色的圆形", "lang": "zh", "k": len(shown), "templates": ["default"]}
    assert shown == [hit["key"] for hit in api.post("/v1/search", json=body).json()["hits"]]


def test_the_api_docs_render_with_no_internet(driver, server):
    driver.get(f"{server.url}/docs")
    wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    titles = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "#endpoints h2")]
    assert "POST /v1/classify" in titles and "POST /v1/search" in titles
    assert console_errors(driver) == []
