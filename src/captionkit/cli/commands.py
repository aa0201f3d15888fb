"""What each ``captionkit`` command does (the parser is :mod:`captionkit.cli.parser`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from captionkit.errors import CaptionKitError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _overrides(args: argparse.Namespace) -> list[str]:
    sets = list(args.set or [])
    for flag, key in (("encoder", "encoder.name"), ("decoder", "decoder.name"),
                      ("encoder_weights", "encoder.weights"), ("out", "train.out_dir"),
                      ("data_dir", "data.root"), ("dataset", "data.dataset"),
                      ("stage", "train.stage"), ("init", "train.init")):
        value = getattr(args, flag, None)
        if value is not None:
            sets.append(f"{key}={value}")
    return sets


def cmd_demo(args: argparse.Namespace) -> None:
    from captionkit.config import load_config
    from captionkit.demo import run_demo

    cfg = load_config(args.config, args.set)
    run_demo(cfg, args.out, progress=not args.quiet)


def cmd_train(args: argparse.Namespace) -> None:
    from captionkit.config import load_config
    from captionkit.train.fit import fit

    if args.resume:
        saved = load_config(Path(args.resume) / "config.yaml")
        cfg = saved
        if args.config or _overrides(args):
            asked = load_config(args.config, [*_overrides(args),
                                              f"train.out_dir={saved.train.out_dir}"])
            if diff := saved.diff(asked):
                raise CaptionKitError(f"refusing to resume {args.resume} with a different "
                                      "config: " + "; ".join(diff))
    elif args.config is None:
        raise CaptionKitError("train needs --config PRESET (a preset name, e.g. "
                              "flickr8k_lite0_lstm or shapes_demo, or a YAML file) or --resume "
                              "RUN_DIR; `captionkit demo` trains the built-in shapes set")
    else:
        cfg = load_config(args.config, _overrides(args))
    result = fit(cfg, progress=not args.quiet, resume=bool(args.resume),
                 overwrite=args.overwrite)
    if is_main_process():  # torchrun: one final line, not one per rank
        print(f"best checkpoint: {result.best_checkpoint}  {format_metrics(result.best_metrics)}")


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a process that is not part of one."""
    return os.environ.get("RANK", "0") == "0"


def format_metrics(metrics: dict) -> str:
    """``name value`` pairs rounded to 4 decimals (never ``3.85e-10``)."""
    return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in metrics.items())


