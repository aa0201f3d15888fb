import json
import shutil

import pytest
import torch

import captionkit
from captionkit.checkpoint import load_checkpoint, save_checkpoint
from captionkit.data.shapes import read_shapes
from captionkit.errors import CheckpointError


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
