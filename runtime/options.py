"""The request options, one declaration each: what a user may set per run (dit-run, generate(), --ray) or per
request (dit-serve), from which the plan's checks, both CLIs' flags, the HTTP request and its OpenAPI schema
are made.

    OPTIONS["cfg_scale"].default              # 4.0, the one place it is written
    OPTIONS["guidance_interval"].check(value, "--guidance-interval")   # (LO, HI) or None, DiTError otherwise

An option's entry says its default, how a value is checked (a DiTError of one line that names the option as
the front end names it: `--steps` on the command line, `steps` in a request), its dit-run flag and help, its
dit-serve flag when the service sets the requests' default, and its HTTP field: the request's type and
range, how the answer echoes the value used, and how GET /v1/model shows the service's default. Adding an
option is one entry here, one field of runtime.plan.Plan, and the code that acts on it.

The class labels are not an option: each front end takes them in its own shape (--class values, the
request's class_labels list), and the plan resolves them against the model.
"""

import math
from dataclasses import dataclass, field
from typing import Annotated, Callable

import click
from pydantic import Field

from dit_ref import configs
from dit_ref.errors import DiTError
from runtime.caching import CachePolicy, parse_cache
from runtime.sampling import DIFFUSERS_SCHEDULERS, check_steps, sampler_names

SEEDINGS = ("official", "per-sample")
MAX_SEED = 2**63 - 1  # per-sample seeding keys numpy's SeedSequence with (seed, index): non-negative
SAMPLER_HELP = (f"ddpm (learned sigma, 250 steps), ddim (eta 0, 50 steps), or a diffusers scheduler: "
                f"{', '.join(DIFFUSERS_SCHEDULERS)} (20 steps) or a scheduler class name")


@dataclass(frozen=True)
class Http:
    """How an option appears in dit-serve's API (runtime.service.schema makes the OpenAPI models from it)."""

    request: object  # the request field's type (a pydantic annotation)
    schema: dict  # the request field's Field keywords beside its default: range, pattern, description
    answer: object  # the type of the value used, as POST /v1/generate answers it
    answer_schema: dict = field(default_factory=dict)  # its Field keywords (a description)
    default: object = None  # the type of the service's default in GET /v1/model's defaults; None: `answer`'s
    default_schema: dict = field(default_factory=dict)


def same(value):
    return value


@dataclass(frozen=True)
class Option:
    """One request option."""

    name: str  # the Plan field, generate()'s keyword and the HTTP field
    default: object  # when nobody gives one (dit-serve's own flag may set the requests' default)
    check: Callable[[object, str], object]  # (value, its name in messages) -> the value the plan keeps
    help: str  # dit-run's help
    click: dict = field(default_factory=dict)  # dit-run's click.option keywords beside help and default
    http: Http | None = None  # None: not in the HTTP request
    serve_help: str | None = None  # dit-serve's flag setting the requests' default; None: no such flag
    spell: Callable[[object], object] = same  # the kept value -> its JSON (the answer, records, provenance)
    named: bool = False  # named in dit-run's provenance and closing line when set
    tuned: bool = False  # dit-tune chooses it: a profile point sets it (runtime.profile)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def check_positive(value, what: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DiTError(f"{what} must be at least 1, not {value}")
    return value


def check_cfg_scale(cfg_scale, what: str = "--cfg-scale") -> float:
    if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float)) or not math.isfinite(cfg_scale):
        raise DiTError(f"{what} must be a finite number, not {cfg_scale}")
    return float(cfg_scale)


def check_seed(seed, what: str = "--seed") -> int:
    """The seed; that per-sample seeding can key it is the plan's check (it knows the seeding)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DiTError(f"{what} must be an integer, not {seed!r}")
    return seed


def check_seeding(seeding, what: str = "--seeding") -> str:
    if seeding not in SEEDINGS:
        raise DiTError(f"unknown seeding {seeding!r}; choose one of {', '.join(SEEDINGS)}")
    return seeding


def check_sampler_name(name, what: str = "--sampler") -> str:
    """The name; whether it takes the steps asked is the plan's check (runtime.plan.build_sampler)."""
    if not isinstance(name, str):
        raise DiTError(f"{what} must be a name (ddpm, ddim, dpm++, ...), not {name!r}")
    return name


