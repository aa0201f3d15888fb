"""Data: dataset readers by name (all producing :class:`CaptionRecord` lists), the
vocabulary, images and preprocessing, torch datasets and batches, feature caches and dataset
downloads."""

from __future__ import annotations

from collections.abc import Callable

from captionkit.config import DataConfig
from captionkit.data.coco import read_coco
from captionkit.data.csv_captions import read_csv
from captionkit.data.flickr8k import read_flickr8k
from captionkit.data.karpathy import read_karpathy
from captionkit.data.records import SPLITS, CaptionRecord, by_split
from captionkit.data.shapes import ensure_shapes, read_shapes
from captionkit.registry import Registry

DATASETS: Registry[Callable[[DataConfig], list[CaptionRecord]]] = Registry("dataset")


@DATASETS.register("shapes")
def _shapes(cfg: DataConfig) -> list[CaptionRecord]:
    return ensure_shapes(cfg.root, cfg.num_train, cfg.num_dev, cfg.num_test, cfg.seed)


@DATASETS.register("flickr8k")
def _flickr8k(cfg: DataConfig) -> list[CaptionRecord]:
    return read_flickr8k(cfg.root)


@DATASETS.register("karpathy")
def _karpathy(cfg: DataConfig) -> list[CaptionRecord]:
    return read_karpathy(cfg.root)


@DATASETS.register("coco")
def _coco(cfg: DataConfig) -> list[CaptionRecord]:
    return read_coco(cfg.root)


@DATASETS.register("csv")
def _csv(cfg: DataConfig) -> list[CaptionRecord]:
    return read_csv(cfg.root, seed=cfg.seed)


def load_records(cfg: DataConfig, generate: bool = True) -> list[CaptionRecord]:
    """Read (or, for ``shapes``, generate) the dataset a config names. With ``generate=False``
    a generated dataset is only read, whatever parameters made it."""
    if cfg.dataset == "shapes" and not generate:
        return read_shapes(cfg.root)
    return DATASETS.get(cfg.dataset)(cfg)


__all__ = ["DATASETS", "SPLITS", "CaptionRecord", "by_split", "load_records"]
