import pytest

from dit_ref import DiTError, build_model, get_config, gflops, param_count
from dit_ref.configs import CONFIGS, latent_size

# Peebles & Xie, "Scalable Diffusion Models with Transformers", Table 1 (Gflops at 256) and
# Table 4 / the released checkpoints (parameter counts, pos_embed included).
PAPER_GFLOPS = {  # as printed, so the test knows the printed precision
    ("XL/2", 256): "118.6", ("XL/4", 256): "29.05", ("XL/8", 256): "7.39",
    ("L/2", 256): "80.7", ("L/4", 256): "19.7", ("L/8", 256): "5.01",
    ("B/2", 256): "23.0", ("B/4", 256): "5.56", ("B/8", 256): "1.42",
    ("S/2", 256): "6.06", ("S/4", 256): "1.41", ("S/8", 256): "0.36",
    ("XL/2", 512): "524.6",
}
PAPER_PARAMS_M = {
    ("XL/2", 256): 675.13, ("L/2", 256): 458.10, ("B/2", 256): 130.51, ("B/4", 256): 130.48,
    ("S/2", 256): 32.96, ("S/8", 256): 33.15, ("XL/2", 512): 676.01,
}


@pytest.mark.parametrize("name,image_size", sorted(PAPER_GFLOPS))
def test_gflops_match_paper(name, image_size):
    printed = PAPER_GFLOPS[name, image_size]
    ours = gflops(get_config(name), image_size)
    last_digit = 10.0 ** -len(printed.partition(".")[2])
    print(f"{name}@{image_size}: ours {ours:.4f} paper {printed} diff {ours - float(printed):+.4f}")
    # Within one unit of the paper's last printed digit (it rounded, and used a tracing counter).
    assert abs(ours - float(printed)) <= last_digit


@pytest.mark.parametrize("name,image_size", sorted(PAPER_PARAMS_M))
def test_params_match_paper(name, image_size):
    ours = param_count(get_config(name), image_size) / 1e6
    print(f"{name}@{image_size}: {ours:.4f}M vs paper {PAPER_PARAMS_M[name, image_size]}M")
    assert round(ours, 2) == PAPER_PARAMS_M[name, image_size]


@pytest.mark.parametrize("name", ["S/2", "S/8", "B/4"])
def test_param_formula_counts_the_built_model(name):
    model = build_model(name, 512)
    assert sum(p.numel() for p in model.parameters()) == param_count(model.config, 512)


def test_all_twelve_configs_and_name_forms():
    assert len(CONFIGS) == 12
    assert get_config("XL/2") is get_config("DiT-XL/2") is get_config("DiT-XL-2") is get_config("xl/2")
    assert get_config("XL/2").file_stem == "DiT-XL-2"
    assert get_config("XL/2").hidden_size // get_config("XL/2").num_heads == 72
    assert latent_size(256) == 32 and latent_size(512) == 64


def test_unknown_model_lists_valid_names():
    with pytest.raises(DiTError, match=r"unknown model 'XXL/2'; choose one of S/2, .*, XL/8$"):
        get_config("XXL/2")


def test_unsupported_image_size():
    with pytest.raises(DiTError, match="image size 300 is not supported.*256 and 512"):
        latent_size(300)
