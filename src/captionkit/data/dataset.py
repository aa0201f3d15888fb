"""Torch datasets over caption records: images (decoded, preprocessed) and encoded captions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from captionkit.data.images import Preprocess, load_image
from captionkit.data.records import CaptionRecord
from captionkit.data.vocab import Vocabulary
from captionkit.errors import CaptionKitError, ImageLoadError
from captionkit.progress import bar as progress_bar

HOLDS = ("pixels", "features")  # what a dataset's items (and so its batches) carry


@dataclass
class Batch:
    """A collated batch. Exactly one of ``pixels`` (images to encode) and ``features`` (a
    feature cache's grid features) is set, as its dataset's ``holds`` says."""

    pixels: Tensor | None  # (B, 3, H, W) preprocessed images
    features: Tensor | None  # (B, N, D) cached grid features
    tokens: Tensor  # (C, T) captions with <start> ... <end>, padded
    image_index: Tensor  # (C,) which image each caption belongs to
    indices: Tensor  # (B,) record index of each image

    @property
    def num_images(self) -> int:
        return len(self.indices)

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        """The batch with every tensor on ``device``."""
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)
        return Batch(move(self.pixels), move(self.features), move(self.tokens),
                     move(self.image_index), self.indices)


class ImageCaptionDataset(Dataset):
    """Item i = (image tensor, all encoded captions of record i, i); ``collate`` makes batches
    whose ``pixels`` are set.

    Captions in which no word is in the vocabulary are dropped and counted in ``dropped``.
    """

    holds = "pixels"

    def __init__(self, records: list[CaptionRecord], vocab: Vocabulary,
                 preprocess: Preprocess | None) -> None:
        self.records, self.preprocess = records, preprocess
        self.captions: list[list[list[int]]] = []
        self.dropped = 0
        for r in records:
            keep = [vocab.encode(c) for c in r.captions if vocab.known_fraction(c) > 0]
            self.dropped += len(r.captions) - len(keep)
            self.captions.append(keep)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Tensor, list[list[int]], int]:
        return self.preprocess(load_image(self.records[i].image)), self.captions[i], i

    def collate(self, items: list[tuple[Tensor, list[list[int]], int]]) -> Batch:
        """A DataLoader's ``collate_fn`` for this dataset (batches say what they hold)."""
        return collate(items, self.holds)


class FeatureCaptionDataset(ImageCaptionDataset):
    """Like :class:`ImageCaptionDataset`, but item i carries cached grid features (N, D)."""

    holds = "features"

    def __init__(self, records: list[CaptionRecord], vocab: Vocabulary, store) -> None:
        super().__init__(records, vocab, preprocess=None)
        self.store = store

    def __getitem__(self, i: int) -> tuple[Tensor, list[list[int]], int]:
        return self.store.get(self.records[i].image_id), self.captions[i], i


class LengthBucketSampler(Sampler[list[int]]):
    """Shuffled batches of images whose captions have similar lengths, so a batch's captions end
    at about the same step and little padding is carried through the recurrence.

    Each epoch: shuffle all images, cut the order into pools of ``pool`` batches, sort each pool
    by mean caption length, cut it into batches, and shuffle the batches. Seeded per epoch, so
    the data order is a pure function of (seed, epoch). ``pool=0`` gives plain shuffled batches
    (when caption length tracks content, as in the shapes data, same-length batches are also
    same-content batches, which can hurt).
    """

    def __init__(self, lengths: list[float], batch_size: int, seed: int = 0, pool: int = 50,
                 drop_last: bool = False) -> None:
        self.lengths, self.batch_size, self.pool = lengths, batch_size, pool
        self.seed, self.drop_last, self.epoch, self.skip = seed, drop_last, 0, 0
        self.rank, self.world = 0, 1  # data parallelism: each process takes its slice

    @classmethod
    def for_dataset(cls, ds: ImageCaptionDataset, batch_size: int, seed: int = 0,
                    pool: int = 50) -> LengthBucketSampler:
        lengths = [sum(map(len, cs)) / max(len(cs), 1) for cs in ds.captions]
        return cls(lengths, batch_size, seed, pool)

    def __len__(self) -> int:
        n, b = len(self.lengths), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def batches(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch`` (pure)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        span = self.batch_size * self.pool if self.pool > 0 else len(order)
        out = []
        for s in range(0, len(order), max(span, 1)):
            chunk = order[s : s + span] if self.pool <= 0 else \
                sorted(order[s : s + span], key=lambda i: self.lengths[i])
            out += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            out = [b for b in out if len(b) == self.batch_size]
        return [out[i] for i in torch.randperm(len(out), generator=g).tolist()]

    def position(self, epoch: int, skip: int = 0) -> None:
        """Make the next iteration yield epoch ``epoch``'s batches from batch ``skip`` on
        (resuming a run mid-epoch)."""
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        batches = self.batches(self.epoch)[self.skip :]
        self.epoch, self.skip = self.epoch + 1, 0
        if self.world > 1:  # every process gets a non-empty slice of the same global batch
            batches = [b[self.rank :: self.world] for b in batches if len(b) >= self.world]
        return iter(batches)


def collate(items: list[tuple[Tensor, list[list[int]], int]], holds: str,
            pad_id: int = 0) -> Batch:
    """Stack the items' images (``holds``: ``pixels`` or ``features``, what they are); flatten
    every image's captions into one padded (C, T) tensor."""
    if holds not in HOLDS:
        raise ValueError(f"holds must be one of {HOLDS}, not {holds!r}")
    images = torch.stack([img for img, _, _ in items])  # (B, 3, H, W) or (B, N, D)
    caps = [(b, c) for b, (_, cs, _) in enumerate(items) for c in cs]
    T = max((len(c) for _, c in caps), default=2)
    tokens = torch.full((len(caps), T), pad_id, dtype=torch.long)  # (C, T)
    for row, (_, c) in enumerate(caps):
        tokens[row, : len(c)] = torch.tensor(c)
    image_index = torch.tensor([b for b, _ in caps], dtype=torch.long)
    indices = torch.tensor([i for _, _, i in items], dtype=torch.long)
    pixels, features = (images, None) if holds == "pixels" else (None, images)
    return Batch(pixels, features, tokens, image_index, indices)


def caption_dataset(records: list[CaptionRecord], vocab: Vocabulary, preprocess: Preprocess,
                    store=None) -> ImageCaptionDataset:
    """The dataset of ``records``: cached features from ``store`` (a
    :class:`~captionkit.data.features.FeatureStore`) when given, else images preprocessed
    with ``preprocess``. Pass only usable records (:func:`usable_records`)."""
    if store is not None:
        return FeatureCaptionDataset(records, vocab, store)
    return ImageCaptionDataset(records, vocab, preprocess)


def usable_records(records: list[CaptionRecord], store=None, progress: bool = True
                   ) -> tuple[list[CaptionRecord], list[ImageLoadError]]:
    """Split records into those a dataset can read (in ``store`` when given, else whose image
    decodes) and the errors of the others.

    With a store, a record that is neither cached nor listed as unreadable at extraction means
    the cache was built from another dataset: that is refused, saying how to build the right
    one or train without it."""
    if store is None:
        return partition_readable(records, progress)
    foreign = [r for r in records if r.image_id not in store and r.image_id not in store.failed]
    if foreign:
        raise CaptionKitError(
            f"{store.path}: this feature cache belongs to another dataset: {len(foreign)} of "
            f"{len(records)} image(s) are not in it (e.g. {foreign[0].image_id!r}). Build one "
            "for this dataset (`captionkit extract-features --config PRESET --data-dir DIR "
            "--pretrained --out CACHE`, then --set data.feature_cache=CACHE) or read the "
            "images instead (--set data.feature_cache=null)")
    missing = [ImageLoadError(r.image, "not in the feature cache (unreadable at extraction)")
               for r in records if r.image_id not in store]
    return [r for r in records if r.image_id in store], missing


def partition_readable(records: list[CaptionRecord],
                       progress: bool = True) -> tuple[list[CaptionRecord], list[ImageLoadError]]:
    """Split records into those whose image decodes and the errors of those that do not."""
    good, bad = [], []
    for r in progress_bar(records, "checking images", progress):
        try:
            load_image(r.image)
            good.append(r)
        except ImageLoadError as e:
            bad.append(e)
    return good, bad


def write_skip_report(errors: list[ImageLoadError], path: str | Path) -> None:
    """List skipped images (one ``path<TAB>reason`` line each) in the run folder."""
    Path(path).write_text("".join(f"{e.path}\t{e.reason}\n" for e in errors))


def require_records(records: list[CaptionRecord], split: str, where: str) -> list[CaptionRecord]:
    if not records:
        raise CaptionKitError(f"{where}: no usable images in the {split!r} split")
    return records
