"""``segearth serve``: a real server process on a free port with a tiny trained model, asked over its JSON API and
through the page in Debian's headless Chromium (selenium): a GeoTIFF with two questions gives two overlays in
distinct colours and a GeoJSON download that shapely reads back on the scene's ground; bad input is refused with
the CLI's one-line message, in the API and in the page, and the server goes on serving."""

from __future__ import annotations

import io
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from shapely.geometry import box, shape

from framework.cli.main import main
from tests.framework.infer.test_bundle import tiny_experiment, write_checkpoint
from tests.framework.infer.test_predictor import UTM, targets_checkpoint, write_geotiff

REPO = Path(__file__).resolve().parents[3]
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
QUESTIONS = ["Where could a seaplane land?", "Which areas are paved?"]
MAX_QUESTIONS = 4
ORIGIN, PIXEL = (300000.0, 2780000.0), 0.5  # write_geotiff's default transform


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve-model")
    _, cfg = tiny_experiment(folder)
    # an untrained head's probabilities sit near its prior (~0.12): a logit threshold of -2 makes partial masks
    cfg["eval"]["threshold"] = -2.0
    return write_checkpoint(cfg, folder / "tiny.ckpt")


def read_url(process: subprocess.Popen, log: Path, timeout: float) -> str:
    """The first line the server prints (its URL), or a failure showing its log."""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if selector.select(timeout) and (line := process.stdout.readline().strip()):
            return line
    process.kill()
    pytest.fail(f"segearth serve printed no URL within {timeout} s:\n{log.read_text()}")


