"""The ``captionkit`` argument parser: every command, its options (each with help, defaults
shown) and a few examples."""

from __future__ import annotations

import argparse

from captionkit.cli import commands as c

DESCRIPTION = ("Train, evaluate and serve image captioners (Show, Attend and Tell and more).\n"
               "Run 'captionkit COMMAND --help' for a command's options and examples.")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; each option's default shown when it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or not action.option_strings or default is None
                or default is False or default == argparse.SUPPRESS or default == []):
            return text
        return f"{text} (default: %(default)s)"


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (beam sizes, lengths, thread counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _command(sub, name: str, help_text: str, func, *examples: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text,
                       epilog=_examples(*examples) if examples else None,
                       formatter_class=HelpFormatter)
    p.set_defaults(func=func)
    return p


def _threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="CPU threads (default: OMP_NUM_THREADS, else the CPUs this process may "
                   "use; idle threads wait passively)")


def _config(p: argparse.ArgumentParser, required_help: str) -> None:
    p.add_argument("--config", metavar="PRESET", help=required_help)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="config override, repeatable, e.g. --set train.lr=1e-3")


def _quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_train(sub, encoders: str, decoders: str) -> None:
    from captionkit.config import STAGES

    d = _command(sub, "demo", "train and score the built-in shapes dataset", c.cmd_demo,
                 "captionkit demo", "captionkit demo --set train.epochs=2 --out runs/quick")
    _config(d, "preset name or YAML path (default: the shapes demo)")
    d.add_argument("--out", default="runs/demo", help="run folder")
    _threads(d)
    _quiet(d)
    t = _command(sub, "train", "train a captioner from a preset", c.cmd_train,
                 "captionkit train --config flickr8k_lite0_lstm --data-dir Flickr8k --out "
                 "runs/f8k",
                 "captionkit train --config shapes_demo --set train.epochs=4 --out runs/s4",
                 "captionkit train --resume runs/f8k")
    _config(t, "preset name (see configs/) or YAML path; required unless --resume")
    t.add_argument("--encoder", help="one of: " + encoders)
    t.add_argument("--decoder", help="one of: " + decoders)
    t.add_argument("--encoder-weights", metavar="FILE",
                   help="local encoder weights (.safetensors or a torch state dict)")
    t.add_argument("--dataset", help="dataset reader: shapes, flickr8k, karpathy, coco, csv")
    t.add_argument("--data-dir", metavar="DIR", help="dataset folder")
    t.add_argument("--out", metavar="RUN_DIR", help="run folder (must be new or empty)")
    t.add_argument("--stage", choices=STAGES, help="cross-entropy (xe) or self-critical (scst)")
    t.add_argument("--init", metavar="CHECKPOINT",
                   help="checkpoint to start from (scst; an xe run continues from it)")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run exactly from its last resume point")
    t.add_argument("--overwrite", action="store_true",
                   help="train into a run folder that already holds a run, replacing it")
    _threads(t)
    _quiet(t)


def _add_data(sub, encoders: str) -> None:
    from captionkit.data.download import list_downloadable

    x = _command(sub, "extract-features", "cache a frozen encoder's grid features",
                 c.cmd_extract,
                 "captionkit extract-features --config flickr8k_lite0_lstm --data-dir Flickr8k "
                 "--out runs/cache/f8k",
                 "captionkit extract-features --encoder densenet121 --pretrained --dataset csv "
                 "--data-dir mine --out runs/cache/mine")
    _config(x, "preset name or YAML path (its data and encoder sections are used)")
    x.add_argument("--dataset", help="dataset reader: shapes, flickr8k, karpathy, coco, csv")
    x.add_argument("--data-dir", metavar="DIR", help="dataset folder")
    x.add_argument("--encoder", help="one of: " + encoders)
    x.add_argument("--encoder-weights", metavar="FILE", help="local encoder weights file")
    x.add_argument("--pretrained", action="store_true",
                   help="use the encoder's ImageNet weights")
    x.add_argument("--random-weights", action="store_true",
                   help="allow a randomly initialised encoder (features of no use for quality)")
    x.add_argument("--out", required=True, metavar="DIR",
                   help="cache folder (resumed if partly written)")
    x.add_argument("--batch-size", type=positive_int, default=32, help="images per batch")
    x.add_argument("--workers", type=int, default=1, help="image-decoding processes")
    _threads(x)
    _quiet(x)
    dl = _command(sub, "download", "download a public dataset (resumable, verified)",
                  c.cmd_download, "captionkit download flickr8k --to data/")
    dl.add_argument("name", choices=list_downloadable(), help="dataset to download")
    dl.add_argument("--to", required=True, metavar="DIR", help="destination folder")
    dl.add_argument("--mirror", metavar="URL",
                    help="base URL of a mirror holding the same file names")
    _quiet(dl)


