"""Input preprocessing of the face model, defined once at training time.

The exporter writes these values into the model file's metadata; the inference backends
read them from there (never from this module), so a retrained model with other values
needs no code change in the services.
"""

from __future__ import annotations

import torch

INPUT_SIZE = 112
CHANNEL_ORDER = "RGB"
# On 0..255 pixel values: x = (pixel - MEAN) / STD.
MEAN = (127.5, 127.5, 127.5)
STD = (127.5, 127.5, 127.5)


def normalize_batch(x01: torch.Tensor) -> torch.Tensor:
    """Normalize a [0, 1] float RGB batch (N, 3, H, W) the way the model expects."""
    mean = torch.tensor(MEAN, device=x01.device).view(1, 3, 1, 1) / 255.0
    std = torch.tensor(STD, device=x01.device).view(1, 3, 1, 1) / 255.0
    return (x01 - mean) / std