def serving(model_path: Path, log: Path, *options: str) -> Iterator[str]:
    """A ``segearth serve`` process of ``model_path`` (its stderr in ``log``) while the generator runs: its URL."""
    command = [sys.executable, "-m", "framework.cli", "serve", "--model", str(model_path), "--port", "0",
               "--tile-size", "64", "--max-questions", str(MAX_QUESTIONS), "--max-upload-mb", "1", *options]
    with log.open("w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=log.parent,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
    url = read_url(process, log, timeout=120)
    assert url.startswith("http://127.0.0.1:") and url.endswith("/")
    yield url
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM, log.read_text()
    process.stdout.close()


@pytest.fixture(scope="module")
def server(model_path, synth_root, tmp_path_factory) -> Iterator[str]:
    yield from serving(model_path, tmp_path_factory.mktemp("serve-log") / "stderr.txt", "--examples", str(synth_root))


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def synth_pixels(synth_root: Path, size: tuple[int, int]) -> np.ndarray:
    """A synthetic aerial scene resized to (width, height): something to look at in the screenshot."""
    first = sorted((synth_root / "test" / "images").iterdir())[0]
    return np.asarray(Image.open(first).convert("RGB").resize(size, Image.BILINEAR))


def ask(url: str, questions: list[str], files: dict | None = None, data: dict | None = None) -> dict:
    """Submit a job, then poll its status until it finishes."""
    response = requests.post(f"{url}api/jobs", data={"questions": "\n".join(questions), **(data or {})},
                             files=files, timeout=30)
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 60
    while (status := requests.get(f"{url}api/jobs/{response.json()['id']}", timeout=10).json())["state"] in (
        "queued", "running"
    ):
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    return status


# ---------------------------------------------------------------------------------------------------- the API
def test_bad_input_gets_the_one_line_message_of_segearth_predict(server, model_path, tmp_path, monkeypatch, capsys):
    """Each refused request is a 400 with exactly the message ``segearth predict`` prints for the same input."""
    monkeypatch.chdir(tmp_path)
    Path("notes.png").write_text("not an image\n")
    Path("tiny.png").write_bytes(png_bytes(np.zeros((16, 16, 3), np.uint8)))
    Path("fine.png").write_bytes(png_bytes(np.zeros((64, 64, 3), np.uint8)))
    cases = {"notes.png": "notes.png: unreadable image", "tiny.png": "tiny.png: 16x16 pixels is too small",
             "fine.png": "empty question: "}
    for image, expected in cases.items():
        question = "  " if image == "fine.png" else QUESTIONS[0]
        assert main(["predict", "--model", str(model_path), "--image", image, "--question", question,
                     "--out", "out"]) == 2
        cli_message = capsys.readouterr().err.strip().removeprefix("segearth: error: ")
        assert cli_message.startswith(expected) and "\n" not in cli_message
        with open(image, "rb") as f:
            response = requests.post(f"{server}api/jobs", files={"image": (image, f)}, data={"questions": question},
                                     timeout=30)
        assert (response.status_code, response.json()) == (400, {"error": cli_message})


def test_bad_requests_are_refused_and_the_server_keeps_serving(server):
    fine = {"image": ("fine.png", png_bytes(np.zeros((64, 64, 3), np.uint8)))}
    cases = [
        ({"files": fine, "data": {"questions": "\n".join(["Where?"] * (MAX_QUESTIONS + 1))}}, 400,
         f"too many questions: {MAX_QUESTIONS + 1}; ask at most {MAX_QUESTIONS} per image"),
        ({"data": {"questions": QUESTIONS[0]}}, 400, "no image: upload a PNG, JPEG or GeoTIFF, or pick an example"),
        ({"data": {"questions": QUESTIONS[0], "example": "nowhere-0"}}, 404, "no example 'nowhere-0'"),
        ({"files": {"image": ("big.png", bytes(2**20 + 1))}, "data": {"questions": QUESTIONS[0]}}, 413,
         "big.png: larger than 1 MiB (segearth serve --max-upload-mb)"),
    ]
    for form, code, message in cases:
        response = requests.post(f"{server}api/jobs", timeout=30, **form)
        assert response.status_code == code and response.json()["error"].startswith(message), response.text
    assert requests.get(f"{server}api/jobs/0123456789abcdef", timeout=10).status_code == 404
    assert requests.get(f"{server}api/jobs/0123456789abcdef/files/x.png", timeout=10).status_code == 404
    status = ask(server, QUESTIONS[:1], files=fine)
    assert status["state"] == "done" and len(status["results"]) == 1


def test_a_large_scene_runs_in_tiles_with_progress_and_the_examples_answer(server, synth_root):
    """A 200 x 150 PNG at 64-px tiles with 16 px overlap is a 4 x 3 grid; each example asks its own questions."""
    pixels = synth_pixels(synth_root, (200, 150))
    status = ask(server, QUESTIONS, files={"image": ("wide.png", png_bytes(pixels))})
    assert status["progress"] == {"tiles": 12, "tiles_done": 12, "ahead": 0}
    assert [r["tiles"] for r in status["results"]] == [12, 12]
    assert all(r["area_m2"] is None and "mask_geotiff" not in r["files"] for r in status["results"])
    mask = Image.open(io.BytesIO(requests.get(server.rstrip("/") + status["results"][0]["files"]["mask"],
                                              timeout=10).content))
    assert mask.size == (200, 150)

    examples = requests.get(f"{server}api/info", timeout=10).json()["examples"]
    assert examples and all(e["dataset"] == synth_root.name and e["questions"] for e in examples)
    example = examples[0]
    status = ask(server, example["questions"], data={"example": example["id"]})
    assert status["state"] == "done" and [r["question"] for r in status["results"]] == example["questions"]


# ---------------------------------------------------------------------------------------------------- the page
@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[webdriver.Chrome]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's headless Chromium and its driver: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}", "--no-first-run", "--disable-extensions",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
        # nothing but this machine: every host name other than the loopback resolves to nothing
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # a path given: no driver download
    yield driver
    driver.quit()


def choose_file(driver: webdriver.Chrome, path: Path) -> None:
    field = driver.find_element(By.ID, "image-input")
    driver.execute_script("arguments[0].value = '';", field)
    field.send_keys(str(path))


def type_questions(driver: webdriver.Chrome, text: str) -> None:
    textarea = driver.find_element(By.ID, "questions")
    textarea.clear()
    textarea.send_keys(text)


def page_message(driver: webdriver.Chrome, containing: str) -> str:
    WebDriverWait(driver, 30, 0.05).until(lambda d: containing in d.find_element(By.ID, "message").text)
    return driver.find_element(By.ID, "message").text


def ask_in_page(driver: webdriver.Chrome, count: int) -> list:
    """Press Ask; the result cards of the new job once ``count`` of them are there with every picture decoded."""
    before = driver.find_element(By.ID, "results").get_attribute("data-job")
    driver.find_element(By.ID, "ask").click()
    script = ("const results = document.getElementById('results'); return results.dataset.job !== arguments[0] && "
              "results.querySelectorAll('.result-card').length === arguments[1] && "
              "[...document.querySelectorAll('#results img, #scene img')].every(i => i.complete && i.naturalWidth > 0)")
    WebDriverWait(driver, 60, 0.05).until(lambda d: d.execute_script(script, before, count))
    return driver.find_elements(By.CSS_SELECTOR, ".result-card")


def test_the_page_answers_two_questions_about_a_geotiff(server, browser, synth_root, tmp_path):
    scene = write_geotiff(tmp_path / "scene.tif", synth_pixels(synth_root, (192, 160)))
    browser.get(server)
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#example-select option")) > 1)
    choose_file(browser, scene)
    type_questions(browser, "\n".join(QUESTIONS))
    cards = ask_in_page(browser, 2)
    browser.save_screenshot(str(tmp_path / "serve.png"))

    assert [c.find_element(By.CSS_SELECTOR, ".question").text for c in cards] == QUESTIONS
    colours = [c.get_attribute("data-colour") for c in cards]
    assert len(set(colours)) == 2
    for card, colour in zip(cards, colours, strict=True):
        layer = Image.open(io.BytesIO(requests.get(card.find_element(By.CSS_SELECTOR, "img.layer").get_attribute(
            "src"), timeout=10).content))
        opaque = np.asarray(layer.convert("RGBA")).reshape(-1, 4)
        opaque = opaque[opaque[:, 3] == 255]
        assert len(opaque) and {"#%02x%02x%02x" % tuple(p[:3]) for p in opaque} == {colour}  # its own colour
        no_target = card.get_attribute("data-no-target") == "true"
        assert no_target == bool(card.find_elements(By.CSS_SELECTOR, ".no-target-badge"))
        assert "m²" in card.find_element(By.CSS_SELECTOR, ".numbers").text
        # a model without target queries: its targets are the answer's connected regions
        assert bool(card.find_elements(By.CSS_SELECTOR, ".targets-count")) != no_target
    assert "EPSG:32640" in browser.find_element(By.ID, "scene-caption").text
    assert "tiles" in browser.find_element(By.ID, "scene-caption").text  # 192 x 160 at 64-px tiles

    href = cards[0].find_element(By.CSS_SELECTOR, "a.download[data-kind=geojson]").get_attribute("href")
    geojson = requests.get(href, timeout=10)
    assert geojson.headers["content-type"].startswith("application/geo+json")
    collection = json.loads(geojson.content)
    job = requests.get(href.split("/files/")[0], timeout=10).json()
    assert collection["crs"]["properties"]["name"] == f"urn:ogc:def:crs:EPSG::{UTM.to_epsg()}"
    bounds = box(ORIGIN[0], ORIGIN[1] - 160 * PIXEL, ORIGIN[0] + 192 * PIXEL, ORIGIN[1])
    polygons = [shape(feature["geometry"]) for feature in collection["features"]]
    assert polygons and all(p.is_valid and bounds.buffer(1e-6).contains(p) for p in polygons)
    assert {f["properties"]["question"] for f in collection["features"]} == {QUESTIONS[0]}
    assert sum(p.area for p in polygons) == pytest.approx(job["results"][0]["area_m2"])  # in m²: a metric CRS

    # a text file named .png, then no question: the message in the page, and the server still answers
    notes = tmp_path / "notes.png"
    notes.write_text("not an image\n")
    choose_file(browser, notes)
    browser.find_element(By.ID, "ask").click()
    assert page_message(browser, "unreadable image").startswith("notes.png: unreadable image")
    choose_file(browser, scene)
    type_questions(browser, "   ")
    browser.find_element(By.ID, "ask").click()
    assert page_message(browser, "empty question").startswith("empty question: ask something about the image")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".result-card")) == 2  # the last answers stay
    assert requests.get(f"{server}api/info", timeout=10).status_code == 200

    # an example fills in its questions and is answered in the same page
    browser.find_elements(By.CSS_SELECTOR, "#example-select option")[1].click()
    assert browser.find_element(By.ID, "image-input").get_attribute("value") == ""
    asked = browser.find_element(By.ID, "questions").get_attribute("value").splitlines()
    assert asked and len(asked) <= MAX_QUESTIONS
    ask_in_page(browser, len(asked))
    assert browser.find_element(By.ID, "message").get_attribute("hidden") is not None
    assert "not georeferenced" in browser.find_element(By.ID, "scene-caption").text


