"""How a speed setting earns its place: the measures the yardstick (benchmarks/quality.py) and the tuner share.

    judge       the population judge: class accuracy and Fréchet feature distance of a sample set
    fidelity    paired fidelity: each sample against its reference sample of the same seed and label
    reference   the reference rule: which setting a point is compared with, pair by pair
    bootstrap   95% bootstrap intervals of both kinds of measure
    frechet     the Fréchet distance between feature Gaussians

Nothing here imports benchmarks/ (floors: dit_ref <- runtime <- benchmarks).
"""
