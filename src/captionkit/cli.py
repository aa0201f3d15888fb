"""Command line: ``captionkit {demo,train,extract-features,download,caption,evaluate,...}``."""

from __future__ import annotations

import argparse
import json
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
    else:
        cfg = load_config(args.config, _overrides(args))
    result = fit(cfg, progress=not args.quiet, resume=bool(args.resume))
    print(f"best checkpoint: {result.best_checkpoint}  {json.dumps(result.best_metrics)}")


def cmd_extract(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from captionkit.config import load_config
    from captionkit.data import load_records
    from captionkit.data.features import extract_features
    from captionkit.models.encoders import build_encoder

    cfg = load_config(args.config, _overrides(args))
    enc_cfg = replace(cfg.encoder, trainable=False,
                      pretrained=cfg.encoder.pretrained or args.pretrained)
    records = load_records(cfg.data)
    store = extract_features(records, build_encoder(enc_cfg), args.out,
                             batch_size=args.batch_size, num_workers=args.workers,
                             progress=not args.quiet)
    print(f"{len(store.row)} images cached in {args.out} ({len(store.failed)} unreadable, "
          f"listed in {args.out}/failed.txt)")


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


def _decode_args(p: argparse.ArgumentParser, beam: int) -> None:
    p.add_argument("--beam", type=int, default=beam, help="beam size (1 = greedy)")
    p.add_argument("--max-len", type=int, help="most words per caption (default: vocab's)")
    p.add_argument("--length-penalty", type=float, default=0.0,
                   help="rank beams by logprob / len**x (0 = raw log-probability)")
    p.add_argument("--no-repeat-ngram", type=int, default=0,
                   help="forbid repeating any n-gram of this size (0 = off)")


def cmd_caption(args: argparse.Namespace) -> None:
    from captionkit.data.images import load_image
    from captionkit.errors import ImageLoadError
    from captionkit.infer.viz import attention_figure

    captioner = _load_captioner(args)
    files = _expand(args.images)
    out = open(args.json, "w") if args.json else None  # noqa: SIM115
    failed = 0
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
                row = {"image": str(path), "caption": res.text, "score": res.score,
                       "alternatives": res.alternatives}
                if res.beta is not None:  # adaptive attention: per-word sentinel weight
                    row["beta"] = [round(b, 4) for b in res.beta]
                out.write(json.dumps(row) + "\n")
            if args.attention_map:
                target = Path(args.attention_map)
                if len(files) > 1:
                    target = target.with_name(f"{target.stem}_{i}{target.suffix or '.png'}")
                attention_figure(res.image, res.words, res.attention, target)
    if out:
        out.close()
    if failed:
        raise CaptionKitError(f"{failed} of {len(files)} image(s) could not be read")


def _load_captioner(args: argparse.Namespace):
    """A PyTorch captioner from a checkpoint, or an onnxruntime one from an export folder."""
    if args.runtime == "onnx":
        from captionkit.infer.onnx_runtime import load_onnx

        return load_onnx(args.checkpoint)
    from captionkit.infer.captioner import load

    return load(args.checkpoint, precision=args.precision)


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from captionkit.server import ServeConfig, create_app

    cfg = ServeConfig(max_upload_bytes=int(args.max_upload_mb * 2**20), max_batch=args.max_batch,
                      max_wait_ms=args.max_wait_ms, request_timeout_s=args.timeout,
                      answer_timeout_s=args.answer_timeout)
    app = create_app(_load_captioner(args), cfg, str(args.checkpoint))
    print(f"captionkit: serving {args.checkpoint} at http://{args.host}:{args.port}/ "
          f"(API reference at /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, timeout_keep_alive=5,
                log_level="warning", access_log=False)


def cmd_export(args: argparse.Namespace) -> None:
    from captionkit.infer.export import export_onnx

    out = export_onnx(args.checkpoint, args.out, opset=args.opset)
    print(f"wrote {out}: encoder.onnx, decoder_init.onnx, decoder_step.onnx "
          f"(caption with: captionkit caption --runtime onnx --checkpoint {out} IMAGES)")


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="PyTorch checkpoint, or an ONNX export folder run by onnxruntime")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="auto",
                   help="decoder arithmetic for --runtime torch")


def _add_serving(sub) -> None:
    s = sub.add_parser("serve", help="web page and REST API (FastAPI) over a checkpoint")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-batch", type=int, default=16, help="requests batched together")
    s.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait to fill a batch")
    s.add_argument("--max-upload-mb", type=float, default=10.0)
    s.add_argument("--timeout", type=float, default=30.0,
                   help="seconds for a request body to arrive (slow clients get 408)")
    s.add_argument("--answer-timeout", type=float, default=60.0,
                   help="seconds for the model to answer (else 503)")
    _runtime_args(s)
    s.set_defaults(func=cmd_serve)
    x = sub.add_parser("export", help="export encoder and decoder step to ONNX")
    x.add_argument("--checkpoint", required=True)
    x.add_argument("--format", choices=["onnx"], default="onnx")
    x.add_argument("--out", required=True, help="folder for the .onnx files")
    x.add_argument("--opset", type=int, default=17)
    x.set_defaults(func=cmd_export)


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