def cmd_extract(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from captionkit.config import load_config
    from captionkit.data import load_records
    from captionkit.data.features import extract_features
    from captionkit.models.encoders import build_encoder

    cfg = load_config(args.config, _overrides(args))
    enc_cfg = replace(cfg.encoder, trainable=False,
                      pretrained=cfg.encoder.pretrained or args.pretrained)
    if not (enc_cfg.pretrained or enc_cfg.weights or args.random_weights):
        raise CaptionKitError(
            f"the {enc_cfg.name} encoder has no weights here, so its features would come from "
            "a random network: pass --pretrained (its ImageNet weights) or --encoder-weights "
            "FILE, or --random-weights if that is what you want")
    records = load_records(cfg.data)
    store = extract_features(records, build_encoder(enc_cfg), args.out,
                             batch_size=args.batch_size, num_workers=args.workers,
                             progress=not args.quiet)
    state = "up to date: " if store.up_to_date else ""
    print(f"{state}{len(store.row)} images cached in {args.out} ({len(store.failed)} "
          f"unreadable, listed in {args.out}/failed.txt)")


def cmd_download(args: argparse.Namespace) -> None:
    from captionkit.data.download import download_dataset

    path = download_dataset(args.name, Path(args.to), progress=not args.quiet,
                            base_url=args.mirror)
    print(f"{args.name} is in {path}")


def _expand(paths: list[str]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(p)
    if not files:
        raise CaptionKitError("no images given (or none found in the folders given)")
    return files


def cmd_caption(args: argparse.Namespace) -> None:
    from captionkit.data.images import load_image
    from captionkit.errors import ImageLoadError
    from captionkit.infer.viz import attention_figure

    captioner = _load_captioner(args)
    files = _expand(args.images)
    out = open(args.json, "w") if args.json else None  # noqa: SIM115
    failed, written = 0, []
    for s in range(0, len(files), args.batch_size):
        chunk, images = [], []
        for path in files[s : s + args.batch_size]:
            try:
                images.append(load_image(path))
                chunk.append(path)
            except ImageLoadError as e:
                failed += 1
                print(f"error: {e}", file=sys.stderr)
        if not images:
            continue
        results = captioner.caption_batch(images, args.beam, args.max_len, args.length_penalty,
                                          args.no_repeat_ngram)
        for i, (path, res) in enumerate(zip(chunk, results, strict=True), start=s):
            print(f"{path}\t{res.text}")
            if out:
                row = {"image": str(path), "caption": res.text, "score": round(res.score, 4),
                       "alternatives": [(t, round(x, 4)) for t, x in res.alternatives],
                       "precision": res.precision}
                if res.beta is not None:  # adaptive attention: per-word sentinel weight
                    row["beta"] = [round(b, 4) for b in res.beta]
                out.write(json.dumps(row) + "\n")
            if args.attention_map:
                target = _map_path(args.attention_map, i, len(files))
                attention_figure(res.image, res.words, res.attention, target,
                                 name=Path(path).name)
                written.append(target)
    if out:
        out.close()
        print(f"wrote {args.json}")
    if written:
        many = f" ({written[0].name}, ...: one per image)" if len(written) > 1 else ""
        print(f"wrote {len(written)} attention map(s){many}: "
              + ", ".join(str(w) for w in written[:3]) + (", ..." if len(written) > 3 else ""))
    if failed:
        raise CaptionKitError(f"{failed} of {len(files)} image(s) could not be read")


def _map_path(name: str, i: int, images: int) -> Path:
    """``--attention-map`` itself for one image; NAME_0.png, NAME_1.png, ... for several."""
    target = Path(name)
    if target.suffix == "":
        target = target.with_suffix(".png")
    return target if images == 1 else target.with_name(f"{target.stem}_{i}{target.suffix}")


def cmd_caption_dataset(args: argparse.Namespace) -> None:
    """Caption a folder (or a list) of images into one Parquet or JSON-lines file."""
    from captionkit.infer.batch import BatchSettings, run_batch

    settings = BatchSettings(tuple(args.checkpoint), args.beam, args.max_len,
                             args.length_penalty, args.no_repeat_ngram, args.batch_size,
                             args.precision)
    options = None
    if args.engine == "ray":
        from captionkit.infer.batch_ray import RayOptions

        options = RayOptions(args.address, args.workers, args.gpus_per_worker,
                             args.cpus_per_worker)
    report = run_batch(args.source, args.out, settings, engine=args.engine,
                       ray_options=options, resume=args.resume, overwrite=args.overwrite,
                       progress=not args.quiet)
    skipped = f", {report.skipped} already done" if report.skipped else ""
    print(f"wrote {args.out}: {report.rows} rows ({report.captioned} captioned, "
          f"{report.failed} unreadable: their rows carry the error{skipped}); "
          f"{report.images_per_s:.1f} images/s on {args.engine}")


def _load_captioner(args: argparse.Namespace):
    """A PyTorch captioner from a checkpoint (or the ensemble of several: ``--checkpoint``
    repeated), or an onnxruntime one from an export folder."""
    paths = args.checkpoint if isinstance(args.checkpoint, list) else [args.checkpoint]
    if args.runtime == "onnx":
        from captionkit.infer.onnx_runtime import load_onnx

        if len(paths) > 1:
            raise CaptionKitError("ensembles run on the PyTorch runtime: drop --runtime onnx "
                                  "or give one --checkpoint")
        return load_onnx(paths[0])
    from captionkit.infer.ensemble import load_ensemble

    return load_ensemble(paths, precision=args.precision)


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from captionkit.server import ServeConfig, create_app, log_requests

    cfg = ServeConfig(max_upload_bytes=int(args.max_upload_mb * 2**20), max_batch=args.max_batch,
                      max_wait_ms=args.max_wait_ms, request_timeout_s=args.timeout,
                      answer_timeout_s=args.answer_timeout)
    app = create_app(_load_captioner(args), cfg, str(args.checkpoint))
    print(f"captionkit: serving {args.checkpoint} at http://{args.host}:{args.port}/ "
          f"(API reference at /docs)", flush=True)
    log_requests()  # one line per request (uvicorn's own access log stays off)
    uvicorn.run(app, host=args.host, port=args.port, timeout_keep_alive=5,
                log_level="warning", access_log=False)


def cmd_export(args: argparse.Namespace) -> None:
    from captionkit.infer.export import export_onnx

    out = export_onnx(args.checkpoint, args.out, opset=args.opset)
    print(f"wrote {out}: encoder.onnx, decoder_init.onnx, decoder_step.onnx, fp32 "
          f"(caption with: captionkit caption --runtime onnx --checkpoint {out} IMAGES)")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from captionkit.infer.evaluation import (
        DecodeSettings,
        evaluate_checkpoint,
        format_scores,
        score_results_file,
    )

    if (args.checkpoint is None) == (args.results is None):
        raise CaptionKitError("evaluate needs exactly one of --checkpoint or --results")
    if args.results:
        if not (args.dataset and args.data_dir):
            raise CaptionKitError("--results needs --dataset and --data-dir for the references")
        record = score_results_file(args.results, dataset=args.dataset, data_dir=args.data_dir,
                                    split=args.split, out=args.out, tokenizer=args.tokenizer)
        print(format_scores(record))
        return
    settings = DecodeSettings(args.beam, args.max_len, args.length_penalty,
                              args.no_repeat_ngram, args.batch_size, args.precision)
    record = evaluate_checkpoint(args.checkpoint, dataset=args.dataset, data_dir=args.data_dir,
                                 split=args.split, settings=settings,
                                 feature_cache=args.feature_cache, out=args.out,
                                 tokenizer=args.tokenizer, progress=not args.quiet)
    print(format_scores(record))
    print(f"wrote {args.out}/results.json and {args.out}/metrics.json")


def cmd_list_encoders(args: argparse.Namespace) -> None:
    """The registered encoders and their metadata as an aligned table (nothing is built)."""
    from captionkit.models.encoders import encoder_info, list_encoders

    rows = [("name", "output dim", "grid", "input size", "weights")]
    for name in list_encoders():
        info = encoder_info(name)
        rows.append((name, "?", "?", "?", "?") if info is None else (
            name, str(info.out_dim), f"{info.grid[0]}x{info.grid[1]}", f"{info.input_size}px",
            info.weights))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join([c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)] + [row[-1]]))


