"""The training code on a tiny slice: reproducible from the seed, and the loss falls (no training in CI)."""

import torch

from dit_ref import configs
from dit_ref.diffusion import q_sample, schedule_from_timesteps, training_losses
from dit_ref.model import DiT
from dit_ref.training import TrainSettings, official_init_, train


def tiny_data(n: int = 64):
    """n seeded 28x28 images in [-1, 1] made of a class-dependent bar, and their labels 0..9."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 10
    images = torch.full((n, 1, 28, 28), -1.0)
    for k, label in enumerate(labels):
        images[k, 0, 2 * label:2 * label + 6, 4:24] = 1.0
    return images + 0.05 * torch.randn(images.shape, generator=generator), labels


def test_same_seed_same_weights_and_the_loss_falls():
    images, labels = tiny_data()
    settings = TrainSettings(steps=40, batch_size=16, learning_rate=1e-3, seed=3, threads=1)
    ema_a, history_a = train(settings, images, labels)
    ema_b, history_b = train(settings, images, labels)
    assert all(torch.equal(a, b) for a, b in zip(ema_a.state_dict().values(), ema_b.state_dict().values()))
    assert [r["loss"] for r in history_a] == [r["loss"] for r in history_b]
    first, last = (sum(r["mse"] for r in part) / len(part) for part in (history_a[:10], history_a[-10:]))
    print(f"mse over the first 10 steps {first:.3f}, the last 10 {last:.3f}")
    assert last < 0.8 * first


def test_official_init_outputs_zero_and_losses_are_finite():
    # adaLN-Zero and the zero final layer: the freshly initialised model outputs exactly zero.
    model = official_init_(DiT(configs.get_config("fashion"), 28))
    x0, labels = tiny_data(4)
    t = torch.tensor([0, 10, 500, 999])
    noise = torch.randn_like(x0)
    schedule = schedule_from_timesteps(range(configs.NUM_TIMESTEPS))
    x_t = q_sample(schedule, x0, t, noise)
    output = model(x_t, t, labels)
    losses = training_losses(schedule, output, x0, x_t, t, noise)
    print({name: value.tolist() for name, value in losses.items()})
    assert torch.equal(output, torch.zeros_like(output))
    assert all(torch.isfinite(value).all() for value in losses.values())
    assert torch.allclose(losses["mse"], (noise**2).mean(dim=(1, 2, 3)))  # eps predicted as 0
