"""Evaluate a checkpoint on a dataset split: COCO-format results and COCO metrics.

``captionkit evaluate`` is a thin wrapper around :func:`evaluate_checkpoint`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from captionkit.data import by_split, load_records
from captionkit.data.dataset import ImageCaptionDataset, caption_dataset, usable_records
from captionkit.data.features import FeatureStore, encoder_key
from captionkit.data.vocab import Vocabulary
from captionkit.errors import CaptionKitError, ConfigError
from captionkit.infer.decoding import Hypothesis, beam_search, check_decoding
from captionkit.infer.ensemble import checkpoint_paths, ensemble_record, load_model
from captionkit.metrics import corpus_bleu_cider
from captionkit.metrics.coco import ALL_METRICS, results_to_dict, score_captions
from captionkit.models.captioner import CaptionModel
from captionkit.models.precision import DEFAULT_PRECISION, inference_decoder
from captionkit.models.precision import resolve as resolve_precision
from captionkit.progress import bar as progress_bar


@torch.no_grad()
def generate(model: CaptionModel, loader: DataLoader, vocab: Vocabulary, device: torch.device,
             max_len: int = 20, progress: bool = True, beam_size: int = 1,
             length_penalty: float = 0.0, no_repeat_ngram: int = 0,
             dtype: torch.dtype = torch.float32) -> dict[int, Hypothesis]:
    """The best caption (beam search; greedy at ``beam_size=1``) for every image of ``loader``:
    record index -> hypothesis. Batches may hold pixels or cached features. ``dtype`` bf16
    decodes with a bf16 copy of the decoder."""
    model.eval()
    decoder = inference_decoder(model.decoder, dtype)
    out: dict[int, Hypothesis] = {}
    for batch in progress_bar(loader, "caption", progress):
        b = batch.to(device)
        feats = model.grid_features(b.pixels, b.features)  # (B, N, D)
        beams = beam_search(decoder, feats.to(dtype), start_id=vocab.start_id,
                            end_id=vocab.end_id,
                            beam_size=beam_size, max_len=max_len, length_penalty=length_penalty,
                            no_repeat_ngram=no_repeat_ngram, banned=vocab.banned)
        out.update(zip(batch.indices.tolist(), (b[0] for b in beams), strict=True))
    return out


def evaluate(model: CaptionModel, dataset: ImageCaptionDataset, vocab: Vocabulary,
             device: torch.device, batch_size: int = 32, max_len: int = 20,
             progress: bool = True) -> tuple[dict[str, float], dict[int, Hypothesis]]:
    """Caption every image of ``dataset`` greedily; BLEU-1..4 and CIDEr-D on its references."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        collate_fn=dataset.collate)
    hyps = generate(model, loader, vocab, device, max_len, progress)
    refs = {str(i): list(dataset.records[i].captions) for i in hyps}
    res = {str(i): vocab.decode(h.tokens) for i, h in hyps.items()}
    return corpus_bleu_cider(refs, res), hyps



@dataclass(frozen=True)
class DecodeSettings:
    """How captions are generated for evaluation."""

    beam: int = 3
    max_len: int | None = None  # None: the vocabulary's max_len
    length_penalty: float = 0.0
    no_repeat_ngram: int = 0
    batch_size: int = 50
    precision: str = DEFAULT_PRECISION  # fp32 | bf16 | auto (bf16 where the hardware has it)

    def __post_init__(self) -> None:
        check_decoding(self.beam, self.max_len)
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")


def split_dataset(model, cfg, vocab, split: str, feature_cache: str | None,
                  progress: bool = True) -> tuple[ImageCaptionDataset, list[str]]:
    """The split's records as a dataset (features from the cache when given, else images)
    plus the images left out (unreadable, or not in the cache)."""
    records = by_split(load_records(cfg.data, generate=False), split)
    if not records:
        raise CaptionKitError(f"{cfg.data.root}: the {split!r} split of {cfg.data.dataset!r} "
                              "has no images")
    store = (None if feature_cache is None
             else FeatureStore(feature_cache, encoder_key(model.encoder)))
    kept, bad = usable_records(records, store, progress)
    return caption_dataset(kept, vocab, model.encoder.preprocess, store), [e.path for e in bad]


