"""load_dit: every checkpoint format gives the same model; bad files give one-line DiTErrors."""

import argparse
import functools
import hashlib
import http.server
import json
import threading

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from dit_ref import DiTError, LoadedDiT, download, load_dit
from dit_ref.configs import get_config
from dit_ref.diffusers_format import diffusers_from_official, write_diffusers_dir

MODEL, IMAGE_SIZE = "S/8", 256  # the smallest named config: 16 tokens


@pytest.fixture(scope="module")
def reference(tiny_model):
    """The random S/8 model every file below holds, and its output on fixed inputs."""
    model = tiny_model(MODEL, IMAGE_SIZE, seed=0)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 32, generator=generator)
    t, y = torch.tensor([3, 999]), torch.tensor([207, 1000])
    with torch.no_grad():
        out = model(x, t, y)  # (2, 8, 32, 32)
    return model, (x, t, y), out


def state_dict_of(model):
    return {key: value.clone() for key, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def files(reference, tmp_path_factory):
    """The reference weights in every supported format."""
    model, _, _ = reference
    root = tmp_path_factory.mktemp("ckpts")
    state = state_dict_of(model)
    torch.save(state, root / "plain.pt")
    torch.save(state, root / "legacy.pt", _use_new_zipfile_serialization=False)
    other = dict(state, **{"final_layer.linear.weight": torch.randn(512, 384)})  # shares the rest
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=1e-4)
    optimizer.param_groups[0]["params"][0].grad = torch.ones(3)
    optimizer.step()
    args = argparse.Namespace(model="DiT-S/8", image_size=256, global_seed=0)
    training = {"model": other, "ema": state, "opt": optimizer.state_dict(), "args": args}
    torch.save(training, root / "0050000.pt")  # as train.py names them
    save_file(state, str(root / "model.safetensors"))
    write_diffusers_dir(root / "pipeline" / "transformer", state, get_config(MODEL), IMAGE_SIZE)
    diffusers_state = diffusers_from_official(state, get_config(MODEL))
    save_file(diffusers_state, str(root / "diffusion_pytorch_model.safetensors"))
    write_bin_and_sharded_folders(root, diffusers_state)
    torch.save({k: v for k, v in state.items() if k != "pos_embed"}, root / "no-pos-embed.pt")
    return root


def write_bin_and_sharded_folders(root, diffusers_state):
    """A diffusers folder with the older .bin weights, and one sharded in two safetensors files."""
    config = (root / "pipeline" / "transformer" / "config.json").read_text()
    for folder in ("bin", "sharded"):
        (root / folder).mkdir()
        (root / folder / "config.json").write_text(config)
    torch.save(diffusers_state, root / "bin" / "diffusion_pytorch_model.bin")
    keys = sorted(diffusers_state)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for shard, shard_keys in shards.items():
        save_file({k: diffusers_state[k] for k in shard_keys}, str(root / "sharded" / shard))
    weight_map = {key: shard for shard, shard_keys in shards.items() for key in shard_keys}
    index = {"metadata": {}, "weight_map": weight_map}
    (root / "sharded" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))


def outputs(loaded, inputs):
    with torch.no_grad():
        return loaded.model(*inputs)


@pytest.mark.parametrize(
    "name",
    ["plain.pt", "legacy.pt", "0050000.pt", "model.safetensors", "pipeline",
     "pipeline/transformer", "bin", "sharded", "diffusion_pytorch_model.safetensors",
     "no-pos-embed.pt"],
)
def test_every_format_gives_bitwise_the_same_model(files, reference, name):
    _, inputs, expected = reference
    loaded = load_dit(MODEL, IMAGE_SIZE, ckpt=str(files / name))
    assert isinstance(loaded, LoadedDiT) and not loaded.random_weights
    assert loaded.source == str(files / name)
    assert not loaded.model.training and loaded.model.dtype == torch.float32
    out = outputs(loaded, inputs)
    print(f"{name}: max |diff| = {(out - expected).abs().max().item():.1e}")
    assert torch.equal(out, expected)


