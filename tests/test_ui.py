"""The chat page in a real headless browser (Debian's chromium driven by selenium, as .ci/run installs it): type a
message, watch the reply stream in, stop a reply, start a new chat, and take a screenshot; a reply's calculator
call shown in a box of its own, and sent back so that the model sees the call it made."""
import contextlib
import os
import shutil

import httpx
import pytest

from nash import server
from nash.engine import Sampling
from nash.tokenizer import get_tokenizer, render_conversation
from test_server import CALLED, calculator_engine, expected, free_port, long_chat_ckpt, serving  # noqa: F401

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromium-driver (.ci/run installs "
                                "them: apt-get install chromium chromium-driver)")


@contextlib.contextmanager
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--window-size=420,800", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)  # a phone-sized window: the page must read well there
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)  # no driver download
    try:
        yield driver
    finally:
        driver.quit()


def test_chat_page_streams_a_reply_stops_and_starts_over(long_chat_ckpt, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    with serving(f"--init_from={long_chat_ckpt}") as url, browser(tmp_path) as driver:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 120, poll_frequency=0.05)
        wait.until(lambda d: "long" in d.find_element(By.ID, "title").text)  # the page asked /v1/models
        driver.execute_script("document.getElementById('temperature').value = '0';"
                              "document.getElementById('max_tokens').value = '40';")
        box = driver.find_element(By.ID, "input")
        box.send_keys("Who are you?", Keys.ENTER)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.user"))
        assert driver.find_element(By.CSS_SELECTOR, ".msg.user").text == "Who are you?"
        wait.until(lambda d: d.find_element(By.ID, "send").is_displayed())  # the reply is done
        reply = driver.find_element(By.CSS_SELECTOR, ".msg.assistant")
        want = expected((long_chat_ckpt, long_chat_ckpt), [{"role": "user", "content": "Who are you?"}], 40)[0]
        assert reply.text == want.strip() and "streaming" not in reply.get_attribute("class")
        assert "token limit" in driver.find_element(By.CSS_SELECTOR, ".note").text
        driver.save_screenshot(str(tmp_path / "chat.png"))
        if os.environ.get("CHAT_SCREENSHOT"):  # for a person to look at
            driver.save_screenshot(os.environ["CHAT_SCREENSHOT"])
        assert (tmp_path / "chat.png").stat().st_size > 1000

        # a long reply, stopped from the page: the server stops generating too
        driver.execute_script("document.getElementById('max_tokens').value = '1000';")
        # Press Stop from inside the page the moment the reply's first text shows: on an idle machine this tiny
        # model streams 1000 tokens in about a second, faster than a selenium round trip, so a click from here
        # could find the reply already finished and the button hidden again.
        driver.execute_script("""
            window.stoppedWhileStreaming = false;
            new MutationObserver((records, observer) => {
                const reply = document.querySelectorAll('.msg.assistant')[1];
                if (reply && reply.textContent && reply.classList.contains('streaming')) {
                    window.stoppedWhileStreaming = true;
                    document.getElementById('stop').click();
                    observer.disconnect();
                }
            }).observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});
        """)
        box.send_keys("Go on", Keys.ENTER)
        wait.until(lambda d: "(stopped)" in d.find_element(By.ID, "log").text)
        assert driver.execute_script("return window.stoppedWhileStreaming"), "the reply was visible while it streamed"
        for _ in range(100):
            health = httpx.get(url + "/health", timeout=30).json()
            if not health["busy"]:
                break
        assert health["cancelled"] == 1 and health["tokens_generated"] < 40 + 1000

        driver.find_element(By.ID, "new").click()
        assert driver.find_elements(By.CSS_SELECTOR, ".msg") == []


