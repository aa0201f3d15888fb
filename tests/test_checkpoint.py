import json
import shutil
from pathlib import Path

import pytest
import torch

import captionkit
from captionkit.checkpoint import load_checkpoint, save_checkpoint
from captionkit.config import Config
from captionkit.data.shapes import read_shapes
from captionkit.errors import CheckpointError
from captionkit.models.captioner import build_model

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_load_rebuilds_model_with_identical_captions(trained_checkpoint, shapes_root, tmp_path):
    model, cfg, vocab, meta = load_checkpoint(trained_checkpoint)
    assert meta["format_version"] == 1 and "BLEU-4" in meta["metrics"]
    copy = save_checkpoint(tmp_path / "copy", model, cfg, vocab, meta["epoch"], meta["metrics"])
    images = [r.image for r in read_shapes(shapes_root)[:6]]
    a = captionkit.load(trained_checkpoint).caption_batch(images, beam_size=2)
    b = captionkit.load(copy).caption_batch(images, beam_size=2)
    assert [r.text for r in a] == [r.text for r in b]
    assert all(abs(x.score - y.score) < 1e-6 for x, y in zip(a, b, strict=True))
    m2 = load_checkpoint(copy)[0]
    for (k, v), (k2, v2) in zip(model.state_dict().items(), m2.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_missing_parts_are_refused(trained_checkpoint, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(trained_checkpoint, bad)
    (bad / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="meta.json"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")


@pytest.mark.parametrize("breakage", ["no_vocab", "small_vocab", "bad_config", "bad_json"])
def test_inconsistent_metadata_is_refused(trained_checkpoint, tmp_path, breakage):
    bad = tmp_path / breakage
    shutil.copytree(trained_checkpoint, bad)
    meta = json.loads((bad / "meta.json").read_text())
    if breakage == "no_vocab":
        del meta["vocab"]
    elif breakage == "small_vocab":
        meta["vocab"]["itos"] = meta["vocab"]["itos"][:6]
    elif breakage == "bad_config":
        meta["config"]["decoder"]["hidden_dim"] = 7
    (bad / "meta.json").write_text("{oops" if breakage == "bad_json" else json.dumps(meta))
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)


def test_weights_file_is_safetensors_not_pickle(trained_checkpoint):
    head = (trained_checkpoint / "model.safetensors").read_bytes()[:16]
    assert not head.startswith(b"\x80")  # a pickle protocol header
    assert sorted(p.name for p in trained_checkpoint.iterdir()) == ["meta.json", "model.safetensors"]


@pytest.mark.parametrize("decoder", ["lstm", "gru", "transformer"])
def test_weights_keep_the_names_and_shapes_of_format_1(decoder):
    """Old checkpoints still load: every model builds the parameter names and shapes that
    format-1 checkpoints were written with (recorded from the code before the package was
    reorganised, tests/fixtures/state_dict_v1.json)."""
    want = json.loads((FIXTURES / "state_dict_v1.json").read_text())[decoder]
    cfg = Config().override([f"decoder.name={decoder}", "decoder.embed_dim=16",
                             "decoder.hidden_dim=32", "decoder.attention_dim=16"])
    vocab_size = len(json.loads((FIXTURES / "checkpoint_v1" / "meta.json").read_text())
                     ["vocab"]["itos"])  # the recorded models' vocabulary
    got = {k: list(v.shape) for k, v in build_model(cfg, vocab_size).state_dict().items()}
    assert got == want


def test_a_format_1_checkpoint_loads(tmp_path):
    """The metadata an older captionkit wrote (tests/fixtures/checkpoint_v1/meta.json) loads
    and validates, with weights of the recorded names."""
    folder = tmp_path / "old"
    folder.mkdir()
    shutil.copy(FIXTURES / "checkpoint_v1" / "meta.json", folder / "meta.json")
    meta = json.loads((folder / "meta.json").read_text())
    cfg = Config.from_dict(meta["config"])
    torch.manual_seed(0)
    model = build_model(cfg, len(meta["vocab"]["itos"]))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"))
    loaded, cfg2, vocab, meta2 = load_checkpoint(folder)
    assert cfg2 == cfg and meta2["epoch"] == 3 and len(vocab) == len(meta["vocab"]["itos"])
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_an_unknown_decoder_in_a_checkpoint_is_a_checkpoint_error(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    meta = json.loads((FIXTURES / "checkpoint_v1" / "meta.json").read_text())
    meta["config"]["decoder"]["name"] = "from_the_future"
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="from_the_future"):
        load_checkpoint(folder)
