"""One declaration per request option: the table (runtime.options) makes the plan's checks, dit-run's and dit-serve's
flags and dit-serve's request schema, and an option is named in few modules of the packages."""

import re
from pathlib import Path

import pytest

from dit_ref.errors import DiTError
from runtime.options import HTTP_OPTIONS, OPTIONS, SERVE_OPTIONS
from runtime.plan import Plan, make_plan

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dit_ref", "export", "runtime")


def test_every_option_is_a_dit_run_flag_with_the_tables_default_and_a_plan_field():
    import runtime.cli

    params = {param.name: param for param in runtime.cli.run.params}
    for name, option in OPTIONS.items():
        assert params[name].opts == [option.flag] and params[name].default == option.default, name
        assert name in Plan.__dataclass_fields__ or name == "steps", name  # steps: the Sampler's
    plan = make_plan([1])
    assert (plan.cfg_scale, plan.seed, plan.sampler.name) == tuple(OPTIONS[name].default
                                                                    for name in ("cfg_scale", "seed", "sampler"))


def test_dit_serve_takes_the_requests_defaults_it_declares():
    import runtime.service.cli

    params = {param.name: param for param in runtime.service.cli.serve.params}
    assert [option.name for option in SERVE_OPTIONS] == ["guidance_interval", "cache", "profile"]
    for option in SERVE_OPTIONS:
        assert params[option.name].opts == [option.flag] and not params[option.name].required


def test_the_request_schema_is_the_tables():
    from runtime.service.schema import generate_request_model

    schema = generate_request_model(10, 16, True).model_json_schema()
    assert list(schema["properties"]) == ["class_labels", *(option.name for option in HTTP_OPTIONS)]
    for option in HTTP_OPTIONS:
        assert schema["properties"][option.name]["default"] == option.default


def test_an_option_that_is_not_one_is_refused():
    with pytest.raises(DiTError, match="a request takes no option 'guidance'"):
        make_plan([1], guidance=2.0)


def test_a_request_option_is_named_in_at_most_four_modules():
    """The declaration, the plan, the sampler that acts on it (and the service's batching, if it must)."""
    naming = sorted(str(path.relative_to(ROOT)) for package in PACKAGES for path in (ROOT / package).rglob("*.py")
                    if re.search(r"\bguidance_interval\b", path.read_text()))
    print(naming)
    assert len(naming) <= 4 and "runtime/options.py" in naming