def test_chat_page_asks_for_the_api_key_and_sends_it(long_chat_ckpt, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    with serving(f"--init_from={long_chat_ckpt}", "--api_key=s3cret") as url, browser(tmp_path) as driver:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 120, poll_frequency=0.05)
        wait.until(lambda d: "needs an API key" in d.find_element(By.ID, "log").text)  # /v1/models said 401
        key = driver.find_element(By.ID, "api_key")
        assert key.is_displayed()  # Settings opened by itself
        key.send_keys("s3cret", Keys.TAB)  # (change event: saved, the model asked for again)
        wait.until(lambda d: "long" in d.find_element(By.ID, "title").text)
        driver.execute_script("document.getElementById('temperature').value = '0';"
                              "document.getElementById('max_tokens').value = '10';")
        driver.find_element(By.ID, "input").send_keys("Who are you?", Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "send").is_displayed() and d.find_elements(By.CSS_SELECTOR,
                                                                                               ".msg.assistant"))
        want = expected((long_chat_ckpt, long_chat_ckpt), [{"role": "user", "content": "Who are you?"}], 10)[0]
        assert driver.find_element(By.CSS_SELECTOR, ".msg.assistant").text == want.strip()
        assert not driver.find_elements(By.CSS_SELECTOR, ".error")
        driver.refresh()  # the key is kept in the browser
        wait.until(lambda d: "long" in d.find_element(By.ID, "title").text)


@contextlib.contextmanager
def serving_engine(engine):
    """The server on engine, in this process (uvicorn in a thread, on a loopback port with its Host checks), so a
    test can look at the engine; yields the base URL."""
    import threading
    import time
    import uvicorn
    port = free_port()
    app = server.create_app(engine, "steered", Sampling(temperature=0.0, top_k=None), "127.0.0.1", port)
    web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if web.started:
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        web.should_exit = True
        thread.join(timeout=30)


def test_chat_page_shows_a_calculator_call_and_sends_it_back_as_a_call(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    engine = calculator_engine()
    with serving_engine(engine) as url, browser(tmp_path) as driver:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 120, poll_frequency=0.05)
        wait.until(lambda d: "steered" in d.find_element(By.ID, "title").text)
        driver.execute_script("document.getElementById('temperature').value = '0';")
        box = driver.find_element(By.ID, "input")
        box.send_keys(CALLED, Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "send").is_displayed() and d.find_elements(By.CSS_SELECTOR, ".call"))
        reply = driver.find_element(By.CSS_SELECTOR, ".msg.assistant")
        call = reply.find_element(By.CSS_SELECTOR, ".call")
        assert call.text == "calculator: 6 * 7 \u2192 42"  # its own box: the expression, then the result in bold
        assert call.find_element(By.CSS_SELECTOR, "code").text == "6 * 7"
        assert call.find_element(By.CSS_SELECTOR, "b").text == "42"
        nodes = driver.execute_script("return [...arguments[0].childNodes].map("
                                      "n => n.nodeType === 3 ? n.textContent : '<' + n.className + '>')", reply)
        assert nodes == [" It is", "<call>", "."] and "<|" not in reply.text  # the reply's text around the box
        if os.environ.get("CHAT_SCREENSHOT"):  # for a person to look at
            driver.save_screenshot(os.environ["CHAT_SCREENSHOT"])
        seen = list(engine.cached)  # the prompt and the reply with its call, as the model saw them
        box.send_keys("And 6 times 8?", Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "send").is_displayed() and len(d.find_elements(By.CSS_SELECTOR,
                                                                                               ".call")) == 2)
        parts = [{"type": "text", "text": " It is"}, {"type": "python", "text": " 6 * 7"},
                 {"type": "python_output", "text": "42"}, {"type": "text", "text": "."}]
        prompt = render_conversation(get_tokenizer(), [{"role": "user", "content": CALLED},
                                                       {"role": "assistant", "content": parts},
                                                       {"role": "user", "content": "And 6 times 8?"}], for_reply=True)[0]
        assert prompt[:len(seen)] == seen and engine.prefilled == len(prompt) - len(seen)  # the page sent the call back
        assert not driver.find_elements(By.CSS_SELECTOR, ".error")
        # tool tokens out of place (a model without the calculator may write them) are shown as they came
        odd = driver.execute_script("const d = document.createElement('div'); show(d, arguments[0]);"
                                    "return [d.textContent, d.querySelectorAll('.call').length]",
                                    "a<|python_end|>b<|python_start|>1<|python_end|><|python_end|>c<|output_end|>")
        assert odd == ["a<|python_end|>bcalculator: 1<|python_end|>c<|output_end|>", 1]
