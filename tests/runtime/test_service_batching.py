"""dit-serve's step-level batching and its OpenAPI document, for real: one service (its own process, a
private Ray instance on 127.0.0.1) on the shipped Fashion-MNIST DiT as an FP32 graph, 1 replica (so that
every request meets every other), up to 4 images a denoiser call.

Each answer says, per image, which of its replica's denoiser calls it took part in (every one from
`first` to `last`; `arrived`: the calls started when it reached the replica), so sharing a call is
counted, not inferred from timing. Every image is compared with dit-run --seeding per-sample (bound
1 grey level, as in test_service). Every request and wait is bounded.
"""

import concurrent.futures
import json
import time

import pytest

from runtime.service.api import DEFAULTS, FIELDS
from service_helpers import Server, assert_documented, assert_equal_to_dit_run

pytest.importorskip("ray.serve", reason="needs Ray Serve: pip install 'ray[serve]' (in the dev extra)")
pytestmark = pytest.mark.slow

MAX_BATCH = 4


@pytest.fixture(scope="module")
def server(fashion_cached_graph):
    server = Server(fashion_cached_graph, "--max-batch", str(MAX_BATCH))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fashion_graph(fashion_cached_graph):
    """This file's service runs the graph with its cached-steps pair (which dit-run compares with)."""
    return fashion_cached_graph


def ask(sampler, steps, labels, seed, cfg_scale=4.0) -> dict:
    return {"class_labels": labels, "seed": seed, "sampler": sampler, "steps": steps, "cfg_scale": cfg_scale}


def send_while_running(server, long: dict, others: list[dict], after_s: float = 0.5):
    """The long request, then the others together after_s later: (answers of the others, long's, and
    whether long had been answered when they all were)."""
    with concurrent.futures.ThreadPoolExecutor(1 + len(others)) as pool:
        running = pool.submit(server.generate, **long)
        time.sleep(after_s)  # the long request's images are in the replica and stepping by now (and for
        # seconds more: its steps are chosen to take several seconds here even on an idle machine)
        answers = list(pool.map(lambda fields: server.generate(**fields), others))
        long_done_first = running.done()
        long_answer = running.result()
    assert all(status == 200 for status, _ in [long_answer, *answers]), [long_answer, *answers]
    return [answer for _, answer in answers], long_answer[1], long_done_first


def shared_calls(a: dict, b: dict) -> int:
    """How many denoiser calls an image a and an image b both took part in (their replica's call ranges)."""
    if a["replica"] != b["replica"]:
        return 0
    return max(0, min(a["last"], b["last"]) - max(a["first"], b["first"]) + 1)


def test_a_short_request_overtakes_a_long_one_joining_at_the_next_call(server, fashion_graph, tmp_path):
    long, short = ask("ddpm", 1000, [1], 3), ask("ddim", 5, [2], 4)
    started = time.perf_counter()
    [short_answer], long_answer, long_done_first = send_while_running(server, long, [short])
    seconds = time.perf_counter() - started
    long_calls, short_calls = long_answer["denoiser_calls"][0], short_answer["denoiser_calls"][0]
    print(f"long (DDPM 1000) calls {long_calls}, short (DDIM 5) calls {short_calls}, {seconds:.1f} s in all")
    assert not long_done_first
    assert short_calls["first"] == short_calls["arrived"] + 1  # it joined the running batch at the next call
    assert long_calls["first"] < short_calls["first"] and short_calls["last"] < long_calls["last"]
    assert short_calls["last"] - short_calls["first"] + 1 == 5  # one call a step, none waited out
    assert short_answer["batch_sizes"] == [2]
    assert_equal_to_dit_run(short, short_answer, fashion_graph, tmp_path)
    assert_equal_to_dit_run(long, long_answer, fashion_graph, tmp_path)


