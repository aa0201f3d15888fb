"""The attention lab's report: the table, the beta figure, the doc and the closing
``key=value`` lines, all from the rows' JSON (``lab_row.json``) that
``benchmarks/attention_lab.py`` measures (the attention-map figures: :mod:`lab_figures`).
Used by that script; not run on its own."""

from __future__ import annotations

import json
import time
from pathlib import Path

from captionkit.data.shapes import WHERE

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "photos"
ROW_FILE = "lab_row.json"
BENCHES = ("shapes", "flickr8k")
UPDOWN_ROWS = ("additive", "adaptive")
BEAM = 3
DECODE_BATCH = 50
FLICKR_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")
SHAPES_METRICS = ("BLEU-4", "attention_hit_rate", "attention_hit_rate_looked", "visual_weight")
# "Knowing when to look": visual words (common concrete nouns) vs non-visual (function) words
VISUAL_WORDS = frozenset((
    "dog", "dogs", "man", "men", "woman", "women", "boy", "boys", "girl", "girls", "child",
    "children", "kid", "kids", "baby", "people", "person", "player", "players", "water",
    "ball", "grass", "snow", "beach", "bike", "bicycle", "shirt", "street", "field", "car",
    "rock", "rocks", "wall", "pool", "ocean", "sea", "mountain", "crowd", "hat", "jacket",
    "dress", "sand", "road", "building", "tree", "trees", "horse", "boat", "bench", "table",
    "camera", "sidewalk", "wave", "waves", "frisbee", "stick", "toy", "hill", "lake", "river",
    "helmet", "shorts", "skateboard", "football", "soccer", "costume", "fence", "dirt", "bird"))
FUNCTION_WORDS = frozenset((
    "a", "an", "the", "of", "in", "on", "is", "are", "with", "and", "to", "at", "while", "his",
    "her", "its", "their", "from", "into", "for", "by", "through", "as", "it", "up", "down",
    "over", "under", "near", "some", "this", "that", "who", "there", "they", "he", "she",
    "him", "them", "be", "being", "has", "have", "or", "but"))


def visual_weights(res, attention: str) -> list[float] | None:
    """Per word, how much it looked at the image (1 - beta, from ``CaptionResult.beta``);
    None for mechanisms without a sentinel."""
    return None if res.beta is None else [1.0 - float(b) for b in res.beta]


def load_rows(out: str) -> list[dict]:
    """Every kept row under ``out`` (whatever ``--bench`` trained), in a stable order (lstm
    and additive first); each remembers its folder as ``dir``."""
    rows = []
    for bench in BENCHES:
        for path in sorted((Path(out) / bench).glob(f"*/{ROW_FILE}")):
            rows.append({**json.loads(path.read_text()), "dir": str(path.parent)})
    return sorted(rows, key=lambda r: (BENCHES.index(r["bench"]), r["epochs_config"],
                                       r["decoder"] != "lstm",
                                       r["decoder"], r["attention"] != "additive",
                                       r["attention"]))


def label(row: dict) -> str:
    return f"{row['decoder']}:{row['attention']}"


def cell(row: dict, key: str, digits: int = 3) -> str:
    """A metric cell: the value, ``n/a`` when the scorer was unavailable, ``-`` when the
    bench does not measure it."""
    if key in row["metrics"]:
        return f"{row['metrics'][key]:.{digits}f}"
    return "n/a" if key in row.get("unavailable", {}) else "-"


