"""A small convolutional image encoder: the inductive bias a tiny ViT lacks.

CLIP (Radford et al. 2021, §2.4) trains ResNet image towers next to its ViTs; the ViT paper
(Dosovitskiy et al. 2021, §3.1 "Inductive bias") notes that a ViT has much less image-specific
structure than a CNN -- locality and translation equivariance must be learned from data. On
the shapes world that is measurable: objects are smaller than one 16x16 patch, and a tiny ViT
does not learn *shape* in a lecture's budget, while a few 3x3 convolutions with max-pooling do
(notebooks 00 and 01).

:class:`ConvNet` is a much smaller stand-in for CLIP's ResNets: a 4x4 stride-4 convolution
(a "patchify" stem, as in ConvNeXt; it sees exactly what a 4-pixel ViT patch sees), then
``len(widths) - 1`` stages of a 3x3 convolution + ReLU with a 2x2 max-pool between stages, and a
global max-pool over positions (CLIP's ResNets end in attention pooling instead; max-pooling is
the simplest translation-invariant read-out and learns fastest here)::

    (B, C, H, W) -> 4x4 conv s4 -> [3x3 conv -> pool] ... -> 3x3 conv -> max over (h, w) -> (B, D)

with ``D = widths[-1]``. What a ViT lacks is not the patchify but the 3x3 locality and the
pooling. ``features`` returns the last feature map (B, D, h, w), e.g. to see where an image's
evidence is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

__all__ = ["ConvNet", "ConvNetConfig"]


@dataclass
class ConvNetConfig:
    """Sizes of :class:`ConvNet` (defaults: the shapes-world tower of ``clip_tiny_cnn``).

    image_size: side of the square images it is built for (only checked to be large enough:
        the network is fully convolutional and accepts any size that survives the pooling).
    in_chans: input channels. widths: output channels of each stage; ``dim = widths[-1]``.
    """

    image_size: int = 64
    in_chans: int = 3
    widths: Sequence[int] = (32, 32, 64)

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if not self.widths or min(self.widths) < 1:
            raise ValueError(
                f"ConvNetConfig.widths: expected positive channel counts, got {self.widths}"
            )
        if self.in_chans < 1:
            raise ValueError(f"ConvNetConfig.in_chans must be >= 1, got {self.in_chans}")
        if self.image_size < self.min_image_size:
            raise ValueError(
                f"ConvNetConfig: image_size {self.image_size} is too small for "
                f"{len(self.widths)} stages (needs >= {self.min_image_size})"
            )

    @property
    def dim(self) -> int:
        """Size D of the pooled feature."""
        return self.widths[-1]

    @property
    def min_image_size(self) -> int:
        """Smallest image side that leaves at least one position after the last pool."""
        return 4 * 2 ** max(len(self.widths) - 2, 0)


class ConvNet(nn.Module):
    """Patchify stem, 3x3 conv + ReLU stages with max-pools, global max-pool: (B, D)."""

    def __init__(self, config: ConvNetConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = replace(config or ConvNetConfig(), **overrides)
        self.config = cfg
        layers: list[nn.Module] = [
            nn.Conv2d(cfg.in_chans, cfg.widths[0], 4, stride=4),  # (B, w0, H/4, W/4)
            nn.ReLU(),
        ]
        for i in range(1, len(cfg.widths)):
            if i > 1:
                layers.append(nn.MaxPool2d(2))  # halve h and w between 3x3 stages
            layers += [nn.Conv2d(cfg.widths[i - 1], cfg.widths[i], 3, padding=1), nn.ReLU()]
        self.stages = nn.Sequential(*layers)

    def _check_images(self, images: Tensor) -> None:
        cfg = self.config
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != cfg.in_chans:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(
                f"ConvNet: expected images of shape (B, {cfg.in_chans}, H, W), got {shape}"
            )
        if not images.is_floating_point():
            raise TypeError(f"ConvNet: expected floating-point images, got dtype {images.dtype}")
        if min(images.shape[-2:]) < cfg.min_image_size:
            raise ValueError(
                f"ConvNet: images of {tuple(images.shape[-2:])} pixels are too small for "
                f"{len(cfg.widths)} stages (need >= {cfg.min_image_size} per side)"
            )

    def features(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> the last stage's feature map (B, D, H / 4 / 2^(S-2), W / ...)."""
        self._check_images(images)
        return self.stages(images)

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, D): the maximum of each channel over all positions."""
        return torch.amax(self.features(images), dim=(-2, -1))
