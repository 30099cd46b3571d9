"""The viewer page the daemon serves at `/`, in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium through /usr/bin/chromedriver so that nothing is
downloaded): choose the video, step with the keyboard, and check that the page shows the frame
it says it shows, the server's own."""

import base64
import io
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import requests

from conftest import H, ROOT, W

CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which("chromium") and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromium-driver are not installed: run `bash scripts/dev.sh setup`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="framesrv-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                 "--window-size=1000,800"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(20)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def shown_index(driver):
    return driver.find_element("id", "index").text


def wait_for(driver, condition, what, timeout=20, poll=0.5):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=poll).until(lambda d: condition(d), message=what)


def test_step_five_frames_and_the_page_shows_the_servers_frame_5(browser, daemon, reference):
    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    base = f"http://{daemon}"
    browser.get(base + "/")
    wait_for(browser, lambda d: "clip.mp4" in d.find_element("id", "video").text, "the video list")
    Select(browser.find_element("id", "video")).select_by_visible_text("clip.mp4")
    wait_for(browser, lambda d: shown_index(d) == "0", "frame 0 shown")
    assert browser.find_element("id", "count").text == "75"
    assert browser.find_element("id", "key").text == "keyframe"
    wait_for(browser, lambda d: d.execute_script(
        "const s = document.getElementById('storyboard'); return s && s.complete && s.naturalWidth > 0"),
        "the storyboard strip")

    body = browser.find_element("tag name", "body")
    for _ in range(5):
        body.send_keys(Keys.ARROW_RIGHT)
    wait_for(browser, lambda d: shown_index(d) == "5", "frame 5 shown after five steps")
    assert browser.find_element("id", "time").text == "0.200"
    assert browser.find_element("id", "key").text == "not a keyframe"
    assert browser.find_element("id", "slider").get_attribute("value") == "5"

    # The image on the page is, byte for byte, what the server sends for frame 5 at that URL ...
    img = browser.find_element("id", "frame")
    wait_for(browser, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img),
             "the image decoded")
    shown = base64.b64decode(browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0].src).then(r => r.blob()).then(b => {
          const reader = new FileReader();
          reader.onload = () => done(reader.result.split(',')[1]);
          reader.readAsDataURL(b);
        });""", img))
    url = img.get_attribute("data-url")
    assert img.get_attribute("data-index") == "5"
    served = requests.get(base + url)
    assert served.headers["x-frame-index"] == "5"
    assert shown == served.content
    # ... and that is frame 5 of ffmpeg's own decode (the nearest of all 75 frames).
    pixels = np.asarray(Image.open(io.BytesIO(shown)).convert("RGB"), dtype=np.int16)
    assert pixels.shape == (H, W, 3)
    errors = [np.abs(pixels - np.frombuffer(r, np.uint8).reshape(H, W, 3)).mean() for r in reference]
    assert int(np.argmin(errors)) == 5, errors[:10]

    # Shift+Right steps a second (by time): frame 30 at 25 fps; Left steps back one.
    body.send_keys(Keys.SHIFT, Keys.ARROW_RIGHT)
    wait_for(browser, lambda d: shown_index(d) == "30", "a second later")
    body.send_keys(Keys.ARROW_LEFT)
    wait_for(browser, lambda d: shown_index(d) == "29", "one frame back")

    out = ROOT / "target" / "test-output"
    out.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(out / "viewer.png"))
    print(f"viewer screenshot: {out / 'viewer.png'}")


def test_a_phone_video_is_shown_upright(browser, daemon, media):
    """A video with the `rotate` tag phones write is shown turned, as a player shows it."""
    import subprocess

    from selenium.webdriver.support.ui import Select

    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(media / "clip.mp4"), "-c", "copy",
                    "-metadata:s:v", "rotate=90", str(media / "held-upright.mp4")], check=True)
    browser.get(f"http://{daemon}/")
    wait_for(browser, lambda d: "held-upright.mp4" in d.find_element("id", "video").text, "the video list")
    Select(browser.find_element("id", "video")).select_by_visible_text("held-upright.mp4")
    img = browser.find_element("id", "frame")
    wait_for(browser, lambda d: "held-upright.mp4" in (img.get_attribute("data-url") or "") and d.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth", img), "the phone video's frame")
    size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
    assert size == [H, W], f"the {W}x{H} pictures are shown turned, not {size}"


def test_an_anamorphic_video_is_shown_in_the_shape_a_player_shows(browser, daemon, media):
    """Pixels stored 64:45 wide (DVD, broadcast) are shown stretched to the display aspect ratio,
    as players show them; square-pixel video keeps its own shape."""
    import subprocess

    from selenium.webdriver.support.ui import Select

    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(media / "clip.mp4"), "-vf", "setsar=64/45",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(media / "anamorphic.mp4")], check=True)
    browser.get(f"http://{daemon}/")
    wait_for(browser, lambda d: "anamorphic.mp4" in d.find_element("id", "video").text, "the video list")

    def shown_shape(name):
        Select(browser.find_element("id", "video")).select_by_visible_text(name)
        img = browser.find_element("id", "frame")
        wait_for(browser, lambda d: f"/{name}/" in (img.get_attribute("data-url") or "") and d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", img), f"{name}'s frame")
        size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
        assert size == [W, H], f"the frame is served as stored, not {size}"
        # The shape of the picture on screen: the element's box, or the part of it that
        # object-fit: contain fills.
        return browser.execute_script("""
            const img = arguments[0], r = img.getBoundingClientRect();
            if (getComputedStyle(img).objectFit === 'fill') return r.width / r.height;
            const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
            return (img.naturalWidth * s) / (img.naturalHeight * s);""", img)

    shape = shown_shape("anamorphic.mp4")
    assert abs(shape - W * 64 / 45 / H) < 0.02, f"shown {shape:.3f} wide per unit of height"
    # The storyboard strip's tiles likewise: one row of tiles, each shown 64:45 wider than stored.
    strip = browser.find_element("id", "strip")
    wait_for(browser, lambda d: d.execute_script(
        "const i = document.getElementById('storyboard'); return i && i.complete && i.naturalWidth", strip),
        "the storyboard")
    def stretch(d):
        return d.execute_script("""
            const i = document.getElementById('storyboard'), r = i.getBoundingClientRect();
            return (r.width / r.height) / (i.naturalWidth / i.naturalHeight);""")

    wait_for(browser, lambda d: abs(stretch(d) - 64 / 45) < 0.03, "storyboard tiles stretched 64:45", timeout=10)
    assert abs(shown_shape("clip.mp4") - W / H) < 0.02


def test_a_video_still_being_indexed_shows_how_far_and_then_opens(browser, tmp_path):
    """A raw .h264 is decoded whole the first time it is opened. The page asks for its info
    with `Prefer: wait=0.5` and `while_indexing`: it shows frame 0 and lets the user step through
    the frames counted so far while the indexing goes on, saying how far it got, and takes the
    whole video when the index is there. (Two minutes of 720p: a pass of a few seconds, watched
    closely, on any machine these tests run on.)"""
    from selenium.webdriver.common.keys import Keys

    from conftest import camera_folder, start_daemon

    proc, addr = start_daemon(camera_folder(tmp_path, "1280x720", 120), tmp_path / "state")
    try:
        browser.get(f"http://{addr}/?video=camera.h264")
        meta = lambda d: d.find_element("id", "meta").text
        counted = lambda d: re.fullmatch(r"indexing camera\.h264: (\d+) frames? counted so far", meta(d))
        # While it is indexed: frame 0 on the page, and, once more than one frame is counted, a
        # step to the next one.
        seen = []
        wait_for(browser, lambda d: seen.append(counted(d)) or (seen[-1] and int(seen[-1].group(1)) > 1
                                                                and shown_index(d) == "0"),
                 "frame 0 while the video is indexed", poll=0.05)
        assert int(seen[-1].group(1)) < 3600, seen[-1].group(0)
        assert int(browser.find_element("id", "count").text) < 3600
        browser.find_element("tag name", "body").send_keys(Keys.ARROW_RIGHT)
        wait_for(browser, lambda d: shown_index(d) == "1", "frame 1 while the video is indexed", poll=0.05)
        wait_for(browser, lambda d: "3600 frames" in meta(d), "the whole video", timeout=120)
        assert browser.find_element("id", "count").text == "3600"
        assert browser.find_element("id", "error").text == ""
    finally:
        proc.terminate()
        proc.wait(timeout=30)
