from PIL import Image

import captionkit
from captionkit.data.shapes import read_shapes
from captionkit.infer.captioner import Captioner
from captionkit.models.decoders import list_decoders
from captionkit.models.encoders import list_encoders


def test_load_and_caption_a_path_and_a_pil_image(trained_checkpoint, shapes_root):
    cap = captionkit.load(trained_checkpoint)
    path = read_shapes(shapes_root)[0].image
    res = cap.caption(path)
    assert isinstance(res.text, str) and res.words == res.text.split()
    assert res.attention.shape == (len(res.words), *cap.grid)
    assert res.image.size == (96, 96)
    same = cap.caption(Image.open(path))
    assert same.text == res.text


def test_beam_alternatives(trained_checkpoint, shapes_root):
    cap = captionkit.load(trained_checkpoint)
    res = cap.caption(read_shapes(shapes_root)[1].image, beam_size=3)
    assert len(res.alternatives) == 3 and res.alternatives[0][0] == res.text
    scores = [s for _, s in res.alternatives]
    assert scores == sorted(scores, reverse=True)


def test_listing_functions():
    assert captionkit.list_encoders() == list_encoders()
    assert "shapes_cnn" in captionkit.list_encoders()
    assert captionkit.list_decoders() == list_decoders()


def test_fast_encoder_path_matches_eager(trained_checkpoint, shapes_root):
    import torch

    fast = captionkit.load(trained_checkpoint)
    eager = Captioner.from_checkpoint(trained_checkpoint)
    eager.fast = False
    paths = [r.image for r in read_shapes(shapes_root)[:3]]
    x = torch.stack([fast.preprocess(Image.open(p).convert("RGB")) for p in paths])
    assert torch.allclose(fast.encode(x), eager.encode(x), atol=1e-4)  # batch 3 -> trace of 4
    assert [r.text for r in fast.caption_batch(paths, beam_size=2)] == \
        [r.text for r in eager.caption_batch(paths, beam_size=2)]
    assert set(fast._traced) == {4}
