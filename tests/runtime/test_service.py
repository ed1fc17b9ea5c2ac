"""dit-serve for real: one service (its own process, a private Ray instance on 127.0.0.1) on the shipped
Fashion-MNIST DiT as an FP32 graph, 2 replicas, batches of up to 4 images; requests over HTTP.

Every answer is compared with dit-run --seeding per-sample (same labels, seed, sampler, steps, cfg):
the service stacks images of other requests into its batches, so equality shows each image depends
on its (seed, index) alone. Tolerance: 1 grey level (a batch of another shape may round a latent
differently in its last bit; measured 0 levels on CPU). Every request and wait is bounded.
"""

import concurrent.futures
import json
import os
import signal
import time

import pytest

from runtime.backends import auto_backend
from service_helpers import STEPS, Server, assert_equal_to_dit_run, replica_pids

pytest.importorskip("ray.serve", reason="needs Ray Serve: pip install 'ray[serve]' (in the dev extra)")
pytestmark = pytest.mark.slow

MAX_BATCH, REPLICAS = 4, 2


@pytest.fixture(scope="module")
def server(fashion_graph):
    server = Server(fashion_graph, "--replicas", str(REPLICAS), "--max-batch", str(MAX_BATCH))
    yield server
    server.stop()


def test_health_and_model_say_what_is_served(server, fashion_graph):
    status, _, health = server.request("GET", "/v1/health")
    assert status == 200 and health == {"status": "ok", "replicas": {"running": REPLICAS, "wanted": REPLICAS}}
    status, _, model = server.request("GET", "/v1/model")
    assert status == 200
    assert (model["model"], model["image_size"], model["precision"], model["backend"]) == \
        ("fashion", 28, "fp32", auto_backend(fashion_graph)[0])  # what --backend auto picks here
    assert model["batch"] == {"min": 1, "opt": 8, "max": 32} and model["max_batch"] == MAX_BATCH
    assert model["random_weights"] is False and "ddim" in model["samplers"]
    status, _, classes = server.request("GET", "/v1/classes")
    assert status == 200 and classes["classes"][7] == {"label": 7, "name": "Sneaker"}


def test_16_concurrent_requests_are_batched_and_each_equals_dit_run(server, fashion_graph, tmp_path):
    def request(k):  # 1 or 2 images, a seed and a cfg scale of its own; every fourth on another sampler
        labels = [k % 10] if k % 2 else [k % 10, (k + 3) % 10]
        sampler, steps = ("ddpm", 3) if k % 4 == 3 else ("ddim", STEPS)
        return {"class_labels": labels, "seed": 100 + k, "sampler": sampler, "steps": steps,
                "cfg_scale": 4.0 if k % 3 else 1.5}

    asked = [request(k) for k in range(16)]
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda fields: server.generate(**fields), asked))
    seconds = time.perf_counter() - started
    assert all(status == 200 for status, _ in answers), [answer for status, answer in answers if status != 200]
    sizes = [size for _, answer in answers for size in answer["batch_sizes"]]
    print(f"16 concurrent requests, {len(sizes)} images in {seconds:.1f} s; denoiser batch sizes {sorted(sizes)}")
    assert max(sizes) > 2, "no batch held images of two requests (a request has at most 2)"
    assert max(sizes) <= MAX_BATCH
    worst = max(assert_equal_to_dit_run(fields, answer, fashion_graph, tmp_path)
                for fields, (_, answer) in zip(asked, answers))
    print(f"largest difference from dit-run --seeding per-sample: {worst} grey levels")


def test_a_request_larger_than_a_batch_is_split(server, fashion_graph, tmp_path):
    asked = {"class_labels": [9, 8, 7, 6, 5, 4, 3, 2, 1, 0], "seed": 7, "sampler": "ddim", "steps": STEPS,
             "cfg_scale": 4.0}
    status, answer = server.generate(**asked)
    assert status == 200 and len(answer["images"]) == 10
    assert max(answer["batch_sizes"]) <= MAX_BATCH
    print(f"10 images in batches of {answer['batch_sizes']}")
    assert_equal_to_dit_run(asked, answer, fashion_graph, tmp_path)


