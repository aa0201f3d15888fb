"""Ensembles at decode time: beam search over the mean of several checkpoints' log-probabilities.

:class:`EnsembleDecoder` has the decoder contract (``init_state``/``step``), so the one beam
search of :mod:`captionkit.infer.decoding` drives it unchanged: its state is the members'
states side by side, and each step runs every member's step and returns the mean of their
log-softmax and the mean of their attention maps.

Members may differ in decoder and attention, but they share one vocabulary (the same tokens
in the same order) and one kind of encoder (the same name, input size, preprocessing, grid and
feature width), so one preprocessed image feeds every member. Members whose encoder weights
are identical (a frozen, shared encoder) share one encoding per image, which a feature cache
can supply; members with their own (fine-tuned) encoder weights each encode with their own
encoder (the features side by side on the last axis, each member reading its slice), and
refuse a feature cache. Anything else that differs is refused, naming the difference.

``captionkit.load([a, b])`` and ``captionkit evaluate/caption --checkpoint A --checkpoint B``
build ensembles; one checkpoint is exactly the single model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import torch
from torch import Tensor, nn

from captionkit.checkpoint import load_checkpoint, read_meta, resolve_checkpoint
from captionkit.config import Config, EncoderConfig
from captionkit.data.features import encoder_key, fast_inference
from captionkit.data.vocab import Vocabulary
from captionkit.errors import CaptionKitError, ConfigError
from captionkit.infer.captioner import BaseCaptioner, Captioner
from captionkit.models.captioner import CaptionModel
from captionkit.models.decoders import attention_decoders, has_sentinel
from captionkit.models.precision import DEFAULT_PRECISION

# encoder.* fields that only decide an encoder's weights (compared as weights, not as configs)
WEIGHT_FIELDS = ("pretrained", "weights", "trainable", "finetune_blocks")


def checkpoint_paths(checkpoint: str | Path | Sequence[str | Path]) -> list[str | Path]:
    """One checkpoint (a path) or several (a list or tuple of paths) as a list of paths."""
    if isinstance(checkpoint, (str, Path)):
        return [checkpoint]
    paths = list(checkpoint)
    if not paths:
        raise ConfigError("an ensemble needs at least one checkpoint")
    return paths


class EnsembleDecoder(nn.Module):
    """Several decoders behind the one decoder contract, for beam search and sampling.

    ``groups[i]`` says which slice of the features member ``i`` reads: with one group every
    member reads the whole (B, N, D) features; with G groups the features are (B, N, G*D) and
    member ``i`` reads ``[..., groups[i]*D : (groups[i]+1)*D]`` (``feat_dim`` = D).

    :meth:`step` returns, as its "logits", the mean over members of their log-softmax
    (the average of the members' log-probabilities, as issue 20 asks, not the log of their
    averaged probabilities), and the mean of their attention maps. The beam search's
    log-softmax then renormalises it, so the ensemble's next-word distribution is the
    normalised geometric mean of the members' (a product of experts). An ensemble of one
    returns its member's own logits, state and attention: exactly the single model.
    """

    def __init__(self, members: Sequence[nn.Module], groups: Sequence[int] | None = None,
                 feat_dim: int | None = None) -> None:
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one decoder")
        self.members = nn.ModuleList(members)
        self.groups = tuple(groups) if groups is not None else (0,) * len(members)
        if len(self.groups) != len(members):
            raise ValueError("one feature group per member")
        if max(self.groups) > 0 and feat_dim is None:
            raise ValueError("several feature groups need feat_dim")
        self.feat_dim = feat_dim
        self._sizes: tuple[int, ...] = ()  # tensors per member state, set by init_state

    def _member_feats(self, feats: Tensor) -> list[Tensor]:
        if max(self.groups) == 0:
            return [feats] * len(self.members)
        parts = feats.split(self.feat_dim, dim=-1)  # G x (B, N, D)
        return [parts[g] for g in self.groups]

    def _split_state(self, state: tuple[Tensor, ...]) -> list[tuple[Tensor, ...]]:
        out, at = [], 0
        for n in self._sizes:
            out.append(tuple(state[at : at + n]))
            at += n
        return out

    def init_state(self, feats: Tensor) -> tuple[Tensor, ...]:
        """Every member's initial state, flattened into one tuple (batch first throughout, so
        the beam search repeats and reorders it as it does a single decoder's)."""
        if len(self.members) == 1:
            return self.members[0].init_state(feats)
        states = [tuple(m.init_state(f))
                  for m, f in zip(self.members, self._member_feats(feats), strict=True)]
        self._sizes = tuple(len(s) for s in states)
        return tuple(t for s in states for t in s)

    def step(self, feats: Tensor, state: tuple[Tensor, ...],
             token: Tensor) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
        """One token (B,) -> (mean of the members' log-softmax (B, V) in fp32, new state,
        mean attention (B, N))."""
        if len(self.members) == 1:
            return self.members[0].step(feats, state, token)
        logps, alphas, new = [], [], []
        member_states = self._split_state(state)
        for m, f, s in zip(self.members, self._member_feats(feats), member_states, strict=True):
            logits, s, alpha = m.step(f, s, token)  # (B, V), state, (B, N)
            logps.append(torch.log_softmax(logits.float(), dim=-1))  # (B, V)
            alphas.append(alpha.float())  # (B, N)
            new += s
        return torch.stack(logps).mean(0), tuple(new), torch.stack(alphas).mean(0)  # (B, V)