def cmd_list_decoders(args: argparse.Namespace) -> None:
    """The registered decoders as a table: name, the decoder.* fields it reads, description."""
    from captionkit.models.decoders import DECODERS

    rows = [(n, ", ".join(DECODERS.info(n).get("fields", ())),
             DECODERS.info(n).get("description", "")) for n in DECODERS.names()]
    width = max(len(n) for n, _, _ in rows)
    print(f"{'name':<{width}}  {'reads decoder.*':<44}  description")
    for name, fields, text in rows:
        print(f"{name:<{width}}  {fields:<44}  {text}")


def cmd_list_attention(args: argparse.Namespace) -> None:
    """The registered attention mechanisms as a table: name, the decoder.* fields it reads,
    its query (the previous or the current hidden state), whether the GPU fast path runs it,
    description."""
    from captionkit.config import DecoderConfig
    from captionkit.models.attention import ATTENTIONS, fast_path_attention

    print(f"{'name':<12}  {'reads decoder.*':<26}  {'query':<8}  {'GPU fast path':<19}  "
          "description")
    for n in ATTENTIONS.names():
        info = ATTENTIONS.info(n)
        tiny = ATTENTIONS.get(n)(8, 8, DecoderConfig(attention=n, attention_dim=8, num_heads=1),
                                 8)
        fast = "yes" if fast_path_attention(tiny) else "no (reference path)"
        print(f"{n:<12}  {', '.join(info.get('fields', ())) or '-':<26}  {tiny.QUERY:<8}  "
              f"{fast:<19}  {info.get('description', '')}")


def cmd_list_presets(args: argparse.Namespace) -> None:
    """The shipped presets (``--config NAME``) with their encoder, decoder and dataset."""
    from captionkit.config import find_config, list_presets, load_config
    from captionkit.models.decoders import attention_decoders

    print(f"{'name':<30}  {'encoder':<18}  {'decoder':<22}  dataset")
    for name in list_presets():
        cfg = load_config(find_config(name))
        dec = cfg.decoder.name
        if dec in attention_decoders():  # the decoders that take a mechanism
            dec = f"{dec}:{cfg.decoder.attention}"
        print(f"{name:<30}  {cfg.encoder.name:<18}  {dec:<22}  {cfg.data.dataset}")
