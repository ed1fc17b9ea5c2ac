"""dit-serve's request checks and labels by name, without a server (runtime.service.api, dit_ref.class_names)."""

import json

import pytest

from dit_ref.class_names import class_names, imagenet_names, label_from_name
from dit_ref.errors import DiTError
from runtime.plan import make_plan, split_classes
from runtime.service.api import Model, ServiceError, parse_generate
from runtime.service.settings import check_exposure, is_loopback

FASHION = Model("fashion", 10, class_names("fashion", 10), max_images=5)
IMAGENET = Model("DiT-XL/2", 1000, class_names("DiT-XL/2", 1000), max_images=16)


def parse(model=FASHION, **fields):
    return parse_generate(json.dumps(fields).encode(), model)


def refusal(body: bytes, model=FASHION) -> str:
    with pytest.raises(ServiceError) as refused:
        parse_generate(body, model)
    assert refused.value.status == 400 and "\n" not in refused.value.message
    print(refused.value.message)
    return refused.value.message


def test_a_request_takes_dit_runs_defaults():
    plan = parse(class_labels=[1, 7])
    assert (plan.labels, plan.seed, plan.sampler.name, plan.sampler.steps, plan.cfg_scale) == ((1, 7), 0, "ddpm", 250, 4.0)
    plan = parse(class_labels=[0], seed=5, sampler="DDIM", steps=10, cfg_scale=1.5)
    assert (plan.sampler.name, plan.sampler.steps, plan.seed, plan.cfg_scale) == ("ddim", 10, 5, 1.5)
    assert parse(class_labels=[0], sampler="dpm++").sampler.steps == 20  # a diffusers scheduler's default


def test_labels_by_name_as_diffusers_dit_pipeline_gives_them():
    assert parse(class_labels=["sneaker", "Trouser", " bag ", 9, "T-shirt"]).labels == (7, 1, 8, 9, 0)
    # sample.py's demo classes, by name: golden retriever, otter, red panda, geyser, macaw, valley, balloon, arctic fox
    names = ["golden retriever", "otter", "red panda", "geyser", "macaw", "vale", "balloon", "Arctic fox"]
    assert parse(IMAGENET, class_labels=names).labels == (207, 360, 387, 974, 88, 979, 417, 279)


@pytest.mark.parametrize("body, expected", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"class_labels": [1], "guidance": 4}', "unknown field 'guidance'"),
    (b'{"seed": 1}', "class_labels must be a non-empty list"),
    (b'{"class_labels": []}', "class_labels must be a non-empty list"),
    (b'{"class_labels": [10]}', "out of range: this model's classes are 0..9"),
    (b'{"class_labels": [-1]}', "out of range"),
    (b'{"class_labels": [true]}', "neither a class number nor a name"),
    (b'{"class_labels": [1.5]}', "neither a class number nor a name"),
    (b'{"class_labels": ["sneakr"]}', "closest: 'sneaker' (7)"),
    (b'{"class_labels": [1, 2, 3, 4, 5, 6]}', "at most 5 per request"),
    (b'{"class_labels": [1], "steps": 0}', "steps must be 1..1000"),
    (b'{"class_labels": [1], "steps": 1001}', "steps must be 1..1000"),
    (b'{"class_labels": [1], "steps": "ten"}', "steps must be an integer"),
    (b'{"class_labels": [1], "sampler": "nope"}', "unknown sampler 'nope'"),
    (b'{"class_labels": [1], "seed": -1}', "seed must be 0.."),
    (b'{"class_labels": [1], "cfg_scale": "4"}', "cfg_scale must be a finite number"),
    (b'{"class_labels": [1], "cfg_scale": 1e999}', "cfg_scale must be a finite number"),
    (b'\xff\xfe', "not valid JSON"),
])
def test_each_bad_request_gets_one_line(body, expected):
    assert expected in refusal(body)


def test_an_ambiguous_name_is_refused_with_its_classes():
    message = refusal(b'{"class_labels": ["crane"]}', IMAGENET)
    assert "134 (crane), 517 (crane)" in message and "pass the number" in message


def test_a_model_without_class_names_takes_numbers_only():
    model = Model("DiT-S/2", 10, class_names("DiT-S/2", 10), max_images=4)  # train.py --num-classes 10
    assert model.names is None
    assert "have no names; pass numbers 0..9" in refusal(b'{"class_labels": ["cat"]}', model)
    assert parse(model, class_labels=[3]).labels == (3,)


def test_the_imagenet_table_is_the_released_models_labels():
    names = imagenet_names()
    assert len(names) == 1000
    assert names[0] == "tench, Tinca tinca" and names[999].startswith("toilet tissue")
    assert label_from_name("lesser panda", names) == 387 and label_from_name("Ailurus fulgens", names) == 387


def parse_classes(values, num_classes, names):
    """dit-run's --class values -> labels, as its plan resolves them."""
    return make_plan(split_classes(values)).labels_for(num_classes, names)


def test_dit_run_takes_class_names_beside_numbers():
    names = class_names("DiT-XL/2", 1000)
    assert parse_classes(["golden retriever,360", "red panda"], 1000, names) == [207, 360, 387]
    with pytest.raises(DiTError, match="closest: 'golden retriever' \\(207\\)"):
        parse_classes(["golden retreiver"], 1000, names)
    with pytest.raises(DiTError, match="have no names"):
        parse_classes(["otter"], 10, None)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("10.1.2.3", False),
                                            ("example.org", False)])
def test_only_loopback_serves_without_a_key(host, loopback):
    assert is_loopback(host) == loopback
    if loopback:
        check_exposure(host, None)
    else:
        with pytest.raises(DiTError, match="pass --api-key KEY"):
            check_exposure(host, None)
        check_exposure(host, "secret")


def test_a_services_calibrated_list_goes_when_a_request_gives_its_own_steps_or_sampler():
    """dit-serve --profile puts a point's refresh list in the requests' defaults; it fits that point's sampler and
    steps only (as with dit-run --profile and other --steps)."""
    listed = Model("fashion", 10, class_names("fashion", 10), max_images=5, cached_steps=True,
                   defaults=(("sampler", "ddim"), ("steps", 5), ("cache", "refresh:0,1,3,4")))
    assert parse(listed, class_labels=[1]).cache.calls == (0, 1, 3, 4)
    assert parse(listed, class_labels=[1], steps=10).cache is None
    assert parse(listed, class_labels=[1], sampler="unipc").cache is None
    assert parse(listed, class_labels=[1], steps=4, cache="fora:2").cache.every == 2  # its own wins