def _decode_args(p: argparse.ArgumentParser) -> None:
    from captionkit.infer.decoding import DEFAULT_BEAM

    p.add_argument("--beam", type=positive_int, default=DEFAULT_BEAM,
                   help="beam size (1 = greedy), the same default for caption, serve, "
                   "evaluate and the API")
    p.add_argument("--max-len", type=positive_int, metavar="N",
                   help="most words per caption (default: the vocabulary's)")
    p.add_argument("--length-penalty", type=float, default=0.0,
                   help="rank beams by logprob / len**x (0 = raw log-probability)")
    p.add_argument("--no-repeat-ngram", type=int, default=0,
                   help="forbid repeating any n-gram of this size (0 = off)")


def _precision(p: argparse.ArgumentParser) -> None:
    from captionkit.models.precision import DEFAULT_PRECISION, PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                   help="decoder arithmetic, the same default for caption, serve, evaluate "
                   "and the API (auto: bf16 where the hardware computes it natively, about 5x "
                   "faster, else fp32; recorded with every result)")


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="PyTorch checkpoint, or an ONNX export folder run by onnxruntime "
                   "(fp32)")
    _precision(p)


def _add_inference(sub) -> None:
    from captionkit.data.records import SPLITS

    cap = _command(sub, "caption", "caption images or folders of images", c.cmd_caption,
                   "captionkit caption --checkpoint runs/demo/best photo.jpg",
                   "captionkit caption --checkpoint runs/f8k/best --beam 3 --json out.jsonl "
                   "--attention-map maps.png photos/")
    cap.add_argument("images", nargs="+", help="image files or folders")
    cap.add_argument("--checkpoint", required=True, metavar="DIR", action="append",
                     help="checkpoint folder (or its model.safetensors, or a run folder: its "
                     "best/); repeat to caption with the ensemble of several (same vocabulary "
                     "and encoder)")
    _decode_args(cap)
    cap.add_argument("--batch-size", type=positive_int, default=16,
                     help="images per forward pass")
    cap.add_argument("--attention-map", metavar="PNG",
                     help="write per-word attention maps here (NAME_0.png, ... for several "
                     "images)")
    cap.add_argument("--json", metavar="FILE", help="write one JSON line per image here")
    _runtime_args(cap)
    _threads(cap)
    e = _command(sub, "evaluate", "caption a dataset split and score it (COCO metrics)",
                 c.cmd_evaluate,
                 "captionkit evaluate --checkpoint runs/f8k/best --out runs/f8k/eval",
                 "captionkit evaluate --checkpoint runs/a/best --checkpoint runs/b/best --out "
                 "runs/ensemble",
                 "captionkit evaluate --results results.json --dataset flickr8k --data-dir "
                 "Flickr8k --out scores")
    e.add_argument("--checkpoint", metavar="DIR", action="append",
                   help="model to caption the split with; repeat to evaluate the ensemble of "
                   "several (same vocabulary and encoder)")
    e.add_argument("--results", metavar="JSON", help="or: score this COCO results JSON instead")
    e.add_argument("--dataset", help="dataset reader name (default: the checkpoint's)")
    e.add_argument("--data-dir", metavar="DIR", help="dataset folder (default: the checkpoint's)")
    e.add_argument("--split", default="dev", choices=SPLITS, help="split to caption and score")
    _decode_args(e)
    _precision(e)
    e.add_argument("--batch-size", type=positive_int, default=50, help="images per batch")
    e.add_argument("--feature-cache", metavar="DIR",
                   help="read the encoder's features from this cache")
    e.add_argument("--tokenizer", choices=["python", "java"], default="python",
                   help="PTB tokenization: pure Python or the original Java")
    e.add_argument("--out", required=True, metavar="DIR",
                   help="folder for results.json and metrics.json")
    _threads(e)
    _quiet(e)