def _add_train(sub, encoders: str, decoders: str) -> None:
    from captionkit.config import STAGES

    d = sub.add_parser("demo", help="train and score the built-in shapes dataset")
    d.add_argument("--config", help="YAML preset (default: the shapes demo defaults)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)
    t = sub.add_parser("train", help="train a captioner from a config")
    t.add_argument("--config", help="YAML preset in configs/")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override, e.g. --set train.lr=1e-3")
    t.add_argument("--encoder", help="one of: " + encoders)
    t.add_argument("--decoder", help="one of: " + decoders)
    t.add_argument("--encoder-weights", help="local encoder weights file")
    t.add_argument("--dataset", help="dataset reader name")
    t.add_argument("--data-dir", help="dataset folder")
    t.add_argument("--out", help="run folder")
    t.add_argument("--stage", choices=STAGES, help="cross-entropy or self-critical")
    t.add_argument("--init", help="checkpoint to start from (needed by --stage scst)")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run exactly from its last resume point")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)


def _add_data(sub, encoders: str) -> None:
    from captionkit.data.download import list_downloadable

    x = sub.add_parser("extract-features", help="cache a frozen encoder's grid features")
    x.add_argument("--config", help="YAML preset (its data and encoder sections are used)")
    x.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    x.add_argument("--dataset", help="dataset reader name")
    x.add_argument("--data-dir", help="dataset folder")
    x.add_argument("--encoder", help="one of: " + encoders)
    x.add_argument("--encoder-weights", help="local encoder weights file")
    x.add_argument("--pretrained", action="store_true", help="use the encoder's ImageNet weights")
    x.add_argument("--out", required=True, help="cache folder (resumed if partly written)")
    x.add_argument("--batch-size", type=int, default=32)
    x.add_argument("--workers", type=int, default=1, help="image-decoding processes")
    x.add_argument("--quiet", action="store_true")
    x.set_defaults(func=cmd_extract)
    dl = sub.add_parser("download", help="download a public dataset (resumable, verified)")
    dl.add_argument("name", choices=list_downloadable())
    dl.add_argument("--to", required=True, help="destination folder")
    dl.add_argument("--mirror", help="base URL of a mirror holding the same file names")
    dl.add_argument("--quiet", action="store_true")
    dl.set_defaults(func=cmd_download)


def _add_inference(sub) -> None:
    c = sub.add_parser("caption", help="caption images or folders of images")
    c.add_argument("images", nargs="+")
    c.add_argument("--checkpoint", required=True)
    _decode_args(c, beam=1)
    c.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    c.add_argument("--attention-map", help="write per-word attention maps to this PNG")
    c.add_argument("--json", help="write one JSON line per image here")
    _runtime_args(c)
    c.set_defaults(func=cmd_caption)
    e = sub.add_parser("evaluate", help="caption a dataset split and score it (COCO metrics)")
    e.add_argument("--checkpoint", help="model to caption the split with")
    e.add_argument("--results", help="or: score this COCO results JSON instead")
    e.add_argument("--dataset", help="dataset reader name (default: the checkpoint's)")
    e.add_argument("--data-dir", help="dataset folder (default: the checkpoint's)")
    e.add_argument("--split", default="dev")
    _decode_args(e, beam=3)
    e.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                   help="decoder arithmetic (bf16 is faster where the hardware has it)")
    e.add_argument("--batch-size", type=int, default=50)
    e.add_argument("--feature-cache", help="read the encoder's features from this cache")
    e.add_argument("--tokenizer", choices=["python", "java"], default="python",
                   help="PTB tokenization: pure Python (default) or the original Java")
    e.add_argument("--out", required=True, help="folder for results.json and metrics.json")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)


def build_parser() -> argparse.ArgumentParser:
    from captionkit.models.decoders import list_decoders
    from captionkit.models.encoders import list_encoders

    p = argparse.ArgumentParser(prog="captionkit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    encoders, decoders = ", ".join(list_encoders()), ", ".join(list_decoders())
    _add_train(sub, encoders, decoders)
    _add_data(sub, encoders)
    _add_inference(sub)
    _add_serving(sub)
    sub.add_parser("list-encoders", help="registered encoders: output dim, grid, input size, "
                   "weights").set_defaults(func=cmd_list_encoders)
    sub.add_parser("list-decoders", help="registered decoders").set_defaults(
        func=cmd_list_decoders)
    sub.add_parser("list-attention", help="registered attention mechanisms "
                   "(--set decoder.attention=NAME)").set_defaults(func=cmd_list_attention)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; captionkit's own errors print one line and return 2 (bugs still raise)."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CaptionKitError as e:
        print(f"captionkit: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
