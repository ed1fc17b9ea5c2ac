"""The runtime: denoiser backends, samplers, VAE decode and image output behind `dit-run`.

    from runtime.backends import load_denoiser
    from runtime.noise import OfficialNoise
    from runtime.samplers import sampler_from_name

    denoiser = load_denoiser("DiT-XL-2-256-fp16.onnx")  # or a .plan, or backend="torch", ckpt=...
    noise = OfficialNoise(seed=0, device=denoiser.device)
    x = noise.initial(8, denoiser.latent_size)
    ...

Heavy optional dependencies (tensorrt, onnxruntime, diffusers) load only when used.
"""
