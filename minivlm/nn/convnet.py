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

__all__ = ["BasicBlock", "ConvNet", "ConvNetConfig", "ResNet", "ResNetConfig", "bilinear_sample",
           "box_position_features", "roi_align"]


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


# ---------------------------------------------------------------------------
# A small ResNet and its plain twin (He et al. 2016, "Deep Residual Learning")
# ---------------------------------------------------------------------------


@dataclass
class ResNetConfig:
    """Sizes of :class:`ResNet` (defaults: a 12-conv shapes-world tower, 64-px images -> 8x8).

    A 3x3 stem, then ``len(widths)`` stages of ``blocks`` basic blocks (two 3x3 convolutions
    each); every stage after the first halves the resolution (stride 2 in its first block).
    ``residual=False`` drops the skip connections: the *plain* network of the same depth
    (ResNet §4.1's "plain" baselines). ``norm`` is ``"batch"`` (the paper) or ``"none"``.
    Depth in convolutions: ``1 + 2 * blocks * len(widths)``.
    """

    in_chans: int = 3
    widths: Sequence[int] = (16, 32, 64)
    blocks: int = 2
    residual: bool = True
    norm: str = "batch"
    stem_stride: int = 2

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if not self.widths or min(self.widths) < 1 or self.blocks < 1:
            raise ValueError(
                f"ResNetConfig: expected positive widths and blocks >= 1, got widths="
                f"{self.widths}, blocks={self.blocks}"
            )
        if self.norm not in ("batch", "none"):
            raise ValueError(f"ResNetConfig.norm must be 'batch' or 'none', got {self.norm!r}")

    @property
    def dim(self) -> int:
        return self.widths[-1]

    @property
    def depth(self) -> int:
        """Number of convolutions on the longest path (the skips do not count)."""
        return 1 + 2 * self.blocks * len(self.widths)

    @property
    def stride(self) -> int:
        """Pixels per feature-map cell (the RoI-Align ``spatial_scale`` is 1 / stride)."""
        return self.stem_stride * 2 ** (len(self.widths) - 1)


def _norm(kind: str, c: int) -> nn.Module:
    return nn.BatchNorm2d(c) if kind == "batch" else nn.Identity()


class BasicBlock(nn.Module):
    """relu(F(x) + shortcut(x)), F = conv3x3-norm-relu-conv3x3-norm (ResNet Fig. 2); with
    ``residual=False`` it is relu(F(x)): the same layers without the skip."""

    def __init__(self, cin: int, cout: int, stride: int, residual: bool, norm: str) -> None:
        super().__init__()
        self.residual = residual
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=norm == "none")
        self.norm1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=norm == "none")
        self.norm2 = _norm(norm, cout)
        self.shortcut: nn.Module = nn.Identity()
        if residual and (stride != 1 or cin != cout):  # projection shortcut (option B, §3.3)
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          _norm(norm, cout))  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm2(self.conv2(torch.relu(self.norm1(self.conv1(x)))))  # (B, cout, h, w)
        return torch.relu(h + self.shortcut(x) if self.residual else h)


