"""``shapes``: the built-in synthetic dataset (the embedded default).

Seeded 96x96 images with 1-3 coloured shapes placed on a 3x3 grid; five varied reference captions
each, naming colours, shapes, sizes and spatial relations. Every object's box is recorded, so we can
measure whether attention looks where a word says (:func:`attention_hit_rate`).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from captionkit.data.records import CaptionRecord
from captionkit.data.vocab import tokenize
from captionkit.errors import DatasetError

IMAGE_SIZE = 96
CELL = IMAGE_SIZE // 3
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (150, 60, 190),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 10, "large": 15}  # half-extent in pixels
PLACES = ["top left", "top", "top right", "left", "middle", "right",
          "bottom left", "bottom", "bottom right"]  # fmt: skip
MANIFEST = "shapes.json"


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    size: str
    cell: int  # 0..8, row-major on the 3x3 grid
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels (inclusive)

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


def _relation(a: Shape, b: Shape) -> str:
    """Where ``a`` is relative to ``b``: vertical relations win over horizontal ones."""
    ra, ca, rb, cb = a.cell // 3, a.cell % 3, b.cell // 3, b.cell % 3
    if ra != rb:
        return "above" if ra < rb else "below"
    return "to the left of" if ca < cb else "to the right of"


def make_captions(objs: list[Shape], rng: random.Random) -> list[str]:
    """Five reference captions for objects given in reading order."""
    a = objs[0]
    if len(objs) == 1:
        place = PLACES[a.cell]
        return [f"a {a.phrase}", f"a {a.phrase} in the {place}", f"there is a {a.phrase}",
                f"a {a.colour} {a.shape} on a grey background", f"one {a.phrase} in the {place}"]
    if len(objs) == 2:
        b = objs[1]
        return [f"a {a.phrase} {_relation(a, b)} a {b.phrase}",
                f"a {b.phrase} {_relation(b, a)} a {a.phrase}",
                f"a {a.phrase} and a {b.phrase}",
                f"two shapes : a {a.phrase} and a {b.phrase}",
                f"there is a {a.colour} {a.shape} {_relation(a, b)} a {b.colour} {b.shape}"]
    b, c = objs[1], objs[2]
    return [f"a {a.phrase} , a {b.phrase} and a {c.phrase}",
            f"three shapes : a {a.phrase} , a {b.phrase} and a {c.phrase}",
            f"a {a.phrase} {_relation(a, b)} a {b.phrase} and a {c.phrase}",
            f"a {c.phrase} {_relation(c, b)} a {b.phrase} and a {a.phrase}",
            f"a {a.colour} {a.shape} , a {b.colour} {b.shape} and a {c.colour} {c.shape}"]


def _draw(draw: ImageDraw.ImageDraw, obj: Shape, fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = obj.box
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def make_scene(rng: random.Random) -> tuple[Image.Image, list[Shape]]:
    """One image and its objects (reading order), with distinct (colour, shape) pairs."""
    n = rng.choice((1, 2, 2, 3, 3))
    cells = sorted(rng.sample(range(9), n))
    kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPES], n)
    shade = rng.randint(215, 240)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (shade, shade, shade))
    draw = ImageDraw.Draw(image)
    objs = []
    for cell, (colour, shape) in zip(cells, kinds, strict=True):
        size = rng.choice(tuple(SIZES))
        half = SIZES[size]
        cx = (cell % 3) * CELL + CELL // 2 + rng.randint(-1, 1)
        cy = (cell // 3) * CELL + CELL // 2 + rng.randint(-1, 1)
        obj = Shape(colour, shape, size, cell, (cx - half, cy - half, cx + half, cy + half))
        fill = tuple(min(255, max(0, v + rng.randint(-20, 20))) for v in COLOURS[colour])
        _draw(draw, obj, fill)
        objs.append(obj)
    return image, objs


def generate_shapes(root: str | Path, num_train: int = 4000, num_dev: int = 300,
                    num_test: int = 300, seed: int = 0) -> list[CaptionRecord]:
    """Write the dataset (PNGs + ``shapes.json``) under ``root`` and return its records."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    entries = []
    for split, count in (("train", num_train), ("dev", num_dev), ("test", num_test)):
        for i in range(count):
            image, objs = make_scene(rng)
            name = f"images/{split}_{i:05d}.png"
            image.save(root / name)
            entries.append({"image": name, "split": split, "captions": make_captions(objs, rng),
                            "objects": [asdict(o) for o in objs]})
    params = {"num_train": num_train, "num_dev": num_dev, "num_test": num_test, "seed": seed}
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"params": params, "images": entries}))
    tmp.replace(root / MANIFEST)
    return read_shapes(root)


