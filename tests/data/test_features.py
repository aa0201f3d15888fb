import numpy as np
import pytest
import torch

from captionkit.config import EncoderConfig
from captionkit.data.features import FEATURES, INDEX, FeatureStore, encoder_key, extract_features
from captionkit.data.images import load_image
from captionkit.data.shapes import read_shapes
from captionkit.errors import CaptionKitError
from captionkit.models.encoders import build_encoder
from captionkit.train.fit import fit


def _encoder(seed=0):
    torch.manual_seed(seed)
    return build_encoder(EncoderConfig(name="shapes_cnn", trainable=False)).eval()


def test_cache_matches_the_encoder(shapes_root, tmp_path):
    records = read_shapes(shapes_root)[:10]
    enc = _encoder()
    store = extract_features(records, enc, tmp_path / "c", batch_size=4, num_workers=0,
                             progress=False)
    with torch.no_grad():
        ref = enc(torch.stack([enc.preprocess(load_image(r.image)) for r in records[:3]]))
    for i in range(3):
        got = store.get(records[i].image_id)
        assert got.shape == (36, 128)
        assert torch.allclose(got, ref[i], atol=2e-2, rtol=1e-2)  # fp16 storage


def test_resume_after_interruption_gives_the_same_cache(shapes_root, tmp_path, monkeypatch):
    records = read_shapes(shapes_root)[:12]
    enc = _encoder()
    clean = extract_features(records, enc, tmp_path / "clean", 4, 0, progress=False)
    import captionkit.data.features as F

    calls = {"n": 0}
    real_flush = np.memmap.flush

    def dying_flush(self):
        real_flush(self)
        calls["n"] += 1
        if calls["n"] == 3:  # after the second batch's features, before its done-marker
            raise KeyboardInterrupt

    monkeypatch.setattr(F.np.memmap, "flush", dying_flush)
    with pytest.raises(KeyboardInterrupt):
        extract_features(records, enc, tmp_path / "c", 4, 0, progress=False)
    monkeypatch.setattr(F.np.memmap, "flush", real_flush)
    assert not (tmp_path / "c" / INDEX).exists()
    with pytest.raises(CaptionKitError, match="no complete feature cache"):
        FeatureStore(tmp_path / "c")
    done = np.fromfile(tmp_path / "c" / "done.u8", np.uint8)
    assert done.sum() == 4  # only the first batch is marked done
    resumed = extract_features(records, enc, tmp_path / "c", 4, 0, progress=False)
    for r in records:
        assert torch.equal(resumed.get(r.image_id), clean.get(r.image_id))


def test_stale_or_corrupt_cache_is_refused(shapes_root, tmp_path):
    records = read_shapes(shapes_root)[:4]
    extract_features(records, _encoder(0), tmp_path / "c", 4, 0, progress=False)
    with pytest.raises(CaptionKitError, match="weights_sha256"):
        FeatureStore(tmp_path / "c", encoder_key(_encoder(1)))
    FeatureStore(tmp_path / "c", encoder_key(_encoder(0)))
    raw = bytearray((tmp_path / "c" / FEATURES).read_bytes())
    raw[10] ^= 0xFF
    (tmp_path / "c" / FEATURES).write_bytes(bytes(raw))
    with pytest.raises(CaptionKitError, match="checksum"):
        FeatureStore(tmp_path / "c")
    (tmp_path / "c" / FEATURES).write_bytes(bytes(raw[:-2]))
    with pytest.raises(CaptionKitError, match="bytes"):
        FeatureStore(tmp_path / "c")


def test_unreadable_images_are_listed_and_excluded(shapes_root, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(shapes_root, root)
    records = read_shapes(root)[:5]
    (root / records[2].image_id).write_bytes(b"garbage")
    store = extract_features(records, _encoder(), tmp_path / "c", 2, 0, progress=False)
    assert records[2].image_id not in store and records[1].image_id in store
    assert records[2].image in (tmp_path / "c" / "failed.txt").read_text()


def test_fit_from_the_cache(tiny_config, tmp_path):
    records = read_shapes(tiny_config.data.root)
    cfg = tiny_config.override(["encoder.trainable=false", f"data.feature_cache={tmp_path / 'fc'}",
                                "train.max_steps=3"])
    torch.manual_seed(cfg.train.seed)
    from captionkit.models.captioner import build_model

    enc = build_model(cfg, 10).encoder  # the encoder fit() will build (same seed)
    extract_features(records, enc, tmp_path / "fc", 8, 0, progress=False)
    result = fit(cfg, progress=False)
    assert result.history[0]["step"] == 3
    with pytest.raises(CaptionKitError, match="frozen encoder"):
        fit(cfg.override(["encoder.trainable=true"]), progress=False)


def test_a_cache_of_another_dataset_is_named_as_such(shapes_root, tmp_path, tiny_config):
    records = read_shapes(shapes_root)
    enc = _encoder()
    extract_features(records[:10], enc, tmp_path / "c", 4, 0, progress=False)
    from captionkit.data.dataset import usable_records

    store = FeatureStore(tmp_path / "c", encoder_key(enc))
    with pytest.raises(CaptionKitError, match="belongs to another dataset.*extract-features.*"
                       "data.feature_cache=null"):
        usable_records(records, store)
    kept, missing = usable_records(records[:10], store)  # the cache's own images: all kept
    assert len(kept) == 10 and missing == []


def test_an_identical_rerun_is_up_to_date_and_other_images_are_refused(shapes_root, tmp_path):
    records = read_shapes(shapes_root)[:8]
    enc = _encoder()
    first = extract_features(records, enc, tmp_path / "c", 4, 0, progress=False)
    assert not first.up_to_date
    again = extract_features(records, enc, tmp_path / "c", 4, 0, progress=False)
    assert again.up_to_date and again.image_ids == first.image_ids
    with pytest.raises(CaptionKitError, match="feature cache of other images"):
        extract_features(read_shapes(shapes_root)[8:16], enc, tmp_path / "c", 4, 0,
                         progress=False)
