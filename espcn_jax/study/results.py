"""The append-only results file: one JSON record per line, on any path etils.epath can write.

``results.jsonl`` in the sweep's workdir (``results.shard-I-of-N.jsonl`` for a shard, so that n
machines sharing one ``gs://`` workdir never write the same object; :func:`read_dir` merges every
``results*.jsonl`` there). Records are never rewritten: a re-run appends, and the latest record of
a point wins.

Never half-written: a record is one line written by a single ``write`` of a file opened for
appending (a local file), or, where the filesystem cannot append (object stores), by writing the
whole new file under a temporary name and renaming it over the old one. A line that does not parse
(a writer killed mid-line on a filesystem without atomic appends) is skipped by the reader with a
warning, and the next append starts on a fresh line, so it cannot corrupt a later record.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterable

from absl import logging
from etils import epath

STATUS_OK, STATUS_FAILED = "ok", "failed"
FILENAME = "results.jsonl"


def filename(shard: tuple[int, int] | None = None) -> str:
    """``results.jsonl``, or ``results.shard-I-of-N.jsonl`` for shard ``(I, N)`` with N > 1."""
    if shard is None or shard[1] == 1:
        return FILENAME
    return f"results.shard-{shard[0]}-of-{shard[1]}.jsonl"


def _clean(obj):
    """JSON has no NaN/inf: they become None (a record must stay readable by any JSON parser)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def encode(record: dict) -> str:
    """One line of strict JSON (no NaN), ending in a newline."""
    return json.dumps(_clean(record), sort_keys=False, allow_nan=False) + "\n"


def _is_local(path: epath.Path) -> bool:
    return "://" not in os.fspath(path)


def append(path: str | os.PathLike, record: dict) -> None:
    """Appends ``record`` as one line; creates the file (and its directory) if needed."""
    path = epath.Path(path)
    line = encode(record).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    if _is_local(path):
        fd = os.open(os.fspath(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size and not _ends_with_newline(path):
                line = b"\n" + line  # a torn last line stays alone on its line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(old + line)
    tmp.replace(path)


def _ends_with_newline(path: epath.Path) -> bool:
    with open(os.fspath(path), "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def read(path: str | os.PathLike) -> list[dict]:
    """Every record of a results file, in order; unparsable lines are skipped with a warning.

    A missing file has no records.
    """
    path = epath.Path(path)
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logging.warning("%s:%d: skipping a line that is not a whole JSON record", path, n)
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_dir(workdir: str | os.PathLike) -> list[dict]:
    """The records of every ``results*.jsonl`` in ``workdir`` (sorted file names, then lines)."""
    workdir = epath.Path(workdir)
    if not workdir.exists():
        return []
    files = sorted(p for p in workdir.glob("results*.jsonl") if not p.name.startswith("."))
    return [record for f in files for record in read(f)]


def latest(records: Iterable[dict]) -> dict[str, dict]:
    """One record per ``point_id``: its last ``ok`` record, else its last record."""
    out: dict[str, dict] = {}
    for record in records:
        pid = record.get("point_id")
        if pid is None:
            continue
        if out.get(pid, {}).get("status") == STATUS_OK and record.get("status") != STATUS_OK:
            continue
        out[pid] = record
    return out


def completed(records: Iterable[dict]) -> set[str]:
    """``point_id`` s with an ``ok`` record (failed points are run again)."""
    return {r["point_id"] for r in records if r.get("status") == STATUS_OK and "point_id" in r}