def _weights_groups(encoders: Sequence[nn.Module]) -> tuple[int, ...]:
    """Group id per encoder: encoders with identical weights and preprocessing share one."""
    keys: list[dict] = []
    groups = []
    for enc in encoders:
        key = encoder_key(enc)
        if key not in keys:
            keys.append(key)
        groups.append(keys.index(key))
    return tuple(groups)


class EnsembleModel(nn.Module):
    """Several :class:`CaptionModel` members as one model for evaluation and captioning:
    ``encoder`` (the first member's: preprocessing, grid, feature-cache key), ``decoder``
    (an :class:`EnsembleDecoder`), ``encode`` and ``grid_features`` as a CaptionModel's.
    ``configs`` are the members' configs, when known. The members are assumed compatible
    (see :func:`load_members`)."""

    def __init__(self, members: Sequence[CaptionModel],
                 configs: Sequence[Config] | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.configs = list(configs or [])
        groups = _weights_groups([m.encoder for m in members])
        self.leaders = [groups.index(g) for g in range(max(groups) + 1)]  # a member per group
        self.decoder = EnsembleDecoder([m.decoder for m in members], groups,
                                       members[0].encoder.out_dim)

    @property
    def encoder(self):
        """The first member's encoder (every member's preprocessing and grid)."""
        return self.members[0].encoder

    @property
    def shared_encoder(self) -> bool:
        """Whether every member encodes with the same weights (features computed once)."""
        return len(self.leaders) == 1

    def encoders(self) -> list[nn.Module]:
        """One encoder per distinct set of encoder weights, in feature-group order."""
        return [self.members[i].encoder for i in self.leaders]

    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) -> (B, N, G*D): each distinct encoder's features side by side."""
        parts = [enc(images) for enc in self.encoders()]  # G x (B, N, D)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def grid_features(self, pixels: Tensor | None = None,
                      features: Tensor | None = None) -> Tensor:
        """Cached ``features`` (B, N, D) when the encoder is shared, else :meth:`encode`."""
        if (pixels is None) == (features is None):
            raise ValueError("give exactly one of pixels and features")
        if features is None:
            return self.encode(pixels)  # (B, N, G*D)
        if not self.shared_encoder:
            raise CaptionKitError("cached features come from one encoder, but the ensemble's "
                                  "members have different encoder weights")
        return features  # (B, N, D)


