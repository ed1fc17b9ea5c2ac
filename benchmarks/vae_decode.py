"""The SD VAE decoder on this machine: ms per image per backend and precision, its memory, and its share of a
full image; and the measurements that chose the decoder graph's float32 islands.

    python benchmarks/vae_decode.py --image-size 256,512 --json out.json          # decode figures + the share
    python benchmarks/vae_decode.py --islands --json islands.json                 # what the islands change
    python benchmarks/vae_decode.py --activations --vae mse                        # float16 headroom per block

Decode: each setting (torch: the runtime's PyTorch VAE, float32 eager; BACKEND-PRECISION: the decoder graph of
dit-export --vae in that runtime) runs in a fresh process: ms per image at batch 1 (the fastest of --repeats
calls after --warmup, the least disturbed by other load on a shared machine; the median beside it), and the
process's peak memory; the PyTorch VAE also at a full chunk (dit_ref.vae.DECODE_PIXELS).
Weights: --vae (default random, the SD VAE's architecture: speed does not depend on the values). The share of
one image: decode / (denoiser calls x step + decode) at DDPM 250, DDIM 25 and DPM++ 20, with a guided XL/2 step
at batch 1 measured here in PyTorch eager float32 (random weights).
"""

import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from benchmarks.measure import peak_memory_mb
from dit_ref.machine.cpu import cpu_summary

SETTINGS = ("torch", "onnxruntime-fp32", "onnxruntime-fp16", "openvino-fp32", "openvino-fp16", "openvino-bf16")
SAMPLERS = (("ddpm", 250), ("ddim", 25), ("dpm++", 20))


def package_versions() -> dict:
    from dit_ref.machine.gpu_stack import installed

    return {name: installed(name) for name in ("torch", "diffusers", "onnxruntime", "openvino")}