def test_labels_by_name(server):
    status, answer = server.generate(class_labels=["sneaker", "Trouser", 8], steps=2, sampler="ddim")
    assert status == 200 and answer["labels"] == [7, 1, 8]


@pytest.mark.parametrize("body, expected", [
    (b"{oops", "not valid JSON"),
    (b'{"class_labels": [1], "colour": "red"}', "unknown field 'colour'"),
    (b'{"class_labels": [10]}', "out of range"),
    (b'{"class_labels": ["unicorn"]}', "not a class name"),
    (b'{"class_labels": [1], "steps": 1001}', "steps must be 1..1000"),
    (b'{"class_labels": [1], "sampler": "magic"}', "unknown sampler"),
    (json.dumps({"class_labels": [1] * 17}).encode(), "at most 16 per request"),
])
def test_a_bad_request_gets_400_and_the_next_good_one_succeeds(server, body, expected):
    status, _, answer = server.request("POST", "/v1/generate", body)
    assert status == 400 and expected in answer["error"] and "\n" not in answer["error"]
    assert server.generate(class_labels=[3], steps=1, sampler="ddim")[0] == 200


def test_unknown_paths_and_methods_answer_json(server):
    status, _, answer = server.request("GET", "/v2/anything")
    assert status == 404 and "error" in answer
    status, _, answer = server.request("GET", "/v1/generate")
    assert status == 405 and "error" in answer


def test_the_page_generates_and_shows_errors_in_a_headless_browser(server):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (in the dev extra)")
    from browser import chromium, wait_for

    with chromium(webdriver) as browser:
        browser.get(server.url + "/")
        wait_for(browser, lambda: browser.find_elements("css selector", "#class-results button"), "the class list")
        assert "fashion, 28 px" in browser.find_element("id", "model").text
        browser.find_element("id", "search").send_keys("sneak")
        results = browser.find_elements("css selector", "#class-results button")
        assert [button.text for button in results] == ["7: Sneaker"]
        results[0].click()
        browser.find_element("id", "steps").clear()
        browser.find_element("id", "steps").send_keys("3")
        browser.find_element("id", "generate").click()
        images = wait_for(browser, lambda: browser.find_elements("css selector", "#images img"), "an image")
        assert images[0].get_attribute("src").startswith("data:image/png;base64,")
        assert "7 Sneaker" in browser.find_element("id", "images").text
        browser.find_element("id", "steps").clear()
        browser.find_element("id", "steps").send_keys("5000")
        browser.find_element("id", "generate").click()
        error = wait_for(browser, lambda: browser.find_element("id", "error").text, "the error")
        print(f"the page shows: {error}")
        assert "steps must be 1..1000" in error


def test_a_killed_replica_is_restarted_and_later_requests_succeed(server):
    before = replica_pids("Generator", server)
    assert len(before) == REPLICAS
    os.kill(before[0], signal.SIGKILL)
    deadline, after, health = time.monotonic() + 90, before, {}
    while time.monotonic() < deadline:  # until Serve has a new replica in place and running
        after = replica_pids("Generator", server)
        health = server.request("GET", "/v1/health")[2]
        if before[0] not in after and len(after) == REPLICAS and health["replicas"]["running"] == REPLICAS:
            break
        time.sleep(1)
    assert before[0] not in after and len(after) == REPLICAS, f"replicas before {before}, after {after}"
    answers = [server.generate(class_labels=[1, 2], steps=2, sampler="ddim")[0] for _ in range(4)]
    print(f"replica {before[0]} killed; now {after}; health {health}; next requests {answers}")
    assert health["replicas"]["running"] == REPLICAS and answers == [200] * 4


def test_ctrl_c_stops_the_service_and_its_ray_instance(server):
    code = server.stop()
    assert code == 0, server.output()
    assert "stopped" in server.output()
    assert replica_pids("Generator", server) == [] and replica_pids("Frontend", server) == []