def test_sha256_is_the_files_hash(files):
    loaded = load_dit(MODEL, IMAGE_SIZE, ckpt=str(files / "plain.pt"))
    assert loaded.sha256 == hashlib.sha256((files / "plain.pt").read_bytes()).hexdigest()
    folder = load_dit(MODEL, IMAGE_SIZE, ckpt=str(files / "pipeline"))
    weights = files / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors"
    assert folder.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_training_checkpoint_uses_ema_not_model(files):
    """The training file's "model" differs from its "ema"; the format test above got the EMA's outputs."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        training = torch.load(files / "0050000.pt", weights_only=True, mmap=True)
    assert training["args"].model == "DiT-S/8"
    key = "final_layer.linear.weight"
    assert not torch.equal(training["model"][key], training["ema"][key])


def test_random_init_is_labelled(reference):
    _, inputs, expected = reference
    loaded = load_dit(MODEL, IMAGE_SIZE, random_init=0)
    assert (loaded.source, loaded.sha256, loaded.random_weights) == ("random init (seed 0)", None, True)
    assert torch.equal(outputs(loaded, inputs), expected)  # the conftest model is seed 0 too


@pytest.mark.parametrize("kwargs", [{}, {"ckpt": "x.pt", "random_init": 0}, {"random_init": -1}])
def test_exactly_one_source(kwargs):
    with pytest.raises(DiTError, match="--ckpt|--random-init"):
        load_dit(MODEL, IMAGE_SIZE, **kwargs)


def save_edited(files, tmp_path, edit):
    state = torch.load(files / "plain.pt", weights_only=True)
    edit(state)
    torch.save(state, tmp_path / "edited.pt")
    return str(tmp_path / "edited.pt")


def test_missing_key_is_named(files, tmp_path):
    path = save_edited(files, tmp_path, lambda s: s.pop("blocks.3.mlp.fc2.bias"))
    with pytest.raises(DiTError, match=r"lacks 1 key \('blocks\.3\.mlp\.fc2\.bias'\)"):
        load_dit(MODEL, IMAGE_SIZE, ckpt=path)


def test_extra_key_is_named(files, tmp_path):
    path = save_edited(files, tmp_path, lambda s: s.update({"blocks.0.attn.q_norm.weight": torch.ones(64)}))
    with pytest.raises(DiTError, match=r"has 1 key \('blocks\.0\.attn\.q_norm\.weight'\)"):
        load_dit(MODEL, IMAGE_SIZE, ckpt=path)


def test_wrong_shape_is_named(files, tmp_path):
    table = {"y_embedder.embedding_table.weight": torch.ones(1000, 384)}  # the null-class row lost
    path = save_edited(files, tmp_path, lambda s: s.update(table))
    expected = r"'y_embedder\.embedding_table\.weight' has shape \(1000, 384\), .* expects \(1001, 384\)"
    with pytest.raises(DiTError, match=expected):
        load_dit(MODEL, IMAGE_SIZE, ckpt=path)


@pytest.mark.parametrize(
    "model, image_size, message",
    [
        ("S/4", 256, ("this checkpoint is DiT-S/8 at 256, you asked for DiT-S/4 at 256; "
                      "pass --model S/8 --image-size 256")),
        ("S/8", 512, ("this checkpoint is DiT-S/8 at 256, you asked for DiT-S/8 at 512; "
                      "pass --model S/8 --image-size 256")),
        ("B/8", 256, "this checkpoint is DiT-S/8 at 256, you asked for DiT-B/8 at 256"),
    ],
)
def test_other_config_is_recognised(files, model, image_size, message):
    with pytest.raises(DiTError) as error:
        load_dit(model, image_size, ckpt=str(files / "plain.pt"))
    print(error.value)
    assert str(error.value) == message or str(error.value).startswith(message)


def test_xl2_512_is_recognised_without_building_it(tmp_path):
    """Only the shape-bearing keys of an XL/2 512 file: recognition happens before any model is built."""
    shapes = {"x_embedder.proj.weight": torch.zeros(1152, 4, 2, 2), "pos_embed": torch.zeros(1, 1024, 1152)}
    shapes.update({f"blocks.{i}.attn.qkv.bias": torch.zeros(1) for i in range(28)})
    torch.save(shapes, tmp_path / "xl.pt")
    with pytest.raises(DiTError, match="^this checkpoint is DiT-XL/2 at 512, you asked for DiT-XL/2 at 256; "
                                       "pass --model XL/2 --image-size 512$"):
        load_dit("XL/2", 256, ckpt=str(tmp_path / "xl.pt"))


def test_unknown_architecture_is_described(files, tmp_path):
    patch_embed = {"x_embedder.proj.weight": torch.ones(100, 4, 8, 8)}
    path = save_edited(files, tmp_path, lambda s: s.update(patch_embed))
    with pytest.raises(DiTError, match=r"an unknown DiT \(depth 12, hidden size 100, patch 8\)"):
        load_dit(MODEL, IMAGE_SIZE, ckpt=path)


@pytest.mark.parametrize("name", ["plain.pt", "model.safetensors", "0050000.pt"])
def test_truncated_file(files, tmp_path, name):
    data = (files / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DiTError, match="truncated or corrupt") as error:
        load_dit(MODEL, IMAGE_SIZE, ckpt=str(tmp_path / name))
    print(error.value)
    assert "\n" not in str(error.value)


def test_files_that_are_not_checkpoints(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "cat.png")
    (tmp_path / "notes.pt").write_text("these are not weights\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("cat.png", "notes.pt", "empty.pt"):
        with pytest.raises(DiTError, match="is not a DiT checkpoint") as error:
            load_dit(MODEL, IMAGE_SIZE, ckpt=str(tmp_path / name))
        print(error.value)
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(DiTError, match="holds a list, not a DiT state dict"):
        load_dit(MODEL, IMAGE_SIZE, ckpt=str(tmp_path / "list.pt"))
    with pytest.raises(DiTError, match="not found"):
        load_dit(MODEL, IMAGE_SIZE, ckpt=str(tmp_path / "missing.pt"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(DiTError, match="not a diffusers DiT model"):
        load_dit(MODEL, IMAGE_SIZE, ckpt=str(tmp_path / "folder"))


class _OpensAFile:
    """A pickle payload: unpickling it would call open(marker, "w")."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save({"pos_embed": torch.zeros(1), "payload": _OpensAFile(marker)}, tmp_path / "evil.pt")
    with pytest.raises(DiTError, match="refusing to load .*evil.pt: it would unpickle .*open") as error:
        load_dit(MODEL, IMAGE_SIZE, ckpt=str(tmp_path / "evil.pt"))
    print(error.value)
    assert not marker.exists()