def measure(spec: dict) -> dict:
    """One setting in this process: {"ms_per_image", "peak_mb", ...}."""
    from dit_ref.contract import read_decoder_manifest
    from runtime.vae import decode, load_vae

    torch.set_num_threads(spec["threads"])
    size, batch = spec["image_size"], spec["batch"]
    latents = torch.randn(batch, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    if spec["setting"] == "torch":
        vae = load_vae(spec["vae"])

        def run():
            decode(vae, latents, batch_size=batch)
    else:
        from dit_ref.runners import open_runner

        path = Path(spec["graph"])
        runner = open_runner(path, spec["setting"].split("-")[0], "cpu", spec["threads"], read_decoder_manifest(path))

        def run():
            runner.run({"latents": latents})
    loaded_mb = peak_memory_mb(torch.device("cpu"))
    times = []
    for index in range(spec["warmup"] + spec["repeats"]):
        start = time.perf_counter()
        with torch.inference_mode():
            run()
        if index >= spec["warmup"]:
            times.append(1000 * (time.perf_counter() - start) / batch)
    return {**spec, "ms_per_image": min(times), "median_ms_per_image": statistics.median(times), "times_ms": times,
            "loaded_mb": loaded_mb,
            "peak_mb": peak_memory_mb(torch.device("cpu")), "load_average": os.getloadavg()[0]}


def in_fresh_process(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise click.ClickException(f"{spec['setting']} at {spec['image_size']} px failed: {done.stderr[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def decoder_graphs(vae: str, sizes: list[int], precisions: set[str], work_dir: Path) -> dict:
    """(precision, size) -> the decoder graph, exported once into work_dir."""
    from export.vae_export import decoder_file_name, export_decoder

    graphs = {}
    for size in sizes:
        for precision in sorted(precisions):
            path = work_dir / decoder_file_name(vae, size, precision)
            if not path.is_file():
                export_decoder(vae, size, precision=precision, out=work_dir, engine="skip")
            graphs[(precision, size)] = path
    return graphs


def xl2_step_ms(image_size: int, threads: int, repeats: int = 3) -> float:
    """ms of one guided XL/2 call at batch 1 (two rows through the transformer), PyTorch eager float32: the
    fastest of `repeats` after one warm-up, as the decode figures."""
    from dit_ref import build_model, randomize_weights_
    from runtime.backends.torch_backend import TorchDenoiser

    torch.set_num_threads(threads)
    model = randomize_weights_(build_model("XL/2", image_size), 0).eval().requires_grad_(False)
    denoiser = TorchDenoiser(model, device="cpu", cfg_channels=3)
    x = torch.randn(1, *denoiser.latent_shape)
    inputs = (x, torch.tensor([500]), torch.tensor([207]), torch.tensor([4.0]))
    times = []
    for index in range(1 + repeats):
        start = time.perf_counter()
        denoiser(*inputs)
        if index:
            times.append(1000 * (time.perf_counter() - start))
    return min(times)


def shares(decode_ms: float, step_ms: float) -> dict:
    """The decoder's share of one image's time for each sampler (its denoiser calls)."""
    from runtime.sampling import sampler_from_name

    result = {}
    for name, steps in SAMPLERS:
        calls = sampler_from_name(name, steps).num_calls
        result[f"{name} {steps}"] = decode_ms / (calls * step_ms + decode_ms)
    return result


def run_decode(vae, sizes, settings, threads, warmup, repeats, work_dir) -> list[dict]:
    precisions = {setting.split("-")[1] for setting in settings if setting != "torch"}
    graphs = decoder_graphs(vae, sizes, precisions, work_dir)
    records = []
    for size in sizes:
        for setting in settings:
            spec = {"setting": setting, "image_size": size, "batch": 1, "vae": vae, "threads": threads,
                    "warmup": warmup, "repeats": repeats}
            if setting != "torch":
                spec["graph"] = str(graphs[(setting.split("-")[1], size)])
            records.append(in_fresh_process(spec))
            print(f"{size} px {setting:<18} {records[-1]['ms_per_image']:9.1f} ms/image  peak "
                  f"{records[-1]['peak_mb']:7.0f} MB", flush=True)
        from dit_ref.vae import chunk_size

        chunk = chunk_size(size)
        records.append(in_fresh_process({"setting": "torch", "image_size": size, "batch": chunk, "vae": vae,
                                         "threads": threads, "warmup": 0, "repeats": 1}))
        print(f"{size} px torch, a chunk of {chunk}: peak {records[-1]['peak_mb']:.0f} MB (after loading "
              f"{records[-1]['loaded_mb']:.0f} MB)", flush=True)
    return records


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--image-size", "sizes", default="256,512", show_default=True, help="Comma list of image sizes.")
@click.option("--settings", "setting_list", default=",".join(SETTINGS), show_default=True)
@click.option("--vae", default="random", show_default=True, help="ema | mse | DIR | random.")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--warmup", type=int, default=1, show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--islands", is_flag=True, help="Measure the fp16/bf16 graphs' error with and without the islands.")
@click.option("--activations", is_flag=True, help="Print each decoder block's max |activation| and exit.")
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path.home() / ".cache/dit-deploy/vae-benchmark",
              show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path))
def main(sizes, setting_list, vae, threads, warmup, repeats, islands, activations, work_dir, json_path):
    """Measure the VAE decoder on this machine."""
    sizes = [int(size) for size in sizes.split(",")]
    if activations:
        from benchmarks.vae_islands import activation_maxima

        for size in sizes:
            for name, value in activation_maxima(vae, size).items():
                print(f"{size} px {name:<22} max |x| {value:9.3g}   (float16: {65504 / value:8.1f}x headroom; "
                      f"its square {256 / value:6.2f}x)")
        return
    record = {"date": date.today().isoformat(), "machine": cpu_summary(), "threads": threads, "vae": vae,
              "versions": package_versions(), "load_average_at_start": os.getloadavg()[0]}
    work_dir.mkdir(parents=True, exist_ok=True)
    if islands:
        from benchmarks.vae_islands import measure_islands

        record["islands"] = measure_islands(vae, sizes[0], work_dir)
    else:
        record["decode"] = run_decode(vae, sizes, setting_list.split(","), threads, warmup, repeats, work_dir)
        record["xl2_step_ms"] = {size: xl2_step_ms(size, threads) for size in sizes}
        record["share"] = {f"{item['setting']} {item['image_size']}": shares(
            item["ms_per_image"], record["xl2_step_ms"][item["image_size"]]) for item in record["decode"]
            if item["batch"] == 1}
        print(json.dumps({"xl2_step_ms": record["xl2_step_ms"], "share": record["share"]}, indent=1))
    if json_path:
        json_path.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--measure":
        print(json.dumps(measure(json.loads(sys.argv[2]))))
    else:
        main()
