"""Per-sample seeding: a sample's picture does not depend on its batch, its batch size or its order."""

import numpy as np
import pytest

from dit_ref.errors import DiTError
from runtime.generate import generate
from runtime.sampling import sampler_from_name

LABELS = [1, None, 3, None, 5, 6]
BATCH_SIZE_TOLERANCE = 1e-5  # relative; float results may depend on the batch shape (matmul blocking)


def run(denoiser, labels, batch_size, first_index=0, sampler="ddpm", seeding="per-sample"):
    batches = list(generate(denoiser, labels, sampler_from_name(sampler, 3), seed=9, batch_size=batch_size,
                            first_index=first_index, seeding=seeding))
    return np.concatenate([b.samples for b in batches]), np.concatenate([b.labels for b in batches])


def test_a_slice_run_alone_equals_the_same_samples_of_the_whole_run(reference):
    whole, whole_labels = run(reference, LABELS, batch_size=2)
    part, part_labels = run(reference, LABELS[2:4], batch_size=2, first_index=2)
    assert np.array_equal(part, whole[2:4]) and np.array_equal(part_labels, whole_labels[2:4])


@pytest.mark.parametrize("sampler", ["ddpm", "euler-ancestral"])
def test_other_batch_sizes_give_the_same_samples_within_tolerance(reference, sampler):
    by_two, labels_two = run(reference, LABELS, batch_size=2, sampler=sampler)
    by_three, labels_three = run(reference, LABELS, batch_size=3, sampler=sampler)
    error = np.abs(by_two - by_three).max() / np.abs(by_two).max()
    print(f"{sampler}: per-sample seeding, batch 2 vs batch 3: max rel err {error:.2e}")
    assert np.array_equal(labels_two, labels_three) and error < BATCH_SIZE_TOLERANCE


def test_a_given_label_leaves_the_latents_as_a_drawn_one_would():
    # A drawn label is the same whether it was given or drawn: the latents do not move with it.
    from runtime.sampling.noise import PerSampleNoise

    given = PerSampleNoise(4, [7]).draw_batch([2], (4, 8, 8), 1000)
    drawn = PerSampleNoise(4, [7]).draw_batch([None], (4, 8, 8), 1000)
    assert np.array_equal(given[0].numpy(), drawn[0].numpy()) and given[1].item() == 2


def test_a_negative_seed_is_refused_for_per_sample_seeding(reference):
    with pytest.raises(DiTError, match=r"--seed must be 0\.\.\d+ with per-sample seeding, not -1"):
        next(generate(reference, [1], sampler_from_name("ddim", 1), seed=-1, seeding="per-sample"))


def test_unknown_seeding_is_refused(reference):
    with pytest.raises(DiTError, match="unknown seeding 'ddp'"):
        run(reference, LABELS, 2, seeding="ddp")
