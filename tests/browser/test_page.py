"""The web page in a real headless Chromium against a real ``dcclip serve``: classify in Chinese and English, errors
shown as the server's message, limits enforced in the page, search in two languages, phone width, no console errors.

Every test saves a screenshot in its temporary directory only (the README's picture, docs/ui.png, is made from the
demo bundle by ``make screenshot``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DESKTOP, World, WorldImage
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from dcclip.data.world import shape_class_name, shape_classes

WAIT_SECONDS = 30
PHONE = (390, 844)
HTML_LABEL = '<img src="x" onerror="document.title=1">'  # must show as text and never become an element


# --------------------------------------------------------------------------------------------------------------------
# Helpers: drive the page as a user does
# --------------------------------------------------------------------------------------------------------------------


def set_viewport(driver, width: int, height: int) -> None:
    """An exact CSS viewport (a headless window has a minimum width and browser chrome of its own)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def open_page(driver, server, fragment: str = "", size: tuple[int, int] = DESKTOP) -> None:
    """Load the page afresh and wait until it has read /v1/info."""
    set_viewport(driver, *size)
    driver.get("about:blank")  # from the same URL, a fragment would only scroll, not load a fresh page
    driver.get(f"{server.url}/{fragment}")
    wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    driver.get_log("browser")  # start each test with an empty console


def wait(driver, condition, seconds: float = WAIT_SECONDS):
    return WebDriverWait(driver, seconds).until(condition)


def screenshot(driver, path: Path) -> Path:
    """Save the page as it looks now, the viewport grown to the whole page so nothing is cut off."""
    width = driver.execute_script("return window.innerWidth")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    set_viewport(driver, width, max(400, min(int(height), 2400)))
    driver.execute_script("window.scrollTo(0, 0); document.activeElement && document.activeElement.blur()")
    driver.execute_cdp_cmd("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": 0, "y": 0})  # no hover styles
    driver.save_screenshot(str(path))
    return path


def choose_images(driver, paths: list[Path]) -> None:
    """Pick files through the page's file input, as the file chooser would."""
    driver.find_element(By.ID, "images").send_keys("\n".join(str(path) for path in paths))


def classify(driver, labels: str, lang: str, top_k: int) -> None:
    """Type the labels, pick the language and top k, and press Classify."""
    driver.find_element(By.ID, "labels").send_keys(labels)
    Select(driver.find_element(By.ID, "lang")).select_by_value(lang)
    top = driver.find_element(By.ID, "top-k")
    top.clear()
    top.send_keys(str(top_k))
    driver.find_element(By.ID, "classify-button").click()


def shown_results(driver, count: int) -> list[list[str]]:
    """Wait for ``count`` result cards; the labels each shows, most likely first."""
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == count)
    return [
        [label.text for label in card.find_elements(By.CSS_SELECTOR, ".prediction .label")]
        for card in driver.find_elements(By.CSS_SELECTOR, "#results .result")
    ]


def shown_message(driver, element_id: str) -> str:
    """Wait for an alert box to appear; its text."""
    wait(driver, lambda d: d.find_element(By.ID, element_id).is_displayed())
    return driver.find_element(By.ID, element_id).text


def api_classify(api, paths: list[Path], labels: list[str], lang: str, top_k: int) -> list[list[str]]:
    """The same request to /v1/classify directly: the labels of each image, most likely first."""
    files = [("images", (path.name, path.read_bytes(), "image/jpeg")) for path in paths]
    data = {"labels": json.dumps(labels), "lang": lang, "top_k": str(top_k)}
    response = api.post("/v1/classify", files=files, data=data)
    assert response.status_code == 200, response.text
    return [[row["label"] for row in result["predictions"]] for result in response.json()["results"]]


def console_errors(driver) -> list[dict]:
    """Errors the page logged since the last call (CSP violations and failed scripts land here)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def single_object_images(world: World, count: int) -> list[WorldImage]:
    """``count`` images of one object each, of different classes."""
    picked: dict[tuple[str, str], WorldImage] = {}
    for image in world.images:
        if image.shape and (image.colour, image.shape) not in picked:
            picked[(image.colour, image.shape)] = image
    assert len(picked) >= count, f"the toy world has only {len(picked)} one-object classes"
    return list(picked.values())[:count]


def labels_for(images: list[WorldImage], lang: str, extra: int = 2) -> list[str]:
    """The images' own class names in ``lang`` plus a few other classes, so the labels are a real choice."""
    classes = [(image.colour, image.shape) for image in images]
    classes += [item for item in shape_classes() if item not in classes][:extra]
    return [shape_class_name(lang, colour, shape) for colour, shape in classes]


# --------------------------------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------------------------------


def test_classify_in_chinese_shows_the_bundle_answer(driver, server, api, world, tmp_path):
    images = single_object_images(world, 3)
    labels = labels_for(images, "zh")
    paths = [image.path for image in images]
    open_page(driver, server)
    choose_images(driver, paths)
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#thumbs img")) == 3)
    classify(driver, "，".join(labels[:2]) + "\n" + "、".join(labels[2:]), "zh", 5)  # CJK commas and a newline
    shown = shown_results(driver, 3)
    expected = api_classify(api, paths, labels, "zh", 5)
    assert shown == expected
    assert [row[0] for row in shown] == [row[0] for row in expected], "top label = the bundle's own answer"
    assert console_errors(driver) == [], "no CSP violation, no script error"
    screenshot(driver, tmp_path / "classify-zh.png")