def results_table(rows: list[dict]) -> str:
    """The Markdown table of every row."""
    head = ["bench", "decoder", "attention", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D",
            "hit rate", "hit (1-β)", "params", "train s", "train captions/s", "beam-3 images/s", "epochs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        epochs = f"{r['epochs_trained']:g} (best {r['best_epoch']})"
        cells = [r["bench"], r["decoder"], r["attention"],
                 *(cell(r, k) for k in (*FLICKR_METRICS, "attention_hit_rate",
                                            "attention_hit_rate_looked")),
                 f"{r['params_decoder'] / 1e6:.2f}M", f"{r['train_seconds']:.0f}",
                 f"{r['train_captions_per_s']:.0f}", f"{r['beam3_images_per_s']:.1f}", epochs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def beta_summary(beta: dict, top: int = 10) -> dict:
    """Mean 1 - beta of the visual, non-visual (function) and other words, with counts, and
    the ``top`` most frequent words of the first two groups."""
    groups = {"visual": VISUAL_WORDS, "non-visual": FUNCTION_WORDS}
    out = {}
    for name, words in (*groups.items(), ("other", None), ("all", ())):
        if words is None:
            items = {w: v for w, v in beta["per_word"].items()
                     if w not in VISUAL_WORDS and w not in FUNCTION_WORDS}
        elif name == "all":
            items = beta["per_word"]
        else:
            items = {w: v for w, v in beta["per_word"].items() if w in words}
        total, count = sum(v[0] for v in items.values()), sum(v[1] for v in items.values())
        frequent = sorted(items.items(), key=lambda kv: (-kv[1][1], kv[0]))[:top]
        out[name] = {"mean": total / count if count else float("nan"), "count": count,
                     "distinct": len(items),
                     "top": [(w, v[1], v[0] / v[1]) for w, v in frequent]}
    return out



def draw_beta_figure(summaries: list[tuple[str, dict]], path: Path) -> Path:
    """Bars of mean 1 - beta for the most frequent visual and non-visual words of each
    sentinel row, with each group's mean as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"visual": "tab:orange", "non-visual": "tab:blue"}
    fig, axes = plt.subplots(len(summaries), 1, figsize=(12, 3.8 * len(summaries)),
                             squeeze=False)
    for ax, (name, summary) in zip(axes[:, 0], summaries, strict=True):
        positions, words, start = [], [], 0
        for group, colour in colours.items():
            g = summary[group]
            xs = list(range(start, start + len(g["top"])))
            ax.bar(xs, [m for _, _, m in g["top"]], color=colour,
                   label=f"{group}: mean {g['mean']:.3f} over {g['count']} words")
            if xs:
                ax.hlines(g["mean"], xs[0] - 0.4, xs[-1] + 0.4, colors=colour,
                          linestyles="dashed")
            positions += xs
            words += [w for w, _, _ in g["top"]]
            start += len(xs) + 1
        ax.set_xticks(positions, words, rotation=45, ha="right")
        ax.set_ylim(0, 1.2)
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_ylabel("mean 1 - \u03b2 (visual weight)")
        ax.set_title(f"{name}: how much each word looks at the image "
                     f"(Flickr8k dev, beam {BEAM})")
        ax.legend(loc="upper center", ncol=2, fontsize=9, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)
    return path


def beta_verdict(summary: dict) -> str:
    """Whether the visual words' mean 1 - beta is higher than the non-visual words' (the
    paper's finding), computed."""
    v, n = summary["visual"], summary["non-visual"]
    if not v["count"] or not n["count"]:
        return "The two groups cannot be compared: one of them has no generated words."
    higher = v["mean"] > n["mean"]
    holds = "holds" if higher else "does not hold"
    more = "look at the image more" if higher else "do not look at the image more"
    return (f"Visual words {more} than non-visual words (mean 1 - \u03b2 "
            f"{v['mean']:.3f} vs {n['mean']:.3f}, difference {v['mean'] - n['mean']:+.3f}): "
            f"the paper's finding {holds} for this row.")


def beta_tables(row: dict, summary: dict) -> list[str]:
    """The group table, the verdict and the most frequent words of one sentinel row."""
    b = row["beta"]
    lines = [f"### {label(row)}", "",
             f"{b['images']} dev images, beam {BEAM}; 1 - \u03b2 from {b['source']}.", "",
             *([f"Note: {row['note']}", ""] if row.get("note") else []),
             "| words | generated | distinct | mean 1 - \u03b2 |", "|---|---|---|---|"]
    for group in ("visual", "non-visual", "other", "all"):
        g = summary[group]
        mean = f"{g['mean']:.3f}" if g["count"] else "-"
        lines.append(f"| {group} | {g['count']} | {g['distinct']} | {mean} |")
    lines += ["", beta_verdict(summary), "",
              "| visual word | n | mean 1 - \u03b2 | non-visual word | n | mean 1 - \u03b2 |",
              "|---|---|---|---|---|---|"]
    vis, fun = summary["visual"]["top"], summary["non-visual"]["top"]
    for i in range(max(len(vis), len(fun))):
        cells = []
        for top in (vis, fun):
            cells += [top[i][0], str(top[i][1]), f"{top[i][2]:.3f}"] if i < len(top) \
                else ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def beta_section(rows: list[dict], doc: Path) -> list[str]:
    """The "Knowing when to look" section and its bar figure ``<doc>_beta.png``."""
    lines = ["## Knowing when to look", "",
             "Adaptive attention (Lu et al. 2017) adds a visual sentinel to the softmax over "
             "the regions; its weight \u03b2 is how much a word relies on the language model, "
             "so 1 - \u03b2 (the regions' share) is how much it looks at the image. Per "
             "generated word of the dev captions, grouped into visual words (a fixed list of "
             "common concrete nouns) and non-visual words (function words); all other words "
             "are `other`.", ""]
    sentinel = [r for r in rows if r["bench"] == "flickr8k" and r.get("beta")]
    if not sentinel:
        return [*lines, "No Flickr8k row with a visual sentinel (`adaptive`) has been "
                "measured yet.", ""]
    summaries = []
    for r in sentinel:
        summary = beta_summary(r["beta"])
        summaries.append((label(r), summary))
        lines += beta_tables(r, summary)
    fig = draw_beta_figure(summaries, doc.with_name(doc.stem + "_beta.png"))
    return [*lines, f"![mean 1 - \u03b2 of frequent words]({fig.name})", ""]


def setup_lines(rows: list[dict]) -> list[str]:
    """What each bench trained and scored, and the machines, from the rows' JSON."""
    lines = []
    for bench in BENCHES:
        mine = [r for r in rows if r["bench"] == bench]
        if not mine:
            continue
        shared = sorted({s for r in mine for s in r["settings"]  # epochs: listed apart
                         if not s.startswith(("decoder.", "train.epochs="))})
        epochs = sorted({r["epochs_config"] for r in mine})
        what = ("the built-in shapes preset (what `captionkit demo` trains)" if bench == "shapes"
                else "`configs/flickr8k_lite0_lstm.yaml` (frozen EfficientNet-Lite0 features "
                "from the cache)")
        lines.append(f"- **{bench}**: {len(mine)} row(s), {what}, "
                     f"{' / '.join(map(str, epochs))} epoch(s); overrides "
                     f"{', '.join(f'`{s}`' for s in shared) or 'none'}; scored on the "
                     f"{mine[0]['split']} split ({mine[0]['images']} images) with "
                     f"{mine[0]['metric_decode']} captions of the best checkpoint.")
    machines = sorted({(r["machine"]["cpu"], r["machine"]["cpu_count"], r["machine"]["torch"],
                        r["machine"]["torch_threads"], r["machine"]["gpu"] or "no GPU")
                       for r in rows})
    for cpu, cores, version, threads, gpu in machines:
        lines.append(f"- machine: {cpu}, {cores} CPU cores (os.cpu_count), {gpu}, torch "
                     f"{version}, {threads} torch thread(s)")
    dates = sorted(r["date"] for r in rows)
    lines.append(f"- measured {dates[0]} to {dates[-1]}")
    return lines


def outcome_section(rows: list[dict]) -> list[str]:
    """Where each shapes row's colour and shape words looked (rows scored with
    ``word_outcomes``): the share of each outcome and the words' mean visual weight."""
    mine = [r for r in rows if r["bench"] == "shapes" and r.get("word_outcomes")]
    if not mine:
        return []
    lines = ["## Where colour and shape words look (shapes)", "",
             "Per generated colour/shape word of the test captions, where its most-attended "
             "cell lies: in the object its phrase names (`named`, a hit), in another object, "
             "on the background, or `no object`: the phrase names no object in the image (a "
             "caption error; the map is not judged). `looked`: the mean sum of the words' "
             "maps (1 - β for a sentinel). Shares of each kind's words.", "",
             "| row | epochs | kind | " + " | ".join(WHERE) + " | looked |",
             "|" + "---|" * (len(WHERE) + 4)]
    for r in mine:
        for kind, counts in r["word_outcomes"].items():
            n = sum(counts[w] for w in WHERE) or 1
            lines.append(f"| {label(r)} | {r['epochs_config']} | {kind} | "
                         + " | ".join(f"{counts[w] / n:.3f}" for w in WHERE)
                         + f" | {counts['mean_looked']:.3f} |")
    return [*lines, ""]


def measure_lines() -> list[str]:
    return [
        "How each column is measured:", "",
        "- `params`: the decoder's parameters (its attention included; not the encoder).",
        "- `train s`: `fit`'s wall clock, which includes reading the data, building the "
        "vocabulary and model, every epoch's dev validation (greedy captions of the whole "
        "dev split, BLEU/CIDEr-D) and checkpoint writes, not only the training steps.",
        "- `train captions/s`: training captions x epochs trained / `train s`, so the "
        "validation time above is in it (a lower bound on the training step's throughput).",
        "- `beam-3 images/s`: decoding only: the split's grid features in memory (Flickr8k: "
        f"the feature cache; shapes: encoded once), beam {BEAM}, batches of {DECODE_BATCH}, "
        "fp32, through `BaseCaptioner.caption_pixels`, after a one-batch warm-up, median of "
        "the timed passes; no image decoding, encoder or scoring.",
        "- `epochs`: epochs trained (steps / batches per epoch) and the best checkpoint's "
        "epoch; shapes BLEU-4 and hit rate are greedy (as `captionkit demo` scores), "
        f"Flickr8k metrics beam {BEAM}; `n/a`: a scorer that could not run "
        "(see the row JSON's `unavailable`).",
        "- `hit rate`: over every colour/shape word of the greedy test captions, the word's "
        "most-attended cell inside the object it names. `hit (1-β)`: the same with each word "
        "weighted by how much it looked at the image (the sum of its map, 1 - beta for the "
        "visual sentinel, 1 otherwise): a word a sentinel model took from its language model "
        "has a map of near-zeros whose argmax is noise.", ""]


def speed_section(out: str) -> list[str]:
    """The training-step speed table of ``benchmarks/attention_speed.py`` (``OUT/speed.json``),
    when it has been run."""
    path = Path(out) / "speed.json"
    if not path.is_file():
        return []
    sp = json.loads(path.read_text())
    lines = ["## Training speed, step alone", "",
             f"`benchmarks/attention_speed.py` ({sp['date']}, {sp['threads']} thread(s)): "
             f"{sp['steps']} length-bucketed batches of the preset's sizes, median of "
             f"{sp['repeats']} runs; the plain PyTorch SAT loop timed in the same run.", "",
             "| row | train captions/s | x plain | decoder params |", "|---|---|---|---|",
             f"| plain PyTorch SAT loop | {sp['plain_captions_per_s']:.1f} | 1.00 | - |"]
    lines += [f"| {name} | {r['captions_per_s']:.1f} | {r['vs_plain']:.2f} | "
              f"{r['params_decoder'] / 1e6:.2f}M |" for name, r in sp["rows"].items()]
    return [*lines, ""]


def write_doc(args, rows: list[dict], table: str, figures: list, doc: Path) -> None:
    """docs/attention_lab.md from the rows' JSON: setup, table, figures, beta section."""
    lines = ["# Attention lab: attention mechanisms x decoders at the same budget", "",
             "Generated by `benchmarks/attention_lab.py` on "
             f"{time.strftime('%Y-%m-%d')} from the {len(rows)} row(s) kept under "
             f"`{args.out}`; every number here comes from those measurements.", "",
             "Each row is a decoder with an attention mechanism (`decoder.name`, "
             "`decoder.attention`); within a bench every row has the same preset, data, "
             "vocabulary, seed, batch size and schedule, and rows are compared at the same "
             "number of epochs (the table groups them by it): the budget is the epochs, not "
             "the parameters or the wall clock.", "", *setup_lines(rows), "",
             "## Results", "", table, "", *measure_lines(), *outcome_section(rows),
             *speed_section(args.out),
             "## Attention maps", ""]
    for path, what, linked in figures:
        lines += [f"{what}: one row per mechanism, its caption under the image, then every "
                  "word with its attention map (scaled per word; 1 - \u03b2 in the title for "
                  "sentinel mechanisms).", ""]
        lines += ([f"![attention maps]({path.name})", ""] if linked else
                  [f"Drawn locally to `{path.name}` beside this page and not committed: its "
                   "photo is shared data, which stays out of the repository. Run "
                   "`python benchmarks/attention_lab.py --report-only` with `../shared` "
                   "present to draw it.", ""])
    if not figures:
        lines += ["No figure: no kept checkpoint to draw from.", ""]
    lines += beta_section(rows, doc)
    lines += ["## Reproduce", "", "```",
              "python benchmarks/attention_lab.py --bench flickr8k --data-dir DIR --rows "
              "lstm:additive   # one row per call", "python benchmarks/attention_lab.py "
              "--bench shapes", "python benchmarks/attention_lab.py --report-only", "```", ""]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines))


def key_values(rows: list[dict]) -> list[str]:
    """The closing key=value lines."""
    out = []
    flickr = [r for r in rows if r["bench"] == "flickr8k" and "CIDEr-D" in r["metrics"]]
    additive = next((r for r in flickr if label(r) == "lstm:additive"), None)
    if additive:  # compare at additive's budget only
        flickr = [r for r in flickr if r["epochs_config"] == additive["epochs_config"]]
    if flickr:
        best = max(flickr, key=lambda r: r["metrics"]["CIDEr-D"])
        out += [f"best_mechanism={label(best)}",
                f"best_cider_d={best['metrics']['CIDEr-D']:.4f}",
                "additive_cider_d=" + (f"{additive['metrics']['CIDEr-D']:.4f}"
                                       if additive else "n/a")]
    else:
        out += ["# no flickr8k rows measured", "best_mechanism=n/a", "best_cider_d=n/a",
                "additive_cider_d=n/a"]
    return out + shapes_key_values(rows)


def shapes_key_values(rows: list[dict]) -> list[str]:
    """The shapes hit-rate lines: the lowest hit rate (strict, and weighted by 1 - beta) over
    the soft mechanisms (all but ``hard``) of each decoder at each budget
    (``..._<decoder>_e<epochs>=``), then the headline lines for the lstm decoder at the
    largest budget that has every soft mechanism measured for it at any budget."""
    soft = [r for r in rows if r["bench"] == "shapes" and r["attention"] != "hard"]
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in soft:
        groups.setdefault((r["decoder"], r["epochs_config"]), []).append(r)
    out = []
    for (dec, epochs), mine in sorted(groups.items()):
        out += [f"shapes_min_soft_hit_rate{suffix}_{dec}_e{epochs}="
                f"{min(r['metrics'].get(key, 0.0) for r in mine):.4f}"
                for suffix, key in (("", "attention_hit_rate"),
                                    ("_looked", "attention_hit_rate_looked"))]
    every = {r["attention"] for r in soft if r["decoder"] == "lstm"}
    full = [e for (dec, e), mine in groups.items()
            if dec == "lstm" and {r["attention"] for r in mine} == every]
    if not full:
        return [*out, "shapes_budget_epochs=n/a", "shapes_min_soft_hit_rate=n/a",
                "shapes_min_soft_hit_rate_looked=n/a"]
    budget = max(full)
    head = [line.replace(f"_lstm_e{budget}=", "=") for line in out
            if f"_lstm_e{budget}=" in line]
    return [*out, f"shapes_budget_epochs={budget}", *head]