def _add_batch(sub) -> None:
    b = _command(sub, "caption-dataset",
                 "caption a folder (or a list) of images into one Parquet or JSON-lines file, "
                 "locally or on Ray Data",
                 c.cmd_caption_dataset,
                 "captionkit caption-dataset photos/ --checkpoint runs/f8k/best --out "
                 "captions.parquet",
                 "captionkit caption-dataset paths.txt --checkpoint runs/f8k/best --out "
                 "captions.jsonl --resume",
                 "captionkit caption-dataset /nfs/photos --checkpoint /nfs/ckpt --out "
                 "captions.parquet --engine ray --address auto --workers 8 --gpus-per-worker 1")
    b.add_argument("source", help="a folder (searched recursively for images) or a text file "
                   "listing image paths, one a line")
    b.add_argument("--checkpoint", required=True, metavar="DIR", action="append",
                   help="checkpoint folder; repeat to caption with the ensemble of several")
    b.add_argument("--out", required=True, metavar="FILE",
                   help="output file, .parquet or .jsonl (rows: path, caption, score, "
                   "alternatives, error)")
    b.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process; ray: Ray Data (decoding in CPU tasks, "
                   "captioning in a pool of actors); pip install 'captionkit[ray]'")
    b.add_argument("--address", metavar="ADDR",
                   help="Ray cluster to join (auto, or HEAD:6379; default: start one here)")
    b.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="Ray: captioning actors, each loading the model once")
    b.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G",
                   help="Ray: GPUs each actor reserves (0: caption on the CPU)")
    b.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C",
                   help="Ray: CPUs (and torch threads) each actor reserves")
    b.add_argument("--batch-size", type=positive_int, default=16,
                   help="images per forward pass")
    _decode_args(b)
    _precision(b)
    b.add_argument("--resume", action="store_true",
                   help="caption only the files not yet captioned in --out (or in an "
                   "interrupted run's journal), then write the union")
    b.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _threads(b)
    _quiet(b)


def _add_serving(sub) -> None:
    s = _command(sub, "serve", "web page and REST API (FastAPI) over a checkpoint", c.cmd_serve,
                 "captionkit serve --checkpoint runs/demo/best",
                 "captionkit serve --checkpoint export/ --runtime onnx --port 8080")
    s.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint folder")
    s.add_argument("--host", default="127.0.0.1", help="bind address (loopback only)")
    s.add_argument("--port", type=int, default=8000, help="TCP port")
    s.add_argument("--max-batch", type=positive_int, default=16,
                   help="requests batched together")
    s.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait to fill a batch")
    s.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted")
    s.add_argument("--timeout", type=float, default=30.0,
                   help="seconds for a request body to arrive (slow clients get 408)")
    s.add_argument("--answer-timeout", type=float, default=60.0,
                   help="seconds for the model to answer (else 503)")
    _runtime_args(s)
    _threads(s)
    x = _command(sub, "export", "export encoder and decoder step to ONNX", c.cmd_export,
                 "captionkit export --checkpoint runs/demo/best --out runs/demo/onnx")
    x.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint folder")
    x.add_argument("--format", choices=["onnx"], default="onnx", help="export format")
    x.add_argument("--out", required=True, metavar="DIR", help="folder for the .onnx files")
    x.add_argument("--opset", type=int, default=17, help="ONNX opset")


def _add_listings(sub) -> None:
    _command(sub, "list-encoders", "registered encoders: output dim, grid, input size, weights",
             c.cmd_list_encoders)
    _command(sub, "list-decoders", "registered decoders", c.cmd_list_decoders)
    _command(sub, "list-presets", "shipped presets, for --config NAME", c.cmd_list_presets)
    _command(sub, "list-attention",
             "registered attention mechanisms (--set decoder.attention=NAME)",
             c.cmd_list_attention)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``captionkit`` command."""
    from captionkit import __version__
    from captionkit.models.decoders import list_decoders
    from captionkit.models.encoders import list_encoders

    p = argparse.ArgumentParser(prog="captionkit", description=DESCRIPTION,
                                formatter_class=HelpFormatter,
                                epilog=_examples("captionkit demo",
                                                 "captionkit caption --checkpoint "
                                                 "runs/demo/best photo.jpg"))
    p.add_argument("--version", action="version", version=f"captionkit {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    encoders, decoders = ", ".join(list_encoders()), ", ".join(list_decoders())
    _add_train(sub, encoders, decoders)
    _add_data(sub, encoders)
    _add_inference(sub)
    _add_batch(sub)
    _add_serving(sub)
    _add_listings(sub)
    return p