def _vocab_difference(a: str, va: Vocabulary, b: str, vb: Vocabulary) -> str | None:
    if va.itos == vb.itos:
        return None
    i = next((j for j, (x, y) in enumerate(zip(vb.itos, va.itos, strict=False))
              if x != y),
             min(len(va), len(vb)))
    where = (f"first difference at index {i}: {vb.itos[i]!r} vs {va.itos[i]!r}"
             if i < min(len(va), len(vb)) else
             f"the same up to index {i}, where the shorter one ends")
    return (f"checkpoint {b}'s vocabulary differs from {a}'s: {len(vb):,} vs {len(va):,} "
            f"tokens; {where} (ensemble members must share one vocabulary: the same tokens "
            "in the same order)")


def _config_difference(a: str, ca: Config, b: str, cb: Config) -> str | None:
    """What b's config says that keeps its encoder from sharing a's images (weights aside)."""
    for f in fields(EncoderConfig):
        va, vb = getattr(ca.encoder, f.name), getattr(cb.encoder, f.name)
        if f.name not in WEIGHT_FIELDS and va != vb:
            return _encoder_message(a, b, f"encoder.{f.name} {vb!r} vs {va!r}")
    return None


def _built_difference(a: str, ea: nn.Module, b: str, eb: nn.Module) -> str | None:
    """What b's built encoder computes differently from a's, beyond its weights."""
    for what, va, vb in (("preprocessing", ea.preprocess.to_dict(), eb.preprocess.to_dict()),
                         ("grid", tuple(ea.grid), tuple(eb.grid)),
                         ("feature width", ea.out_dim, eb.out_dim)):
        if va != vb:
            return _encoder_message(a, b, f"{what} {vb!r} vs {va!r}")
    return None


def _encoder_message(a: str, b: str, difference: str) -> str:
    return (f"checkpoint {b}'s encoder differs from {a}'s: {difference} (ensemble members "
            "must share one encoder: the same name, input size, preprocessing and grid, so "
            "that one image feeds every member; its weights may differ)")


def _peek(path: Path) -> tuple[Config, Vocabulary] | None:
    """A checkpoint's config and vocabulary from its metadata alone; None when they do not
    parse (loading it then says why)."""
    meta = read_meta(path)
    try:
        return Config.from_dict(meta["config"]), Vocabulary.from_dict(meta["vocab"])
    except (ConfigError, KeyError, ValueError, TypeError):
        return None


def _check_metadata(labels: list[str], paths: list[Path]) -> None:
    """Refuse, before any weights load, members whose vocabulary or encoder config differ
    from the first member's."""
    peeks = [_peek(p) for p in paths]
    if peeks[0] is None:
        return
    (cfg0, vocab0), first = peeks[0], labels[0]
    for label, peek in zip(labels[1:], peeks[1:], strict=True):
        if peek is not None and (why := _vocab_difference(first, vocab0, label, peek[1])
                                 or _config_difference(first, cfg0, label, peek[0])):
            raise ConfigError(why)


def load_members(paths: Sequence[str | Path],
                 device: str = "cpu") -> tuple[EnsembleModel, Config, Vocabulary, dict]:
    """Load and check an ensemble's checkpoints: (model, the first member's config, the shared
    vocabulary, meta). ``meta["ensemble"]`` describes each member. Raises a
    :class:`ConfigError` naming the first difference in vocabulary or encoder (from the
    metadata, before any weights load)."""
    labels = [str(p) for p in paths]
    folders = [resolve_checkpoint(p) for p in paths]
    _check_metadata(labels, folders)
    loaded = [load_checkpoint(f, device) for f in folders]  # (model, cfg, vocab, meta) each
    models, cfgs, vocabs, metas = (list(x) for x in zip(*loaded, strict=True))
    for label, model, vocab in zip(labels[1:], models[1:], vocabs[1:], strict=True):
        why = (_vocab_difference(labels[0], vocabs[0], label, vocab)
               or _built_difference(labels[0], models[0].encoder, label, model.encoder))
        if why:
            raise ConfigError(why)
    ensemble = EnsembleModel(models, cfgs).eval()
    members = [{"checkpoint": label, "encoder": cfg.encoder.name,
                "decoder": _decoder_name(cfg), "epoch": meta.get("epoch")}
               for label, cfg, meta in zip(labels, cfgs, metas, strict=True)]
    meta = {"ensemble": members, "shared_encoder": ensemble.shared_encoder,
            "epoch": None, "metrics": {}}
    return ensemble, cfgs[0], vocabs[0], meta