@pytest.fixture(scope="module")
def targets_server(tmp_path_factory) -> Iterator[str]:
    """A server of a tiny model with target queries (``targets_checkpoint``)."""
    folder = tmp_path_factory.mktemp("serve-targets")
    path = targets_checkpoint(folder)
    yield from serving(path, folder / "stderr.txt")


def test_the_page_lists_each_answers_targets_with_their_scores_and_areas(targets_server, browser, synth_root,
                                                                         tmp_path):
    """A model with target queries: each card counts its targets and lists each one's score and area, as the
    job's results (and its targets PNG: pixel value i + 1 = the i-th listed) say; the targets files download."""
    scene = write_geotiff(tmp_path / "scene.tif", synth_pixels(synth_root, (64, 64)))
    browser.get(targets_server)
    choose_file(browser, scene)
    type_questions(browser, QUESTIONS[0])
    (card,) = ask_in_page(browser, 1)
    href = card.find_element(By.CSS_SELECTOR, "a.download[data-kind=targets_mask]").get_attribute("href")
    (result,) = requests.get(href.split("/files/")[0], timeout=10).json()["results"]
    targets = result["targets"]
    assert len(targets) >= 2
    assert card.find_element(By.CSS_SELECTOR, ".targets-count").text == f"{len(targets)} targets"
    items = [item.text for item in card.find_elements(By.CSS_SELECTOR, ".targets li")]
    assert len(items) == len(targets)
    for item, target in zip(items, targets, strict=True):
        score, area_px, area_m2 = re.fullmatch(r"score ([\d.]+) · ([\d,]+) px · ([\d,]+) m²", item).groups()
        assert float(score) == pytest.approx(target["score"], abs=0.005)
        assert int(area_px.replace(",", "")) == target["area_px"]
        assert float(area_m2.replace(",", "")) == pytest.approx(target["area_m2"], abs=0.5)
    ids = np.asarray(Image.open(io.BytesIO(requests.get(href, timeout=10).content))).astype(np.int64)
    assert np.bincount(ids.ravel(), minlength=len(targets) + 1)[1:].tolist() == [t["area_px"] for t in targets]
    geotiff = card.find_element(By.CSS_SELECTOR, "a.download[data-kind=targets_geotiff]").get_attribute("href")
    assert requests.get(geotiff, timeout=10).headers["content-type"] == "image/tiff"