def read_shapes(root: str | Path) -> list[CaptionRecord]:
    """Read a generated shapes dataset; object boxes go into ``record.meta["objects"]``."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DatasetError("shapes manifest not found; generate it with `captionkit demo`", str(path))
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"invalid JSON ({e.msg})", str(path), e.lineno) from None
    return [CaptionRecord(image=str(Path(root) / e["image"]), captions=tuple(e["captions"]),
                          split=e["split"], image_id=e["image"],
                          meta={"objects": [Shape(**{**o, "box": tuple(o["box"])})
                                            for o in e["objects"]]})
            for e in data["images"]]


def ensure_shapes(root: str | Path, num_train: int, num_dev: int, num_test: int,
                  seed: int) -> list[CaptionRecord]:
    """Read the dataset at ``root``, generating it first if it is missing or was made with
    other parameters."""
    path = Path(root) / MANIFEST
    want = {"num_train": num_train, "num_dev": num_dev, "num_test": num_test, "seed": seed}
    if path.is_file():
        try:
            if json.loads(path.read_text()).get("params") == want:
                return read_shapes(root)
        except json.JSONDecodeError:
            pass
    return generate_shapes(root, **want)


def attention_hit_rate(caption: str, alphas, grid: tuple[int, int], objects: list[Shape],
                       image_size: int = IMAGE_SIZE, weighted: bool = False) -> tuple[float, float]:
    """Count (hits, total) over the colour/shape words of one generated caption.

    A word names the object whose colour and shape match the phrase it belongs to ("small red
    circle"); it is a hit when the word's most-attended grid cell has its centre inside that
    object's box. A word naming no object in the image counts as a miss. ``alphas`` is (T, N)
    with one row per generated word.

    ``weighted``: each word counts by how much it looked at the image, the sum of its map
    (1 - beta for a visual-sentinel mechanism, 1 for the others), so a word that a sentinel
    model took from its language model (beta near 1, a map of near-zeros whose argmax is
    noise) neither hits nor misses.
    """
    hits = total = 0
    for _, outcome, looked in word_outcomes(caption, alphas, grid, objects, image_size):
        weight = looked if weighted else 1
        total += weight
        hits += weight * (outcome == "named")
    return hits, total


WHERE = ("named", "other object", "background", "no object")  # word_outcomes' outcomes


def word_outcomes(caption: str, alphas, grid: tuple[int, int], objects: list[Shape],
                  image_size: int = IMAGE_SIZE) -> list[tuple[str, str, float]]:
    """Where each colour/shape word of a caption looked: (``"colour"``/``"shape"``, outcome,
    the sum of its map). The outcome (:data:`WHERE`) is ``"named"`` when the most-attended
    cell's centre is inside the object the word's phrase names, ``"other object"`` or
    ``"background"`` when it is elsewhere, and ``"no object"`` when the phrase names no
    single object in the image (the caption is wrong there; the map is not judged)."""
    words, out = tokenize(caption), []
    for t, word in enumerate(words):
        if word not in COLOURS and word not in SHAPES:
            continue
        kind = "colour" if word in COLOURS else "shape"
        looked = float(alphas[t].sum()) if t < len(alphas) else 1.0
        target = _named_object(words, t, objects)
        if target is None or t >= len(alphas):
            out.append((kind, "no object", looked))
            continue
        cell = int(alphas[t].argmax())
        cx = (cell % grid[1] + 0.5) * image_size / grid[1]
        cy = (cell // grid[1] + 0.5) * image_size / grid[0]
        inside = [o for o in objects if _contains(o.box, cx, cy)]
        where = "named" if target in inside else "other object" if inside else "background"
        out.append((kind, where, looked))
    return out


def _contains(box: tuple, x: float, y: float) -> bool:
    x0, y0, x1, y1 = box
    return x0 <= x <= x1 and y0 <= y <= y1


def _named_object(words: list[str], t: int, objects: list[Shape]) -> Shape | None:
    """The object named by the phrase around word ``t`` ("[size] colour shape")."""
    if words[t] in COLOURS:
        colour = words[t]
        shape = words[t + 1] if t + 1 < len(words) and words[t + 1] in SHAPES else None
    else:
        shape = words[t]
        colour = words[t - 1] if t > 0 and words[t - 1] in COLOURS else None
    found = [o for o in objects if (colour is None or o.colour == colour)
             and (shape is None or o.shape == shape)]
    return found[0] if len(found) == 1 else None