def check_steps_value(steps, what: str = "--steps") -> int | None:
    check_steps(steps, what)
    return steps


def parse_interval(value, what: str = "--guidance-interval") -> tuple[int, int] | None:
    """"LO:HI", (LO, HI) or None -> (LO, HI) timesteps of the 0..999 training schedule, LO <= HI; DiTError else."""
    if value is None:
        return None
    parts = value.split(":") if isinstance(value, str) else value
    try:
        if len(parts) != 2 or any(isinstance(part, bool) or isinstance(part, float) for part in parts):
            raise ValueError
        low, high = (int(str(part).strip()) for part in parts)
    except (TypeError, ValueError):
        raise DiTError(f"{what} {value!r} must be two timesteps LO:HI (0..{configs.NUM_TIMESTEPS - 1}), e.g. "
                       f"82:468") from None
    if not 0 <= low <= high <= configs.NUM_TIMESTEPS - 1:
        raise DiTError(f"{what} {low}:{high} must satisfy 0 <= LO <= HI <= {configs.NUM_TIMESTEPS - 1} "
                       f"(timesteps of the training schedule)")
    return low, high


def check_profile_name(name, what: str = "--profile") -> str | None:
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise DiTError(f"{what} must name a profile point (fast, faithful, exact, ...), not {name!r}")
    return name


def interval_json(interval: tuple[int, int] | None) -> list[int] | None:
    return None if interval is None else list(interval)


def cache_json(policy: CachePolicy | None) -> str | None:
    return None if policy is None else policy.spec


TIMESTEP = Annotated[int, Field(ge=0, le=configs.NUM_TIMESTEPS - 1)]

