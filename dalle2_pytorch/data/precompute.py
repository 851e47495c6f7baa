"""Precompute CLIP image/text embeddings for webdataset shards.

For every shard `…NNNN.tar` this writes (the layout both loaders read, see :mod:`.embedding_files`):

```
OUT/img_emb/img_emb_NNNN.npy     (rows, dim) image embeddings
OUT/text_emb/text_emb_NNNN.npy   (rows, dim) text embeddings of the captions
OUT/metadata/metadata_NNNN.json  {"key": [...], "caption": [...]}   (or .parquet)
```

Row `i` holds the sample whose key ends in `i` (the last `index_width` characters of the key; the
whole key when it is all digits and `index_width` is None; else samples are numbered in tar
order). Rows of samples that could not be read are all zeros, with key None and caption "", which
both loaders treat as "missing". Each file is written atomically and the metadata file last, so a
shard whose metadata exists is complete: re-running skips it (resumable).

Usage::

    python -m dalle2_pytorch.data.precompute --shards 'DATA/{0..9}.tar' --out EMB --clip SPEC

`SPEC` is one of: `open_clip:ViT-B-32[:pretrained_tag]`, `openai:ViT-L/14`, an `AdapterConfig`
JSON (inline `{...}` or a `.json` file: `make`, `model`, `pretrained`, `base_model_kwargs`), or
`py:package.module:function` (a function returning a CLIP adapter).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .counters import SkipCounter
from .decoder_loader import ImageEmbeddingDataset
from .embedding_files import (
    IMG_EMB,
    METADATA,
    TEXT_EMB,
    atomic_save_npy,
    atomic_write_bytes,
    embedding_file_name,
    write_metadata_json,
)
from .shards import expand_urls, shard_number
from .transforms import clip_image_transform

__all__ = ["PrecomputeSummary", "load_clip_from_spec", "main", "precompute_embeddings"]

logger = logging.getLogger(__name__)


@dataclass
class PrecomputeSummary:
    """What :func:`precompute_embeddings` did.

    Attributes:
        out_dir: output folder.
        written: shards whose files were (re)written.
        already_done: shards skipped because their files existed.
        samples: samples embedded.
        skipped_samples: unreadable samples (zero rows).
        shard_errors: shards that could not be read to the end (their readable samples are kept).
        dimension: embedding width (None if nothing was embedded).
    """

    out_dir: str
    written: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    samples: int = 0
    skipped_samples: int = 0
    shard_errors: int = 0
    dimension: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _shard_paths(out_dir: str, n: int, metadata_format: str) -> dict[str, str]:
    return {
        "img": os.path.join(out_dir, IMG_EMB, embedding_file_name(IMG_EMB, n)),
        "text": os.path.join(out_dir, TEXT_EMB, embedding_file_name(TEXT_EMB, n)),
        "meta": os.path.join(out_dir, METADATA, embedding_file_name(METADATA, n) + "." + metadata_format),
    }


def _row_indices(keys: list[str], index_width: int | None) -> list[int]:
    if index_width is not None:
        tails = [k[-index_width:] for k in keys]
        bad = [k for k, t in zip(keys, tails) if not t.isdigit()]
        if bad:
            raise ValueError(f"keys {bad[:3]} do not end in {index_width} digits (index_width={index_width})")
        rows = [int(t) for t in tails]
    elif all(k.isdigit() for k in keys):
        rows = [int(k) for k in keys]
    else:
        return list(range(len(keys)))
    if len(set(rows)) != len(rows):
        raise ValueError(f"two samples map to the same row (keys {keys[:5]}...); check index_width={index_width}")
    return rows


@torch.inference_mode()
def _embed_batch(clip: Any, images: list[torch.Tensor], captions: list[str], device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    image_embed = clip.embed_image(torch.stack(images).to(device))[0]
    tokens = clip.tokenize(captions)
    text_embed = clip.embed_text(tokens.to(device))[0]
    return image_embed.float().cpu().numpy(), text_embed.float().cpu().numpy()


def _write_metadata(path: str, columns: dict[str, list[Any]], metadata_format: str) -> None:
    if metadata_format == "json":
        write_metadata_json(path, columns)
        return
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def precompute_embeddings(
    shards: str | Sequence[str],
    out_dir: str | os.PathLike,
    clip: Any,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    *,
    index_width: int | None = None,
    overwrite: bool = False,
    dtype: str = "float32",
    metadata_format: str = "json",
    caption_key: str = "txt",
) -> PrecomputeSummary:
    """Embeds the images and captions of webdataset shards with a CLIP adapter.

    Args:
        shards: shard spec(s) (brace notation, `"::"`-joined or a list). Shard numbers are read
            from the file names (`…NNNN.tar`).
        out_dir: output folder (created).
        clip: a CLIP adapter: `embed_image((b, c, s, s) in [0, 1]) -> (image_embed (b, d), ...)`,
            `embed_text(tokens) -> (text_embed (b, d), ...)`, `tokenize(list[str])`, `image_size`.
        batch_size: images per CLIP call.
        device: where to run CLIP (default: where its parameters are).
        index_width: key characters giving the row (see the module docstring).
        overwrite: recompute shards whose files exist.
        dtype: "float32" or "float16" (clip-retrieval's choice) for the .npy files.
        metadata_format: "json" or "parquet" (needs pyarrow).
        caption_key: sample field holding the caption.

    Returns:
        A :class:`PrecomputeSummary`.

    Raises:
        ValueError: bad arguments, or keys that do not map to distinct rows.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    if metadata_format not in ("json", "parquet"):
        raise ValueError(f"metadata_format must be 'json' or 'parquet', got {metadata_format!r}")
    if metadata_format == "parquet":
        importlib.import_module("pyarrow")  # fail before any work when pyarrow is missing
    for name in ("embed_image", "embed_text", "tokenize", "image_size"):
        if not hasattr(clip, name):
            raise TypeError(f"clip must be a CLIP adapter with embed_image/embed_text/tokenize/image_size; missing {name}")
    urls = expand_urls(shards)
    numbers = [shard_number(u) for u in urls]
    if len(set(numbers)) != len(numbers):
        raise ValueError("two shards have the same shard number; their output files would collide")
    out_dir = os.fspath(out_dir)
    for sub in (IMG_EMB, TEXT_EMB, METADATA):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    if device is not None and hasattr(clip, "to"):
        clip = clip.to(device)
    device = torch.device(device) if device is not None else torch.device(getattr(clip, "device", "cpu"))
    summary = PrecomputeSummary(out_dir=out_dir)
    counter = SkipCounter(max_consecutive_errors=None)
    transform = clip_image_transform(int(clip.image_size))

    for url, n in zip(urls, numbers):
        paths = _shard_paths(out_dir, n, metadata_format)
        if not overwrite and all(os.path.exists(p) for p in paths.values()):
            summary.already_done.append(url)
            continue
        before = counter.as_dict()
        dataset = ImageEmbeddingDataset(
            url, img_preproc=transform, extra_keys=["__key__", caption_key], shuffle_shards=False,
            rank=0, world_size=1, skip_counter=counter,
        )
        keys: list[str] = []
        captions: list[str] = []
        image_rows: list[np.ndarray] = []
        text_rows: list[np.ndarray] = []
        pending: list[tuple[torch.Tensor, str, str]] = []

        def flush() -> None:
            if pending:
                img, txt = _embed_batch(clip, [p[0] for p in pending], [p[2] for p in pending], device)
                image_rows.append(img)
                text_rows.append(txt)
                keys.extend(p[1] for p in pending)
                captions.extend(p[2] for p in pending)
                pending.clear()

        for image, _, key, caption in dataset:
            pending.append((image, key, caption))
            if len(pending) == batch_size:
                flush()
        flush()
        summary.skipped_samples += counter.samples - before["skipped_samples"]
        summary.shard_errors += counter.shards - before["skipped_shards"]
        if not keys:
            logger.warning("shard %s has no readable sample; no files written for it", url)
            continue
        images, texts = np.concatenate(image_rows), np.concatenate(text_rows)
        rows = _row_indices(keys, index_width)
        size = max(rows) + 1
        image_out = np.zeros((size, images.shape[1]), dtype=dtype)
        text_out = np.zeros((size, texts.shape[1]), dtype=dtype)
        image_out[rows], text_out[rows] = images, texts
        meta: dict[str, list[Any]] = {"key": [None] * size, "caption": [""] * size}
        for row, key, caption in zip(rows, keys, captions):
            meta["key"][row], meta["caption"][row] = key, caption
        atomic_save_npy(paths["img"], image_out)
        atomic_save_npy(paths["text"], text_out)
        _write_metadata(paths["meta"], meta, metadata_format)  # last: marks the shard complete
        summary.written.append(url)
        summary.samples += len(keys)
        summary.dimension = int(images.shape[1])
        logger.info("shard %s: %d samples embedded -> %s", url, len(keys), paths["img"])
    return summary


def load_clip_from_spec(spec: str) -> Any:
    """Builds a CLIP adapter from a command-line spec (see the module docstring).

    Raises:
        ValueError: unrecognised spec.
    """
    from dalle2_pytorch.clip_adapters import build_clip_adapter

    if spec.startswith("py:"):
        module_name, _, attr = spec[3:].rpartition(":")
        if not module_name or not attr:
            raise ValueError(f"expected py:package.module:function, got {spec!r}")
        return getattr(importlib.import_module(module_name), attr)()
    if spec.lstrip().startswith("{") or (spec.endswith(".json") and os.path.isfile(spec)):
        if spec.lstrip().startswith("{"):
            config = json.loads(spec)
        else:
            with open(spec, encoding="utf-8") as f:
                config = json.load(f)
        if not isinstance(config, dict) or "make" not in config:
            raise ValueError(f"a CLIP JSON spec needs at least 'make'; got {config!r}")
        return build_clip_adapter(**config)
    make, sep, rest = spec.partition(":")
    if sep and make.lower().replace("_", "-") in ("open-clip", "openai", "x-clip"):
        model, _, pretrained = rest.partition(":")
        return build_clip_adapter(make, model or None, pretrained=pretrained or True)
    raise ValueError(
        f"unrecognised --clip spec {spec!r}; use open_clip:MODEL[:TAG], openai:MODEL, an AdapterConfig "
        "JSON (inline or .json file) or py:module:function"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the summary as JSON. Returns the exit status; every error is
    one line on stderr (`precompute: error: ...`; `--verbose` adds the traceback)."""
    from dalle2_pytorch.command_line import run_command

    return run_command("precompute", _main, argv)


def _main(argv: Sequence[str]) -> int:
    from dalle2_pytorch.command_line import ArgumentParser, UserError, check_device

    parser = ArgumentParser(prog="python -m dalle2_pytorch.data.precompute", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", required=True, help="shard spec, e.g. 'data/{0000..0099}.tar'")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--clip", required=True, help="CLIP adapter spec (see the module docs)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--index-width", type=int, default=None)
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--metadata-format", choices=("json", "parquet"), default="json")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="torch seed (matters only for random-weight CLIPs)")
    parser.add_argument("--verbose", "-v", action="store_true", help="print the traceback of an error")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.index_width is not None and args.index_width < 1:
        raise UserError(f"--index-width must be >= 1, got {args.index_width}")
    if not 0 <= args.seed < 2**64:
        raise UserError(f"--seed must be between 0 and 2**64 - 1, got {args.seed}")
    if args.device is not None:
        check_device(args.device)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is an existing file; give a folder")
    urls = expand_urls(args.shards)
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not os.path.isfile(u)]
    if missing:
        raise UserError(f"--shards: {len(missing)} of {len(urls)} shard file(s) not found (first: {missing[0]})")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    try:
        clip = load_clip_from_spec(args.clip)
    except (ValueError, OSError, ImportError, RuntimeError, TypeError) as e:
        raise UserError(f"could not build the CLIP adapter from --clip {args.clip!r}: {e}") from e
    summary = precompute_embeddings(
        args.shards, args.out, clip, batch_size=args.batch_size, device=args.device,
        index_width=args.index_width, overwrite=args.overwrite, dtype=args.dtype,
        metadata_format=args.metadata_format,
    )
    print(json.dumps(summary.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