def test_classify_in_english_and_labels_are_text_never_html(driver, server, api, world, tmp_path):
    images = single_object_images(world, 2)
    labels = [*labels_for(images, "en"), HTML_LABEL]
    paths = [image.path for image in images]
    open_page(driver, server)
    choose_images(driver, paths)
    classify(driver, ", ".join(labels[:-1]) + "\n" + HTML_LABEL, "en", len(labels))
    shown = shown_results(driver, 2)
    assert shown == api_classify(api, paths, labels, "en", len(labels))
    assert all(HTML_LABEL in row for row in shown), "the label is shown as typed"
    assert driver.execute_script("return document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert driver.title == "dcclip"
    assert console_errors(driver) == []
    screenshot(driver, tmp_path / "classify-en.png")


def test_a_bad_file_shows_the_server_message(driver, server, api, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is text, not a PNG")
    open_page(driver, server)
    choose_images(driver, [broken])
    classify(driver, "a cat, a dog", "en", 2)
    message = shown_message(driver, "classify-message")
    answer = api.post(
        "/v1/classify",
        files=[("images", (broken.name, broken.read_bytes(), "image/png"))],
        data={"labels": "a cat,a dog"},
    )
    assert answer.status_code == 415
    assert message == f"{answer.json()['error']['message']} (HTTP 415)"
    assert "broken.png" in message
    assert driver.find_elements(By.CSS_SELECTOR, "#results .result") == []
    screenshot(driver, tmp_path / "bad-file.png")


def test_the_page_enforces_the_server_limits_before_sending(driver, server, api, world, tmp_path):
    limits = api.get("/v1/info").json()["limits"]
    open_page(driver, server)
    driver.find_element(By.ID, "classify-button").click()
    assert shown_message(driver, "classify-message") == "Choose or drop at least one image."
    too_many = [world.images[i % len(world.images)].path for i in range(limits["max_images"] + 1)]
    choose_images(driver, too_many)
    expected = f"{len(too_many)} images: the server takes at most {limits['max_images']} per request; remove some."
    assert shown_message(driver, "classify-message") == expected
    classify(driver, "a cat", "en", 1)
    assert shown_message(driver, "classify-message") == expected
    driver.find_element(By.CSS_SELECTOR, "#thumbs .thumb-remove").click()  # back within the limit
    driver.find_element(By.ID, "labels").clear()
    driver.find_element(By.ID, "classify-button").click()
    assert shown_message(driver, "classify-message") == "Type at least one label, e.g. a cat, a dog."
    driver.find_element(By.ID, "labels").send_keys("a" * (limits["max_text_chars"] + 1))
    driver.find_element(By.ID, "classify-button").click()
    assert "the server takes at most" in shown_message(driver, "classify-message")
    assert driver.find_elements(By.CSS_SELECTOR, "#results .result") == [], "nothing was sent"
    screenshot(driver, tmp_path / "limits.png")


def test_nothing_overflows_at_phone_width(driver, server, world, tmp_path):
    images = single_object_images(world, 2)
    open_page(driver, server, size=PHONE)
    choose_images(driver, [image.path for image in images])
    labels = [*labels_for(images, "en"), "a label long enough to need truncating on a phone"]
    classify(driver, ", ".join(labels), "en", 4)
    shown_results(driver, 2)
    width, inner = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert inner == PHONE[0] and width <= inner
    screenshot(driver, tmp_path / "phone.png")
    driver.find_element(By.ID, "tab-search").click()
    assert driver.execute_script("return document.documentElement.scrollWidth") <= inner
    screenshot(driver, tmp_path / "phone-search.png")


# --------------------------------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "lang"), [("a red circle", "en"), ("一个红色的圆形", "zh")])
def test_the_search_tab_finds_images_in_two_languages(driver, server, api, text, lang, tmp_path):
    k = 6
    open_page(driver, server, "#search")
    assert driver.find_element(By.ID, "search-form").is_displayed()
    driver.find_element(By.ID, "query").send_keys(text)
    Select(driver.find_element(By.ID, "search-lang")).select_by_value(lang)
    field = driver.find_element(By.ID, "search-k")
    field.clear()
    field.send_keys(str(k))
    driver.find_element(By.ID, "search-button").click()
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#hits .hit")) == k)
    expected = api.post("/v1/search", json={"text": text, "lang": lang, "k": k}).json()["hits"]
    shown = [key.text for key in driver.find_elements(By.CSS_SELECTOR, "#hits .hit .hit-key")]
    assert shown == [hit["key"] for hit in expected]
    loaded = "return [...document.querySelectorAll('#hits img')].every(img => img.complete && img.naturalWidth > 0)"
    wait(driver, lambda d: d.execute_script(loaded))
    assert console_errors(driver) == []
    screenshot(driver, tmp_path / f"search-{lang}.png")