class ResNet(nn.Module):
    """Stem, stages of :class:`BasicBlock`, global average pool: (B, C, H, W) -> (B, D).

    ``features`` returns the last feature map (B, D, H / stride, W / stride): the grid that
    Pixel-BERT reads and that RoI-Align crops regions from.
    """

    def __init__(self, config: ResNetConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = replace(config or ResNetConfig(), **overrides)
        self.config = cfg
        w0 = cfg.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_chans, w0, 3, stride=cfg.stem_stride, padding=1,
                      bias=cfg.norm == "none"),
            _norm(cfg.norm, w0), nn.ReLU(),
        )  # fmt: skip
        blocks, cin = [], w0
        for i, w in enumerate(cfg.widths):
            for j in range(cfg.blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(cin, w, stride, cfg.residual, cfg.norm))
                cin = w
        self.blocks = nn.Sequential(*blocks)

    def features(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, D, H / stride, W / stride)."""
        if not isinstance(images, Tensor) or images.dim() != 4 or (
            images.shape[1] != self.config.in_chans
        ):
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(
                f"ResNet: expected images of shape (B, {self.config.in_chans}, H, W), got {shape}"
            )
        return self.blocks(self.stem(images))

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images).mean(dim=(-2, -1))  # (B, D)


# ---------------------------------------------------------------------------
# Region features: RoI-Align (He et al. 2017, "Mask R-CNN", §3) and box positions
# ---------------------------------------------------------------------------


def bilinear_sample(features: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Read a (C, H, W) map at real-valued points (x, y) in feature-cell units, where cell
    (i, j) has its centre at (j + 0.5, i + 0.5): (C, *x.shape). Points up to one cell outside
    the map are clamped to the border, as Mask R-CNN's RoIAlign does; further out they read 0."""
    C, H, W = features.shape
    x, y = x - 0.5, y - 0.5  # centre-of-cell coordinates: cell (i, j) at (j, i)
    outside = (y < -1) | (y > H) | (x < -1) | (x > W)
    x, y = x.clamp(0, W - 1), y.clamp(0, H - 1)
    x0, y0 = x.floor().long(), y.floor().long()
    x1, y1 = (x0 + 1).clamp(max=W - 1), (y0 + 1).clamp(max=H - 1)
    lx, ly = x - x0, y - y0  # weights of the right / lower neighbours
    f = features
    v = (f[:, y0, x0] * (1 - ly) * (1 - lx) + f[:, y0, x1] * (1 - ly) * lx
         + f[:, y1, x0] * ly * (1 - lx) + f[:, y1, x1] * ly * lx)  # fmt: skip
    return v.masked_fill(outside, 0.0)


def roi_align(
    features: Tensor, boxes: Tensor, output_size: int = 2, spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
) -> Tensor:  # fmt: skip
    """RoI-Align (Mask R-CNN §3): no rounding anywhere. Each box (x1, y1, x2, y2), in image
    pixels, is scaled by ``spatial_scale`` into feature cells and cut into an
    ``output_size``^2 grid of bins; each bin averages ``sampling_ratio``^2 bilinear samples
    at regularly spaced points inside it.

    features (B, C, H, W); boxes (B, N, 4) -> (B, N, C, output_size, output_size). Equal to
    ``torchvision.ops.roi_align(..., aligned=True)`` with a fixed ``sampling_ratio``.
    """
    if features.dim() != 4 or boxes.dim() != 3 or boxes.shape[-1] != 4 or (
        boxes.shape[0] != features.shape[0]
    ):
        raise ValueError(
            f"roi_align: expected features (B, C, H, W) and boxes (B, N, 4), got "
            f"{tuple(features.shape)} and {tuple(boxes.shape)}"
        )
    S, R = output_size, sampling_ratio
    b = boxes.to(features.dtype) * spatial_scale  # (B, N, 4) in feature cells
    x1, y1, x2, y2 = b.unbind(-1)  # each (B, N)
    # sample offsets inside the box: bin k, sample r -> (k + (r + 0.5) / R) / S of the side
    t = ((torch.arange(S, dtype=b.dtype)[:, None] + (torch.arange(R, dtype=b.dtype) + 0.5) / R)
         / S).flatten()  # (S*R,)  # fmt: skip
    xs = x1[..., None] + (x2 - x1)[..., None] * t  # (B, N, S*R)
    ys = y1[..., None] + (y2 - y1)[..., None] * t
    out = []
    for i in range(features.shape[0]):
        X = xs[i][:, None, :].expand(-1, S * R, -1)  # (N, S*R (rows), S*R (cols))
        Y = ys[i][:, :, None].expand(-1, -1, S * R)
        v = bilinear_sample(features[i], X, Y)  # (C, N, S*R, S*R)
        v = v.unflatten(2, (S, R)).unflatten(4, (S, R)).mean(dim=(3, 5))  # (C, N, S, S)
        out.append(v.transpose(0, 1))  # (N, C, S, S)
    return torch.stack(out)


def box_position_features(boxes: Tensor, image_size: float) -> Tensor:
    """UNITER's 7-d region position (§3.1): normalised (x1, y1, x2, y2, w, h, w*h); its first
    four are LXMERT's ``visual_pos``. boxes (..., 4) in pixels -> (..., 7)."""
    b = boxes / image_size
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    return torch.cat([b, w[..., None], h[..., None], (w * h)[..., None]], dim=-1)
