"""Every registered encoder with every registered decoder: shapes, backward, no NaN."""

import pytest
import torch

from captionkit.config import Config
from captionkit.models.captioner import build_model
from captionkit.models.decoders import list_decoders
from captionkit.models.encoders import list_encoders

SMALL = {"inceptionv3": 75, "densenet121": 64, "resnet50": 64, "resnet101": 64,
         "efficientnet_lite0": 64, "efficientnet_lite1": 64, "efficientnet_lite2": 64,
         "shapes_cnn": 96}


@pytest.mark.parametrize("decoder", list_decoders())
@pytest.mark.parametrize("encoder", list_encoders())
def test_encoder_decoder_pair_trains(encoder, decoder):
    torch.manual_seed(0)
    cfg = Config().override([f"encoder.name={encoder}", f"decoder.name={decoder}",
                             "decoder.embed_dim=8", "decoder.hidden_dim=16",
                             "decoder.attention_dim=8"])
    model = build_model(cfg, vocab_size=9).train()
    size = SMALL.get(encoder, model.encoder.preprocess.size)
    images = torch.randn(2, 3, size, size)
    tokens = torch.randint(0, 9, (3, 5))
    index = torch.tensor([0, 0, 1])  # two captions for image 0, one for image 1
    logits, alphas = model(tokens, index, pixels=images)
    assert logits.shape[:2] == (3, 5) and logits.shape[2] == 9
    assert alphas.shape[:2] == (3, 5) and torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_frozen_encoder_gets_no_gradient_and_stays_in_eval():
    cfg = Config().override(["encoder.trainable=false", "decoder.hidden_dim=16",
                             "decoder.attention_dim=8", "decoder.embed_dim=8"])
    model = build_model(cfg, vocab_size=9).train()
    assert not model.encoder.training and model.decoder.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
