"""Files of precomputed CLIP embeddings in the clip-retrieval / img2dataset layout.

```
OUT/img_emb/img_emb_0000.npy       (n, d) image embeddings of shard 0; row i = sample i of the shard
OUT/text_emb/text_emb_0000.npy     (n, d) text embeddings, same rows
OUT/metadata/metadata_0000.parquet columns `caption` (and `key`, ...), same rows      (clip-retrieval)
OUT/metadata/metadata_0000.json    {"caption": [...], "key": [...]}, same rows   (no pyarrow needed)
```

Files are paired with shards by the trailing digits of their names (:func:`shard_number`), so any
prefix and zero-padding width works. An all-zero row marks a sample without an embedding
(:func:`dalle2_pytorch.data.precompute.precompute_embeddings` writes zeros for samples it could
not read; the reference decoder loader refuses such rows too).

Local paths and `file://` URLs are read with `numpy.load(mmap_mode="r")`; other URLs through
`fsspec` (whatever protocols its installed backends support).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Sequence

import numpy as np

from .shards import _is_local, local_path, shard_number

__all__ = [
    "IMG_EMB",
    "METADATA",
    "TEXT_EMB",
    "atomic_save_npy",
    "atomic_write_bytes",
    "embedding_file_name",
    "list_shard_files",
    "load_npy",
    "read_metadata",
    "write_metadata_json",
]

IMG_EMB = "img_emb"
TEXT_EMB = "text_emb"
METADATA = "metadata"
METADATA_SUFFIXES = (".parquet", ".json", ".jsonl")


def embedding_file_name(kind: str, shard: int, width: int = 4) -> str:
    """`img_emb_0003.npy` / `text_emb_0003.npy` / `metadata_0003` (no suffix for metadata)."""
    if kind not in (IMG_EMB, TEXT_EMB, METADATA):
        raise ValueError(f"kind must be one of {IMG_EMB!r}, {TEXT_EMB!r}, {METADATA!r}; got {kind!r}")
    name = f"{kind}_{shard:0{width}d}"
    return name if kind == METADATA else name + ".npy"


def _join(folder: str, name: str) -> str:
    return folder.rstrip("/") + "/" + name


def _list_names(folder: str) -> list[str]:
    if _is_local(folder):
        path = local_path(folder)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"embedding folder {folder!r} does not exist")
        return sorted(os.listdir(path))
    import fsspec

    fs, path = fsspec.core.url_to_fs(folder)
    return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def list_shard_files(folder: str, suffixes: Sequence[str] = (".npy",)) -> dict[int, str]:
    """`{shard number: url}` for the files of `folder` with one of `suffixes`.

    Raises:
        FileNotFoundError: missing folder.
        ValueError: two files claim the same shard number.
    """
    found: dict[int, str] = {}
    for name in _list_names(folder):
        if not name.endswith(tuple(suffixes)) or name.startswith("."):
            continue
        stem = name[: -len(next(s for s in suffixes if name.endswith(s)))]
        if not re.search(r"\d+$", stem):
            continue
        n = shard_number(stem)
        if n in found:
            raise ValueError(f"two files for shard {n} in {folder!r}: {os.path.basename(found[n])} and {name}")
        found[n] = _join(folder, name)
    return found


def load_npy(url: str, mmap: bool = True) -> np.ndarray:
    """Loads a `.npy` file (memory-mapped when local and `mmap`)."""
    if _is_local(url):
        return np.load(local_path(url), mmap_mode="r" if mmap else None, allow_pickle=False)
    import fsspec

    with fsspec.open(url, "rb") as f:
        return np.load(f, allow_pickle=False)


def read_metadata(url: str, columns: Sequence[str] = ("caption",)) -> dict[str, list[Any]]:
    """Reads the metadata file of one shard as `{column: list}`.

    Supports `.json` (`{"caption": [...]}` or a list of records), `.jsonl` (one record per line)
    and `.parquet` (needs `pyarrow`).

    Raises:
        ValueError: unsupported suffix, bad content or a missing column (message names the file).
        ImportError: a parquet file without pyarrow installed.
    """
    if url.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as error:
            raise ImportError(
                f"reading {url} needs pyarrow (pip install pyarrow), or convert the metadata to "
                "metadata_NNNN.json files"
            ) from error
        table = pq.read_table(local_path(url) if _is_local(url) else url)
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise ValueError(f"metadata file {url} has no column(s) {missing}; it has {table.column_names}")
        return {c: table.column(c).to_pylist() for c in columns}
    text = _read_text(url)
    if url.endswith(".jsonl"):
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif url.endswith(".json"):
        records = json.loads(text)
    else:
        raise ValueError(f"unsupported metadata file {url}; expected .parquet, .json or .jsonl")
    if isinstance(records, dict):
        table = records
    elif isinstance(records, list) and all(isinstance(r, dict) for r in records):
        table = {c: [r.get(c) for r in records] for c in columns if all(c in r for r in records)}
    else:
        raise ValueError(f"metadata file {url} must hold a dict of columns or a list of records")
    missing = [c for c in columns if c not in table]
    if missing:
        raise ValueError(f"metadata file {url} has no column(s) {missing}")
    lengths = {len(table[c]) for c in columns}
    if len(lengths) > 1:
        raise ValueError(f"metadata file {url} has columns of different lengths")
    return {c: list(table[c]) for c in columns}


def _read_text(url: str) -> str:
    if _is_local(url):
        with open(local_path(url), encoding="utf-8") as f:
            return f.read()
    import fsspec

    with fsspec.open(url, "r", encoding="utf-8") as f:
        return f.read()


def write_metadata_json(path: str, columns: dict[str, list[Any]]) -> None:
    """Writes `{column: list}` to `path` atomically (temporary file + rename)."""
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError("metadata columns must have the same length")
    atomic_write_bytes(path, json.dumps(columns, ensure_ascii=False).encode("utf-8"))


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes `data` to `path` via a temporary file in the same folder, fsync and rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save_npy(path: str, array: np.ndarray) -> None:
    """`numpy.save` to `path` atomically."""
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())
