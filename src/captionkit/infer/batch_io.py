"""The output of batch captioning (:mod:`captionkit.infer.batch`): one row per file, written
as Parquet or JSON lines (chosen by the output's suffix), crash-safe and resumable.

A row is ``path`` (absolute), ``caption`` and ``score`` (the best beam; null for a file that
could not be read), ``alternatives`` (the beam's captions, best first, each ``{"text",
"score"}``) and ``error`` (null, or why the file could not be read).

While a run goes on, every finished batch is appended to a journal beside the output,
``OUT.partial.jsonl`` (one JSON line a row, flushed a batch at a time), so a run that dies
loses at most the batches in flight. The run ends by writing ``OUT`` in one go (a temporary
file, then a rename): the rows of the ``OUT`` it resumed, less those redone, then the
journal's. ``--resume`` reads both ``OUT`` and a journal left by an interrupted run. Parquet
needs pyarrow (``pip install pyarrow``, also in ``captionkit[ray]``); JSON lines need nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from captionkit.errors import CaptionKitError

ROW_FIELDS = ("path", "caption", "score", "alternatives", "error")
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
CHUNK_ROWS = 10_000  # rows a Parquet row group holds when the journal is copied into OUT


def row_schema():
    """The rows' Arrow schema (imports pyarrow)."""
    pa = _pyarrow()
    alternative = pa.struct([("text", pa.string()), ("score", pa.float64())])
    return pa.schema([("path", pa.string()), ("caption", pa.string()), ("score", pa.float64()),
                      ("alternatives", pa.list_(alternative)), ("error", pa.string())])


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401  (the submodule, used as pyarrow.parquet)
    except ImportError:
        raise CaptionKitError("Parquet output needs pyarrow: pip install 'captionkit[ray]' "
                              "(or pyarrow), or write JSON lines (--out OUT.jsonl)") from None
    return pyarrow


def output_format(out: str | Path) -> str:
    """``"parquet"`` or ``"jsonl"``, from the output path's suffix."""
    fmt = FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise CaptionKitError(f"{out}: the output must end in .parquet or .jsonl (the suffix "
                              "chooses the format)")
    if fmt == "parquet":
        _pyarrow()
    return fmt


def journal_path(out: str | Path) -> Path:
    """Where a run journals its rows until it ends: ``OUT.partial.jsonl``."""
    out = Path(out)
    return out.with_name(out.name + ".partial.jsonl")


def read_rows(path: str | Path) -> Iterator[dict]:
    """The rows of an output file (Parquet or JSON lines) or of a journal, streamed; a
    journal's last line, cut short by a crash, is skipped."""
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    if line.endswith("\n"):  # not a torn last line: the file is damaged
                        raise CaptionKitError(f"{path}: not a captionkit output (a line is "
                                              "not JSON)") from None
        return
    pq = _pyarrow().parquet
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS):
            yield from batch.to_pylist()
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise CaptionKitError(f"{path}: not a readable Parquet file ({e})") from None


def prepare_output(out: str | Path, resume: bool, overwrite: bool) -> set[str]:
    """Check the output path before any work; returns the paths already captioned (by the
    ``OUT`` being resumed and by an interrupted run's journal), which a resumed run skips.

    An existing output (or journal) is refused unless ``resume`` or ``overwrite``."""
    out, journal = Path(out), journal_path(out)
    output_format(out)
    if resume and overwrite:
        raise CaptionKitError("--resume and --overwrite exclude each other")
    found = [p for p in (out, journal) if p.exists()]
    if out.is_dir():
        raise CaptionKitError(f"{out} is a folder: --out names the output file")
    if found and overwrite:
        journal.unlink(missing_ok=True)  # OUT itself is replaced when the run ends
        return set()
    if found and not resume:
        what = "holds an interrupted run" if found == [journal] else "exists"
        raise CaptionKitError(f"{found[0]} {what}: pass --resume to caption only the files "
                              "not yet in it, or --overwrite to start again")
    if out.parent.exists() and not out.parent.is_dir():
        raise CaptionKitError(f"{out.parent} is a file: --out needs a folder to write into")
    out.parent.mkdir(parents=True, exist_ok=True)  # like every run folder, made when missing
    return {r["path"] for p in found for r in read_rows(p) if r.get("caption") is not None}


class RowJournal:
    """Appends finished batches to the journal, one JSON line a row, each path at most once
    a run (``duplicates`` counts rows refused as repeats: 0 unless an engine repeated one)."""

    def __init__(self, out: str | Path) -> None:
        self.path = journal_path(out)
        self.written: set[str] = set()
        self.duplicates = 0
        self.failed = 0
        self._file = None  # opened by the first batch: a run that fails first leaves none

    def write(self, columns: dict[str, list]) -> int:
        """Append one batch (a column per :data:`ROW_FIELDS`); returns the rows written."""
        lines = []
        for row in columns_to_rows(columns):
            if row["path"] in self.written:
                self.duplicates += 1
                continue
            self.written.add(row["path"])
            self.failed += row["error"] is not None
            lines.append(json.dumps(row) + "\n")
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (see close)
        self._file.writelines(lines)
        self._file.flush()
        return len(lines)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> RowJournal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def columns_to_rows(columns: dict[str, list]) -> Iterator[dict]:
    """A batch's columns -> its rows (dicts with exactly :data:`ROW_FIELDS`)."""
    n = len(columns["path"])
    for i in range(n):
        row = {k: columns[k][i] for k in ROW_FIELDS}
        if row["alternatives"] is not None:
            row["alternatives"] = [dict(a) for a in row["alternatives"]]
        yield row


def finalize(out: str | Path, resume: bool) -> int:
    """Write ``OUT``: the resumed ``OUT``'s rows not redone since, then the journal's rows
    (the last one of each path); atomically, then remove the journal. Returns the rows
    written."""
    out, journal = Path(out), journal_path(out)
    last: dict[str, int] = {}
    if journal.exists():
        for i, row in enumerate(read_rows(journal)):
            last[row["path"]] = i
    kept = (r for r in read_rows(out) if r["path"] not in last) if resume and out.exists() \
        else iter(())
    fresh = (r for i, r in enumerate(read_rows(journal) if journal.exists() else ())
             if last[r["path"]] == i)
    tmp = out.with_name(out.name + ".tmp")
    count = _write(tmp, output_format(out), _chain(kept, fresh))
    os.replace(tmp, out)
    journal.unlink(missing_ok=True)
    return count


def _chain(*iterables) -> Iterator[dict]:
    for it in iterables:
        yield from it


def _write(path: Path, fmt: str, rows: Iterator[dict]) -> int:
    count = 0
    if fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
                count += 1
        return count
    pa = _pyarrow()
    schema = row_schema()
    with pa.parquet.ParquetWriter(path, schema) as writer:
        chunk: list[dict] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) == CHUNK_ROWS:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                count, chunk = count + len(chunk), []
        if chunk or count == 0:
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
            count += len(chunk)
    return count