def test_requests_of_different_samplers_and_steps_share_denoiser_calls_and_equal_dit_run(server, fashion_graph,
                                                                                         tmp_path):
    long = ask("ddpm", 600, [1, 2], 10)
    others = [ask("ddim", 6, [3], 11, 1.5), ask("dpm++", 5, [4], 12), ask("euler-ancestral", 4, [5], 13, 2.0)]
    answers, long_answer, _ = send_while_running(server, long, others)
    images = [calls for answer in [long_answer, *answers] for calls in answer["denoiser_calls"]]
    pairs = [(a, b) for i, a in enumerate(images) for b in images[i + 1:]]
    shared = sum(shared_calls(a, b) for a, b in pairs)
    span = max(c["last"] for c in images) - min(c["first"] for c in images) + 1
    steps = sum(c["last"] - c["first"] + 1 for c in images)
    print(f"{len(images)} images, {steps} image-steps in {span} denoiser calls; {shared} shared between pairs")
    for answer in answers:  # each shorter request ran beside the long one's images, in its calls
        assert all(shared_calls(answer["denoiser_calls"][0], calls) > 0 for calls in long_answer["denoiser_calls"])
    assert span < steps and max(size for answer in answers for size in answer["batch_sizes"]) > 2
    for fields, answer in zip([long, *others], [long_answer, *answers]):
        print(f"{fields['sampler']} {fields['steps']}: "
              f"{assert_equal_to_dit_run(fields, answer, fashion_graph, tmp_path)} grey levels from dit-run")


def test_a_request_larger_than_the_batch_joins_as_room_frees(server, fashion_graph, tmp_path):
    asked = ask("ddim", 4, [0, 1, 2, 3, 4, 5], 20)
    status, answer = server.generate(**asked)
    assert status == 200 and max(answer["batch_sizes"]) <= MAX_BATCH
    calls = answer["denoiser_calls"]
    print(f"6 images, up to {MAX_BATCH} a call: {[(c['first'], c['last']) for c in calls]}")
    assert max(c["first"] for c in calls) > min(c["last"] for c in calls)  # some waited for room
    assert_equal_to_dit_run(asked, answer, fashion_graph, tmp_path)


def test_the_openapi_document_describes_every_endpoint_and_answer(server):
    status, _, document = server.request("GET", "/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.")
    statuses = {path: {method: sorted(int(code) for code in operation["responses"])
                       for method, operation in operations.items()} for path, operations in document["paths"].items()}
    assert statuses == {"/": {"get": [200]}, "/v1/health": {"get": [200, 401, 503]},
                        "/v1/model": {"get": [200, 401]}, "/v1/classes": {"get": [200, 401]},
                        "/v1/generate": {"post": [200, 400, 401, 413, 500, 503]}}
    for path in ("/v1/health", "/v1/model", "/v1/classes"):
        status, _, answer = server.request("GET", path)
        assert_documented(document, "GET", path, status, answer)
    asked = ask("ddim", 2, [1, "sneaker"], 0)
    status, _, answer = server.request("POST", "/v1/generate", json.dumps(asked).encode())
    assert_documented(document, "POST", "/v1/generate", status, answer)
    status, _, answer = server.request("POST", "/v1/generate", b'{"class_labels": [10]}')
    assert status == 400
    assert_documented(document, "POST", "/v1/generate", status, answer)