def _decoder_name(cfg: Config) -> str:
    dec = cfg.decoder.name
    return f"{dec}:{cfg.decoder.attention}" if dec in attention_decoders() else dec


def load_model(checkpoint: str | Path | Sequence[str | Path], device: str = "cpu",
               feature_cache: str | None = None) -> tuple[nn.Module, Config, Vocabulary, dict]:
    """One checkpoint as :func:`captionkit.checkpoint.load_checkpoint` loads it, or several as
    an :class:`EnsembleModel` (:func:`load_members`). A feature cache is refused for members
    with different encoder weights (each must encode the images itself)."""
    paths = checkpoint_paths(checkpoint)
    if len(paths) == 1:
        return load_checkpoint(paths[0], device)
    model, cfg, vocab, meta = load_members(paths, device)
    if feature_cache is not None and not model.shared_encoder:
        raise ConfigError(
            "a feature cache holds one encoder's features, but these checkpoints' encoders "
            "have different weights (fine-tuned or trained separately), so each member "
            "encodes the images itself: evaluate without --feature-cache")
    return model, cfg, vocab, meta


def ensemble_record(meta: dict) -> dict:
    """The metrics-record fields of an ensemble evaluation (empty for one checkpoint):
    ``checkpoint`` and ``decoder`` joined with " + ", and ``ensemble``, the members."""
    if "ensemble" not in meta:
        return {}
    members = meta["ensemble"]
    return {"checkpoint": " + ".join(m["checkpoint"] for m in members),
            "decoder": " + ".join(m["decoder"] for m in members),
            "checkpoint_epoch": None, "ensemble": members,
            "shared_encoder": meta["shared_encoder"]}


class EnsembleCaptioner(Captioner):
    """A :class:`Captioner` over an :class:`EnsembleModel`: the same API and results, the
    captions from the ensemble. On CPU each distinct encoder runs as a frozen trace. Results
    carry a sentinel's beta when any member attends with one (the mean maps' 1 - sum)."""

    def __init__(self, model: EnsembleModel, cfg: Config, vocab: Vocabulary, meta: dict,
                 device: str = "cpu", fast: bool = True,
                 precision: str = DEFAULT_PRECISION) -> None:
        super().__init__(model, cfg, vocab, meta, device, fast, precision)
        self.sentinel = any(has_sentinel(c.decoder) for c in (model.configs or [cfg]))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) -> (B, N, G*D), one block of D per distinct encoder."""
        if not self.fast:
            return self.model.encode(x)
        size = 1 << (x.size(0) - 1).bit_length()
        parts = []
        for g, enc in enumerate(self.model.encoders()):
            if (g, size) not in self._traced:
                self._traced[(g, size)] = fast_inference(enc, size, str(self.device))
            parts.append(self._traced[(g, size)](x))  # (B, N, D)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def load_ensemble(checkpoints: str | Path | Sequence[str | Path], device: str = "cpu",
                  precision: str = DEFAULT_PRECISION) -> BaseCaptioner:
    """A captioner over one checkpoint (a plain :class:`Captioner`, today's behaviour) or the
    ensemble of several (an :class:`EnsembleCaptioner`); ``captionkit.load`` calls this for
    a list of checkpoints."""
    paths = checkpoint_paths(checkpoints)
    if len(paths) == 1:
        return Captioner.from_checkpoint(paths[0], device, precision)
    model, cfg, vocab, meta = load_members(paths, device)
    return EnsembleCaptioner(model, cfg, vocab, meta, device, precision=precision)
