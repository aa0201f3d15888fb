"""The Ray Data engine of batch captioning (:mod:`captionkit.infer.batch`): only the wiring.

The files' paths become a Ray dataset; :func:`~captionkit.infer.batch.decode_batch` runs in
CPU tasks (retried if their worker dies; an unreadable file is a row, never a failure);
:class:`RayCaptioner` (a :class:`~captionkit.infer.batch.BatchCaptioner` returning Arrow
tables) runs in a pool of ``workers`` actors with ``gpus_per_worker`` GPUs each, the model
loaded once per actor; the driver streams the finished batches into the journal. A killed
actor is restarted and its unfinished batches run again on the pool (``max_restarts``,
``max_task_retries``): the driver receives each batch once, so no row is lost or repeated.

Ray is imported only here, and only when the engine runs (``pip install 'captionkit[ray]'``).
On a cluster the files must be visible under the same paths on every node (a shared
filesystem), as the checkpoint must.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace

from captionkit.errors import CaptionKitError
from captionkit.infer.batch import BatchCaptioner, BatchSettings, decode_batch, load_captioner
from captionkit.infer.batch_io import row_schema

INSTALL = "pip install 'captionkit[ray]'"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: ``address`` (None: a Ray instance started for this run, or the
    one this process already runs; ``auto``: the cluster this machine belongs to;
    ``HOST:6379``), ``workers`` (captioning actors), ``gpus_per_worker`` and
    ``cpus_per_worker`` (each actor's reservation; its torch threads follow the CPUs),
    ``task_retries`` (how often a batch or a decode task runs again after its worker died
    before the run fails), ``files_per_block`` (0: 4 batches)."""

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    task_retries: int = 3
    files_per_block: int = 0

    def __post_init__(self) -> None:
        if self.workers < 1 or self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise CaptionKitError("Ray needs workers >= 1, cpus_per_worker > 0 and "
                                  "gpus_per_worker >= 0")


def import_ray():
    """``ray`` with Ray Data, or a one-line error saying how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401  (the submodule, used as ray.data)
    except ImportError:
        raise CaptionKitError(f"--engine ray needs Ray Data, which is not installed: {INSTALL}"
                              ) from None
    return ray


class RayCaptioner(BatchCaptioner):
    """The actors' callable class: :class:`BatchCaptioner` whose rows come back as an Arrow
    table of the output's schema (so every block, even one of unreadable files only, has
    the same column types)."""

    def __init__(self, settings: BatchSettings, threads: int | None = None) -> None:
        super().__init__(settings, threads=threads)
        self.schema = row_schema()

    def __call__(self, batch: dict):
        import pyarrow as pa

        return pa.Table.from_pydict(super().__call__(batch), schema=self.schema)


def connect(ray, options: RayOptions) -> None:
    """Join ``options.address``, or start a local instance with enough logical CPUs for the
    actors and a decoding task (so a small machine cannot deadlock); then check that the
    cluster can hold the actors."""
    if not ray.is_initialized():
        if options.address is None:
            from captionkit.threads import available_cpus

            need = math.ceil(options.workers * options.cpus_per_worker) + 1
            ray.init(num_cpus=max(available_cpus(), need), include_dashboard=False,
                     log_to_driver=False)
        else:
            ray.init(address=options.address, log_to_driver=False)
    have = ray.cluster_resources()
    cpus_needed = options.workers * options.cpus_per_worker + 1
    gpus_needed = options.workers * options.gpus_per_worker
    if have.get("CPU", 0) < cpus_needed or have.get("GPU", 0) < gpus_needed:
        raise CaptionKitError(
            f"the Ray cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs; "
            f"{options.workers} worker(s) with {options.cpus_per_worker:g} CPU(s) and "
            f"{options.gpus_per_worker:g} GPU(s) each, plus a CPU to decode images, need "
            f"{cpus_needed:g} and {gpus_needed:g}")


def _retries(ray, **args) -> dict:
    """``args`` (Ray's retry settings) where ``map_batches`` still takes remote args by
    keyword; a Ray that no longer does applies its own defaults (actors restarted, their
    batches retried)."""
    params = inspect.signature(ray.data.Dataset.map_batches).parameters.values()
    return args if any(p.kind is p.VAR_KEYWORD for p in params) else {}


def num_blocks(files: int, settings: BatchSettings, options: RayOptions) -> int:
    """How many blocks the paths are cut into: ``files_per_block`` (default 4 batches) each,
    but at least two for every actor while there are batches enough (so none idles)."""
    per_block = options.files_per_block or 4 * settings.batch_size
    batches = math.ceil(files / settings.batch_size)
    return max(1, math.ceil(files / per_block), min(batches, 2 * options.workers))


def ray_batches(paths: list[str], settings: BatchSettings, options: RayOptions,
                captioner_cls: type | None = None) -> Iterator[dict[str, list]]:
    """The Ray engine: yields each finished batch's row columns, in the order they finish.
    ``captioner_cls``: the actors' callable class (default :class:`RayCaptioner`, or a
    subclass of it)."""
    captioner_cls = captioner_cls or RayCaptioner
    ray = import_ray()
    device = "cuda" if options.gpus_per_worker > 0 else settings.device
    settings = replace(settings, device=device)
    # the driver loads the model once, on the CPU: a bad checkpoint fails here, with the
    # message `captionkit caption` gives, and the decoding tasks get its preprocessing
    preprocess = load_captioner(replace(settings, device="cpu")).preprocess
    connect(ray, options)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver draws its own bar
    ds = ray.data.from_items([{"path": p} for p in paths],
                             override_num_blocks=num_blocks(len(paths), settings, options))
    with warnings.catch_warnings():  # the retry settings are remote args, deprecated by name
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ds.map_batches(decode_batch, fn_args=(preprocess,), batch_size=settings.batch_size,
                            batch_format="numpy", num_cpus=1,
                            **_retries(ray, max_retries=options.task_retries))
        ds = ds.map_batches(
            captioner_cls, fn_constructor_args=(settings,),
            fn_constructor_kwargs={"threads": max(1, int(options.cpus_per_worker))},
            batch_size=settings.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=options.workers),
            num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker or None,
            **_retries(ray, max_restarts=-1, max_task_retries=options.task_retries))
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield table.to_pydict()