OPTIONS = {option.name: option for option in (
    Option("num_samples", None, check_positive, "Number of images (default: one per class).", {"type": int}),
    Option("seed", 0, check_seed, "Seeds latents, labels and noise.", {"type": int, "show_default": True},
           Http(int, {"ge": 0, "le": MAX_SEED, "description": "Image i is sample i of dit-run --seeding per-sample "
                      "--seed SEED."}, int)),
    Option("sampler", "ddpm", check_sampler_name, SAMPLER_HELP, {"show_default": True},
           Http(str, {"examples": sampler_names(), "description": "ddpm, ddim, a short diffusers name or a diffusers "
                      "scheduler class name; case ignored."}, str), spell=lambda sampler: sampler.name, tuned=True),
    Option("steps", None, check_steps_value, "Sampling steps (default per sampler).", {"type": int},
           Http(int | None, {"ge": 1, "le": configs.NUM_TIMESTEPS, "description": "null: the sampler's own "
                             "(GET /v1/model's default_steps)."}, int, default=int | None,
                default_schema={"description": "null: the sampler's own (default_steps)."}), tuned=True),
    Option("cfg_scale", 4.0, check_cfg_scale, "Guidance scale (sample.py: 4.0; FID runs: 1.5).",
           {"type": float, "show_default": True},
           Http(float, {"description": "Guidance scale, a finite number."}, float)),
    Option("guidance_interval", None, parse_interval,
           "Guide only the steps whose timestep (0..999 of the training schedule) lies in LO..HI; the others run one "
           "pass, not two (default: every step, as sample.py). 82:468 is the paper's EDM2 interval sigma (0.28, "
           "2.9]; dit-tune measures which interval pays on your model (docs/sampling.md).", {"metavar": "LO:HI"},
           Http(list[TIMESTEP] | str | None, {"description": "Guide only the steps whose timestep t (0..999) has LO "
                                              "<= t <= HI: [LO, HI] or \"LO:HI\" (docs/sampling.md); null: the "
                                              "service's default."},
                list[int] | None, {"description": "The timesteps [LO, HI] guided; null: every step."},
                str | None, {"description": "The service's (dit-serve --guidance-interval); null: all steps."}),
           serve_help="Requests' default guidance interval (timesteps guided; a request's own guidance_interval "
                      "wins). Default: every step.", spell=interval_json, named=True, tuned=True),
    Option("cache", None, parse_cache,
           "Cached steps: fora:N (every block's attention and MLP outputs refreshed every N calls, reused between) or "
           "forecast:N:ORDER (forecast between refreshes, ORDER 1 or 2), the first and last 2 calls always refresh; or "
           "refresh:K,K,... (the calls that refresh, a list dit-tune calibrates on your model). Graphs need dit-export "
           "--cached-steps.", {"metavar": "POLICY"},
           Http(str | None, {"pattern": r"^(fora:\d+|forecast:\d+:[12]|refresh:\d+(,\d+)*)$", "description": "Cached "
                             "steps: fora:N, forecast:N:ORDER or refresh:K,K,... (a graph exported with "
                             "--cached-steps); null: the service's default."},
                str | None, {"description": "The cache policy the images were made with; null: none."},
                str | None, {"description": "The service's (dit-serve --cache); null: no cached steps."}),
           serve_help="Requests' default cache policy (fora:N, forecast:N:ORDER; a graph exported with "
                      "--cached-steps). Default: none.", spell=cache_json, named=True, tuned=True),
    Option("profile", None, check_profile_name,
           "Apply a point of the profile dit-tune wrote beside the graph or engine (fast, faithful, exact, ...; or "
           "FILE.profile.json:NAME): its graph, backend, sampler, steps, guidance interval and cache policy; options "
           "given explicitly win.", {"metavar": "NAME"},
           Http(str | None, {"description": "A point of the service's tuning profile (dit-tune): its sampler, steps, "
                             "guidance interval and cache policy, for fields the request does not give; null: the "
                             "service's default."},
                str | None, {"description": "The profile point applied; null: none."},
                str | None, {"description": "The service's (dit-serve --profile); null: none."}),
           serve_help="Serve a point of the profile dit-tune wrote beside the graph (its graph, backend and request "
                      "defaults); requests may name another point that runs on the same graph. Default: none.",
           named=True),
    Option("batch_size", None, check_positive, "Samples per denoiser batch (default: up to the manifest's max).",
           {"type": int}),
    Option("seeding", "official", check_seeding,
           "official (default; not with --ray): one stream in sample.py's order (bitwise sample.py); per-sample "
           "(--ray's): sample i's own stream keyed by (seed, i), the same in any batch size, order, worker or cluster.",
           {"type": click.Choice(SEEDINGS)}),
)}
HTTP_OPTIONS = tuple(option for option in OPTIONS.values() if option.http is not None)
NAMED = tuple(name for name, option in OPTIONS.items() if option.named)
TUNED = tuple(name for name, option in OPTIONS.items() if option.tuned)
SERVE_OPTIONS = tuple(option for option in OPTIONS.values() if option.serve_help is not None)


def defaults() -> dict:
    """Every option's default."""
    return {name: option.default for name, option in OPTIONS.items()}


def check_names(given: dict, where: str = "generate()") -> None:
    """DiTError naming a key of `given` that is not a request option."""
    unknown = [name for name in given if name not in OPTIONS]
    if unknown:
        raise DiTError(f"{where} takes no option {unknown[0]!r}; the request options are {', '.join(OPTIONS)}")


def click_flags(names, serve: bool = False):
    """A decorator giving a click command the options' flags, in the order named: dit-run's (its help and the
    default), or dit-serve's (its serve_help, no default: the requests' default when not given)."""
    def decorate(command):
        for name in reversed(names):
            option = OPTIONS[name]
            if serve:
                keywords = {key: value for key, value in option.click.items() if key != "show_default"}
                command = click.option(option.flag, help=option.serve_help, **keywords)(command)
            else:
                command = click.option(option.flag, default=option.default, help=option.help, **option.click)(command)
        return command

    return decorate


def given_flags(context: click.Context) -> frozenset[str]:
    """The names of the flags a command's user gave (not left at their defaults)."""
    return frozenset(name for name in context.params
                     if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT)