def test_auto_exists_only_for_xl2():
    with pytest.raises(DiTError, match="only DiT-XL/2 has released weights, not DiT-S/8; use --random-init"):
        load_dit(MODEL, IMAGE_SIZE, ckpt="auto")


@pytest.fixture
def closed_port_url(monkeypatch, tmp_path):
    """The official URL pointed at a closed local port (connection refused), cache in tmp_path."""
    monkeypatch.setattr(download, "OFFICIAL_URL", "http://127.0.0.1:9/{name}")
    monkeypatch.setenv("DIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_auto_offline_says_what_to_do(closed_port_url):
    with pytest.raises(DiTError) as error:
        load_dit("XL/2", 512, ckpt="auto")
    message = str(error.value)
    print(message)
    assert message.startswith("cannot download http://127.0.0.1:9/DiT-XL-2-512x512.pt: ")
    assert "--ckpt PATH" in message and "--random-init SEED" in message
    assert not any(closed_port_url.iterdir())  # no half-written file left behind


def test_auto_uses_the_cache_without_network(closed_port_url):
    cached = closed_port_url / "DiT-XL-2-256x256.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"cached")
    path, url = download.fetch_official(get_config("XL/2"), 256)
    assert (path, url) == (cached, "http://127.0.0.1:9/DiT-XL-2-256x256.pt")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_from_a_local_server(tmp_path):
    """A real HTTP download (from localhost): progress bar, temporary name, then the file."""
    (tmp_path / "served").mkdir()
    data = torch.randint(0, 256, (3 << 20,), dtype=torch.uint8).numpy().tobytes()  # 3 chunks
    (tmp_path / "served" / "DiT-XL-2-256x256.pt").write_bytes(data)
    handler = functools.partial(_QuietHandler, directory=str(tmp_path / "served"))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/DiT-XL-2-256x256.pt"
        path = download.download(url, tmp_path / "cache" / "DiT-XL-2-256x256.pt")
        server.shutdown()
    assert path.read_bytes() == data
    assert [p.name for p in path.parent.iterdir()] == ["DiT-XL-2-256x256.pt"]  # no .part left


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return constants


def test_hf_offline_env(empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = r"^cannot fetch hf:facebook/DiT-XL-2-256 .*HF_HUB_OFFLINE .*--random-init SEED"
    with pytest.raises(DiTError, match=expected) as error:
        load_dit("XL/2", 256, ckpt="hf:facebook/DiT-XL-2-256")
    print(error.value)


def test_hf_unreachable(empty_hub_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(empty_hub_cache, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(empty_hub_cache, "ENDPOINT", "http://127.0.0.1:9")
    expected = r"^cannot fetch hf:facebook/DiT-XL-2-256 from the Hugging Face hub: .*offline\?"
    with pytest.raises(DiTError, match=expected) as error:
        load_dit("XL/2", 256, ckpt="hf:facebook/DiT-XL-2-256")
    print(error.value)


def test_hf_fetches_only_the_transformer(files, reference, monkeypatch):
    """The hub glue, with snapshot_download replaced by the local pipeline folder."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, allow_patterns, local_files_only):
        calls.append((repo_id, allow_patterns))
        return str(files / "pipeline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = load_dit(MODEL, IMAGE_SIZE, ckpt="hf:someone/DiT-S-8-256")
    assert loaded.source == "hf:someone/DiT-S-8-256"
    assert torch.equal(outputs(loaded, reference[1]), reference[2])
    [(repo_id, patterns)] = calls
    assert repo_id == "someone/DiT-S-8-256"
    assert {"transformer/config.json", "transformer/diffusion_pytorch_model.safetensors"} <= set(patterns)
    assert not any(".bin" in p or "fp16" in p for p in patterns)