def test_the_openapi_request_schema_is_the_served_models(server):
    """Labels as numbers (the model's range) or names, each field's range and default as api.py checks them."""
    import jsonschema

    document = server.request("GET", "/openapi.json")[2]
    body = document["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    request = document["components"]["schemas"]["GenerateRequest"]
    assert body == {"$ref": "#/components/schemas/GenerateRequest"} and set(request["properties"]) == set(FIELDS)
    assert request["required"] == ["class_labels"] and request["additionalProperties"] is False
    labels = request["properties"]["class_labels"]
    assert (labels["minItems"], labels["maxItems"]) == (1, 16)
    number, name = labels["items"]["anyOf"]
    assert (number["type"], number["minimum"], number["maximum"], name["type"]) == ("integer", 0, 9, "string")
    assert {field: request["properties"][field]["default"] for field in DEFAULTS} == DEFAULTS
    assert request["properties"]["seed"]["maximum"] == 2**63 - 1
    assert request["properties"]["steps"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 1000}
    validate = jsonschema.Draft202012Validator(request).is_valid
    assert validate(ask("ddim", 5, [1, "bag"], 3)) and validate({"class_labels": [9]})
    for bad in ({"class_labels": [10]}, {"class_labels": []}, {"class_labels": [1], "steps": 1001},
                {"class_labels": [1], "colour": "red"}, {"class_labels": [1] * 17}, {"class_labels": [1], "seed": -1}):
        assert not validate(bad)
        assert server.request("POST", "/v1/generate", json.dumps(bad).encode())[0] == 400


def test_request_level_batching_is_kept_for_comparison(fashion_graph, tmp_path):
    """--batching request: the short request waits for the long one's batch (the old way, which the load
    benchmark compares with); its images still equal dit-run's."""
    legacy = Server(fashion_graph, "--max-batch", str(MAX_BATCH), "--batching", "request")
    try:
        long, short = ask("ddpm", 600, [1], 3), ask("ddim", 5, [2], 4)
        [short_answer], long_answer, _ = send_while_running(legacy, long, [short])
        short_calls, long_calls = short_answer["denoiser_calls"][0], long_answer["denoiser_calls"][0]
        print(f"request-level: long calls {long_calls}, short calls {short_calls}")
        assert short_calls["first"] > long_calls["last"] >= short_calls["arrived"]
        assert legacy.request("GET", "/v1/model")[2]["batching"] == "request"
        assert_equal_to_dit_run(short, short_answer, fashion_graph, tmp_path)
    finally:
        assert legacy.stop() == 0


def test_a_guidance_interval_and_a_cache_policy_travel_with_their_requests(server, fashion_graph, tmp_path):
    """Requests with an interval, a cache policy, both and neither, sent together: they share denoiser calls
    (a replica's cached steps go per trajectory), and each equals dit-run with the same options."""
    asked = [{**ask("ddim", 12, [3, 4], 5), "guidance_interval": [200, 700]},
             {**ask("ddim", 12, [5], 6), "cache": "fora:2"},
             {**ask("ddim", 12, [6], 7), "guidance_interval": "82:468", "cache": "forecast:3:2"},
             ask("ddim", 12, [7], 8)]
    with concurrent.futures.ThreadPoolExecutor(len(asked)) as pool:
        answers = list(pool.map(lambda fields: server.generate(**fields), asked))
    assert all(status == 200 for status, _ in answers), answers
    answers = [answer for _, answer in answers]
    assert answers[0]["guidance_interval"] == [200, 700] and answers[1]["cache"] == "fora:2"
    assert answers[2]["guidance_interval"] == [82, 468] and answers[3]["cache"] is None
    calls = [answer["denoiser_calls"][0] for answer in answers]
    print(f"denoiser calls per request: {calls}")
    assert any(shared_calls(a, b) > 0 for a, b in zip(calls, calls[1:]))  # they met in one call at least
    for fields, answer in zip(asked, answers):
        fields = {**fields, "guidance_interval": "{}:{}".format(*answer["guidance_interval"])
                  if answer["guidance_interval"] else None}
        assert_equal_to_dit_run(fields, answer, fashion_graph, tmp_path)


def test_a_profile_sets_the_services_defaults_and_a_request_may_name_a_point(fashion_cached_graph, tmp_path):
    """dit-serve --profile: the point's request options are the requests' defaults; a request naming another point
    of the same graph takes that point's; a point on another backend is a 400; each image equals dit-run's run with
    the point's options spelled out."""
    import shutil

    from profile_helpers import write_profile_for

    folder = tmp_path / "graphs"
    shutil.copytree(fashion_cached_graph.parent, folder)
    graph = folder / fashion_cached_graph.name
    write_profile_for(graph, {"quick": {"sampler": "ddim", "steps": 5, "guidance_interval": "300:700", "cache": "fora:2"},
                              "plain": {"sampler": "ddim", "steps": 3},
                              "elsewhere": {"backend": "openvino", "sampler": "ddim", "steps": 3}})
    profiled = Server(graph, "--max-batch", str(MAX_BATCH), "--profile", "quick", "--backend", "onnxruntime")
    try:
        status, defaulted = profiled.request("POST", "/v1/generate", b'{"class_labels": [1, 2], "seed": 4}')[::2]
        assert status == 200 and (defaulted["steps"], defaulted["cache"], defaulted["profile"]) == (5, "fora:2", "quick")
        status, named = profiled.request("POST", "/v1/generate",
                                         b'{"class_labels": [3], "seed": 5, "profile": "plain"}')[::2]
        assert status == 200 and (named["steps"], named["cache"], named["guidance_interval"]) == (3, None, None)
        status, _, refused = profiled.request("POST", "/v1/generate", b'{"class_labels": [3], "profile": "elsewhere"}')
        print(refused)
        assert status == 400 and "runs" in refused["error"] and "--profile elsewhere" in refused["error"]
    finally:
        assert profiled.stop() == 0
    spelled = {**ask("ddim", 5, [1, 2], 4), "guidance_interval": "300:700", "cache": "fora:2"}
    assert_equal_to_dit_run(spelled, defaulted, graph, tmp_path)
    assert_equal_to_dit_run(ask("ddim", 3, [3], 5), named, graph, tmp_path)