def evaluate_checkpoint(checkpoint: str | Path | list[str | Path], *,
                        dataset: str | None = None,
                        data_dir: str | None = None, split: str = "dev",
                        settings: DecodeSettings = DecodeSettings(),
                        feature_cache: str | None = None, out: str | Path | None = None,
                        metrics: tuple[str, ...] = ALL_METRICS, tokenizer: str = "python",
                        device: str = "cpu", progress: bool = True) -> dict:
    """Caption every image of ``split`` with the checkpoint and score the captions.

    Writes ``results.json`` (COCO results format: ``[{"image_id", "caption"}]``) and
    ``metrics.json`` into ``out`` when given; returns the metrics record. A list of several
    checkpoints is evaluated as their ensemble (:mod:`captionkit.infer.ensemble`; the record's
    ``ensemble`` lists the members); a list of one is that checkpoint.
    """
    t0 = time.perf_counter()
    if len(paths := checkpoint_paths(checkpoint)) == 1:
        checkpoint = paths[0]
    model, cfg, vocab, meta = load_model(checkpoint, device, feature_cache)
    data = replace(cfg.data, dataset=dataset or cfg.data.dataset,
                   root=data_dir or cfg.data.root, feature_cache=feature_cache)
    cfg = replace(cfg, data=data)
    ds, left_out = split_dataset(model, cfg, vocab, split, feature_cache, progress)
    if left_out:
        print(f"{len(left_out)} image(s) left out (unreadable or not in the cache), "
              f"e.g. {left_out[0]}")
    loader = DataLoader(ds, batch_size=settings.batch_size, shuffle=False,
                        collate_fn=ds.collate)
    dtype = resolve_precision(settings.precision, torch.device(device))
    hyps = generate(model, loader, vocab, torch.device(device),
                    vocab.max_len if settings.max_len is None else settings.max_len, progress, settings.beam,
                    settings.length_penalty, settings.no_repeat_ngram, dtype)
    results = [{"image_id": ds.records[i].image_id, "caption": vocab.decode(h.tokens)}
               for i, h in sorted(hyps.items())]
    refs = {r.image_id: list(r.captions) for r in ds.records}
    scores = score_captions(refs, {r["image_id"]: r["caption"] for r in results}, metrics,
                            tokenizer, allow_empty=True)
    record = {"checkpoint": str(checkpoint), "dataset": data.dataset, "data_dir": data.root,
              "split": split, "decode": settings.__dict__, "tokenizer": tokenizer,
              "precision": "bf16" if dtype == torch.bfloat16 else "fp32",
              "encoder": cfg.encoder.name, "decoder": cfg.decoder.name,
              "stage": cfg.train.stage,
              "checkpoint_epoch": meta.get("epoch"), "left_out": len(left_out),
              "empty_captions": sum(not r["caption"] for r in results),
              **scores.to_dict(), "seconds": round(time.perf_counter() - t0, 1)}
    record.update(ensemble_record(meta))  # several checkpoints: the members
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))
        (out / "metrics.json").write_text(json.dumps(record, indent=2))
    return record


def score_results_file(results: str | Path, *, dataset: str, data_dir: str, split: str = "dev",
                       out: str | Path | None = None, metrics: tuple[str, ...] = ALL_METRICS,
                       tokenizer: str = "python") -> dict:
    """Score an existing COCO-format results file (``[{"image_id", "caption"}]``, e.g. from
    another model) against a split's references; bad files are refused before scoring."""
    try:
        rows = json.loads(Path(results).read_text())
    except (OSError, ValueError) as e:
        raise CaptionKitError(f"{results}: cannot read results JSON ({e})") from None
    if not isinstance(rows, list):
        raise CaptionKitError(f"{results}: expected a JSON list of {{image_id, caption}}")
    hyps = results_to_dict(rows)
    from captionkit.config import DataConfig

    records = by_split(load_records(DataConfig(dataset=dataset, root=data_dir), generate=False),
                       split)
    refs = {r.image_id: list(r.captions) for r in records}
    scores = score_captions(refs, hyps, metrics, tokenizer)
    record = {"results": str(results), "dataset": dataset, "data_dir": data_dir,
              "split": split, "tokenizer": tokenizer, **scores.to_dict()}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "metrics.json").write_text(json.dumps(record, indent=2))
    return record


def format_scores(record: dict) -> str:
    """A small table of a metrics record for the terminal."""
    how = f"beam {record['decode']['beam']}" if "decode" in record else record["results"]
    lines = [f"{record['dataset']} {record['split']} ({record['images']} images), {how}"]
    lines += [f"  {k:<8} {v:.4f}" for k, v in record["scores"].items()]
    lines += [f"  {k:<8} unavailable: {why}" for k, why in record["unavailable"].items()]
    return "\n".join(lines)
