"""Batched augmentations as tensor operations on the training device (CPU or CUDA).

The paper's set (flip, affine, colour jitter, random erasing, random grayscale) plus what
cameras do to faces: small faces scaled up (down-up resampling), blur and sensor noise.
Every transform works on a float batch in [0, 1], shape (N, 3, H, W).

Example:
    >>> import torch
    >>> x = torch.rand(4, 3, 112, 112)
    >>> y = augment(x, torch.Generator().manual_seed(0))
    >>> y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    flip: float = 0.5
    max_rotate_deg: float = 12.0
    scale: tuple[float, float] = (0.9, 1.12)
    max_translate: float = 0.06
    brightness: float = 0.35
    contrast: float = 0.35
    saturation: float = 0.35
    grayscale: float = 0.15
    downscale: float = 0.25  # probability of a down-up resample to a small face
    downscale_px: tuple[int, int] = (24, 64)
    blur: float = 0.1
    noise: float = 0.15
    noise_std: float = 0.04
    erase: float = 0.25
    # Horizontal squeeze of up to this fraction (a face turned sideways looks narrower); 0: none.
    squeeze: float = 0.0

    # What each name of ``without`` switches off (for ablations: footfall-train --augment-off).
    GROUPS: ClassVar[dict[str, dict]] = {
        "flip": {"flip": 0.0},
        "affine": {"max_rotate_deg": 0.0, "scale": (1.0, 1.0), "max_translate": 0.0},
        "color": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0},
        "grayscale": {"grayscale": 0.0},
        "downscale": {"downscale": 0.0},
        "blur": {"blur": 0.0},
        "noise": {"noise": 0.0},
        "erase": {"erase": 0.0},
        "squeeze": {"squeeze": 0.0},
    }

    @classmethod
    def strong(cls) -> AugmentConfig:
        """``footfall-train --augment-strong``: more grayscale photos, tilt and turned faces (the
        cross-source set's grayscale news photos and profiles; issue 18).

        >>> AugmentConfig.strong().grayscale, AugmentConfig.strong().squeeze
        (0.4, 0.25)
        """
        return cls(grayscale=0.4, max_rotate_deg=25.0, squeeze=0.25)

    def without(self, groups: list[str]) -> AugmentConfig:
        """This config with the named augmentation groups switched off.

        >>> AugmentConfig().without(["blur", "flip"]).blur, AugmentConfig().without([]).blur
        (0.0, 0.1)
        """
        unknown = set(groups) - set(self.GROUPS)
        if unknown:
            raise ValueError(f"unknown augmentation {sorted(unknown)}; choose from {', '.join(self.GROUPS)}")
        changes = {k: v for g in groups for k, v in self.GROUPS[g].items()}
        return dataclasses.replace(self, **changes)


def _rand(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen).to(device)


def augment(x: torch.Tensor, gen: torch.Generator, cfg: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    n, _, h, w = x.shape
    dev = x.device
    # Flip, rotation, scale and translation in one affine resample.
    angle = (_rand(n, gen, dev) * 2 - 1) * math.radians(cfg.max_rotate_deg)
    scale = cfg.scale[0] + _rand(n, gen, dev) * (cfg.scale[1] - cfg.scale[0])
    flip = torch.where(_rand(n, gen, dev) < cfg.flip, -1.0, 1.0)
    tx, ty = ((_rand(n, gen, dev) * 2 - 1) * cfg.max_translate * 2 for _ in range(2))
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    if cfg.squeeze > 0:  # drawn only when on, so the default's random stream stays as it was
        narrow = 1 - _rand(n, gen, dev) * cfg.squeeze
        theta[:, 0] = theta[:, 0] / narrow.view(n, 1)  # a wider source span: a narrower face
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # Small faces: resample down to 24-64 px and back up.
    pick = _rand(n, gen, dev) < cfg.downscale
    if pick.any():
        px = int(torch.randint(cfg.downscale_px[0], cfg.downscale_px[1] + 1, (1,), generator=gen))
        small = F.interpolate(x[pick], size=(px, px), mode="area")
        x[pick] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)

    # Colour: brightness, contrast, saturation; then grayscale (FER is grey, cameras are colour).
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    sat = 1 + (_rand(n, gen, dev) * 2 - 1) * cfg.saturation
    x = gray + (x - gray) * sat.view(n, 1, 1, 1)
    con = 1 + (_rand(n, gen, dev) * 2 - 1) * cfg.contrast
    mean = gray.mean(dim=(2, 3), keepdim=True)
    x = mean + (x - mean) * con.view(n, 1, 1, 1)
    bri = 1 + (_rand(n, gen, dev) * 2 - 1) * cfg.brightness
    x = x * bri.view(n, 1, 1, 1)
    to_gray = (_rand(n, gen, dev) < cfg.grayscale).view(n, 1, 1, 1)
    x = torch.where(to_gray, (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x), x)

    # Blur (3x3 or 5x5 box-ish Gaussian) and sensor noise.
    pick = _rand(n, gen, dev) < cfg.blur
    if pick.any():
        k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=dev)
        k = (k[:, None] * k[None, :]) / 256.0
        x[pick] = F.conv2d(F.pad(x[pick], (2, 2, 2, 2), mode="replicate"), k.expand(3, 1, 5, 5), groups=3)
    pick = _rand(n, gen, dev) < cfg.noise
    if pick.any():  # noise for the picked faces only: a whole batch of normals costs 15 % of augment()
        x[pick] = x[pick] + torch.randn(x[pick].shape, generator=gen).to(dev) * cfg.noise_std

    # Random erasing: one rectangle of 2-20 % of the face filled with noise.
    pick = _rand(n, gen, dev) < cfg.erase
    for i in torch.nonzero(pick).flatten().tolist():
        area = (0.02 + 0.18 * float(torch.rand(1, generator=gen))) * h * w
        ratio = math.exp(float(torch.empty(1).uniform_(math.log(0.3), math.log(3.3), generator=gen)))
        eh, ew = min(h, int(round(math.sqrt(area * ratio)))), min(w, int(round(math.sqrt(area / ratio))))
        top = int(torch.randint(0, h - eh + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - ew + 1, (1,), generator=gen))
        x[i, :, top:top + eh, left:left + ew] = torch.rand((3, eh, ew), generator=gen).to(dev)
    return x.clamp_(0.0, 1.0)
