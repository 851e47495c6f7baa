"""Shard lists: expansion, train/val/test splits and the split between ranks and workers.

Conventions handled here:

* brace notation (`"data/{0000..0099}.tar"`) and several specs joined by `"::"` (webdataset);
* the reference's `DecoderDataConfig` template: `webdataset_base_url` with a `{}` placeholder that
  receives the zero-padded shard number (`shard_width` digits) for `start_shard..end_shard`
  (both inclusive);
* the shard number of a file is the integer formed by the trailing digits of its name without
  extension (`000123.tar` -> 123, `img_emb_0007.npy` -> 7), which is how tar shards are paired
  with their embedding files.

Process placement (`consumer_split`): a "consumer" is one DataLoader worker of one rank. When
there are enough shards every rank (and within it every worker) reads different shards; when there
are fewer shards than ranks (or workers), the ranks read the same shards and keep every n-th
sample instead, so coverage stays disjoint and complete.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence, TypeVar

import braceexpand

__all__ = [
    "ConsumerSplit",
    "buffered_shuffle",
    "consumer_split",
    "distributed_info",
    "expand_urls",
    "shard_number",
    "shard_urls_from_template",
    "split_shards",
]

T = TypeVar("T")

_TRAILING_DIGITS = re.compile(r"(\d+)$")


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Expands brace notation and `"::"`-joined specs into a flat list of shard URLs.

    Args:
        urls: one spec (`"dir/{0..9}.tar"`, `"a.tar::b.tar"`) or a list of specs/URLs.

    Returns:
        The URLs in order.

    Raises:
        ValueError: nothing to expand.
        TypeError: not a string or a sequence of strings.
    """
    if isinstance(urls, os.PathLike):
        urls = os.fspath(urls)
    if isinstance(urls, str):
        specs = urls.split("::")
    elif isinstance(urls, Sequence) and all(isinstance(u, (str, os.PathLike)) for u in urls):
        specs = [os.fspath(u) for u in urls]
    else:
        raise TypeError(f"shard urls must be a string or a list of strings, got {type(urls).__name__}")
    out: list[str] = []
    for spec in specs:
        if spec:
            out.extend(braceexpand.braceexpand(spec))
    if not out:
        raise ValueError(f"no shard urls in {urls!r}")
    return out


def shard_urls_from_template(
    base_url: str,
    start_shard: int = 0,
    end_shard: int = 9999999,
    shard_width: int = 6,
    only_existing: bool | None = None,
) -> list[str]:
    """Shard URLs from the reference's `DecoderDataConfig` convention.

    `base_url` holds a `{}` placeholder that receives `str(n).zfill(shard_width)` for every
    `n` in `start_shard..end_shard` (inclusive).

    Args:
        base_url: e.g. `"/data/laion/{}.tar"`.
        start_shard: first shard number.
        end_shard: last shard number (inclusive); the reference's default 9999999 means "all".
        shard_width: zero-padding width of the shard number.
        only_existing: keep only shards that exist. None (default): True for local paths, False
            for remote URLs. For local paths with the placeholder in the file name the directory is
            listed instead of probing every number, so a huge `end_shard` costs nothing.

    Returns:
        The shard URLs, sorted by shard number.

    Raises:
        ValueError: no `{}` placeholder, bad range, or no shard found.
    """
    if "{}" not in base_url:
        raise ValueError(f"webdataset_base_url must contain a '{{}}' placeholder for the shard number, got {base_url!r}")
    if start_shard < 0 or end_shard < start_shard:
        raise ValueError(f"invalid shard range start_shard={start_shard}, end_shard={end_shard}")
    if shard_width < 1:
        raise ValueError(f"shard_width must be >= 1, got {shard_width}")
    local = _is_local(base_url)
    if only_existing is None:
        only_existing = local
    path = local_path(base_url)
    if only_existing and local and "{}" in os.path.basename(path) and "{}" not in os.path.dirname(path):
        folder = os.path.dirname(path) or "."
        prefix, suffix = os.path.basename(path).split("{}", 1)
        pattern = re.compile(re.escape(prefix) + r"(\d{%d,})" % shard_width + re.escape(suffix) + "$")
        found = []
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            m = pattern.match(name)
            if m and len(m.group(1)) == max(shard_width, len(str(int(m.group(1))))):
                n = int(m.group(1))
                if start_shard <= n <= end_shard:
                    found.append((n, base_url.replace("{}", m.group(1), 1)))
        urls = [u for _, u in sorted(found)]
    else:
        urls = [base_url.replace("{}", str(n).zfill(shard_width), 1) for n in range(start_shard, end_shard + 1)]
        if only_existing:
            urls = [u for u in urls if os.path.exists(local_path(u))]
    if not urls:
        raise ValueError(
            f"no shards found for {base_url!r} with shard numbers {start_shard}..{end_shard} "
            f"(shard_width {shard_width})"
        )
    return urls


def _is_local(url: str) -> bool:
    return url.startswith("file:") or not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", url)


def local_path(url: str) -> str:
    """`file://` URL -> path (other strings unchanged)."""
    return re.sub(r"^file://?", "", url) if url.startswith("file:") else url


def shard_number(url: str) -> int:
    """The shard number of a file: trailing digits of its base name without extension.

    Raises:
        ValueError: the name does not end in digits.
    """
    name = os.path.basename(url.rstrip("/"))
    stem = name.split(".", 1)[0] if not name.startswith(".") else name
    m = _TRAILING_DIGITS.search(stem)
    if m is None:
        raise ValueError(f"cannot read a shard number from {url!r}: its name must end in digits (e.g. 000123.tar)")
    return int(m.group(1))


def split_shards(
    urls: Sequence[T],
    splits: Mapping[str, float] | Sequence[float] | object,
    seed: int = 0,
) -> dict[str, list[T]]:
    """Seeded random split of shards into train/val/test.

    The same `seed` gives the same split on every rank and every run. Counts are
    `round(frac * n)` for val and test (at least one shard each when their fraction is > 0 and
    there are enough shards); train gets the rest.

    Args:
        urls: the shard list.
        splits: `{"train": .., "val": .., "test": ..}`, a `(train, val, test)` tuple, or an object
            with those attributes (e.g. `TrainSplitConfig`). Fractions must sum to 1.
        seed: shuffling seed.

    Returns:
        `{"train": [...], "val": [...], "test": [...]}`; each list keeps the input order.

    Raises:
        ValueError: bad fractions, or too few shards for the non-zero fractions.
    """
    fractions = _split_fractions(splits)
    n = len(urls)
    wanted = {name: frac for name, frac in fractions.items() if frac > 0}
    if n < len(wanted):
        raise ValueError(
            f"{n} shard(s) cannot be split into {len(wanted)} non-empty parts {sorted(wanted)}; "
            "use more shards or set the unused split fractions to 0"
        )
    counts = {}
    for name in ("val", "test"):
        frac = fractions[name]
        counts[name] = 0 if frac == 0 else max(1, int(round(frac * n)))
    if fractions["train"] > 0 and counts["val"] + counts["test"] >= n:
        # keep at least one training shard
        largest = "val" if counts["val"] >= counts["test"] else "test"
        counts[largest] -= counts["val"] + counts["test"] - (n - 1)
    counts["train"] = n - counts["val"] - counts["test"]
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out: dict[str, list[T]] = {}
    at = 0
    for name in ("train", "val", "test"):
        chosen = sorted(order[at : at + counts[name]])
        out[name] = [urls[i] for i in chosen]
        at += counts[name]
    return out


def _split_fractions(splits: Mapping[str, float] | Sequence[float] | object) -> dict[str, float]:
    if isinstance(splits, Mapping):
        unknown = set(splits) - {"train", "val", "test"}
        if unknown:
            raise ValueError(f"unknown split names {sorted(unknown)}; expected train/val/test")
        values = {k: float(splits.get(k, 0.0)) for k in ("train", "val", "test")}
    elif isinstance(splits, Sequence) and not isinstance(splits, str):
        if len(splits) != 3:
            raise ValueError(f"splits must be (train, val, test), got {splits!r}")
        values = dict(zip(("train", "val", "test"), (float(s) for s in splits)))
    elif all(hasattr(splits, k) for k in ("train", "val", "test")):
        values = {k: float(getattr(splits, k)) for k in ("train", "val", "test")}
    else:
        raise TypeError(f"splits must be a dict, a (train, val, test) tuple or a split config, got {splits!r}")
    if any(v < 0 for v in values.values()):
        raise ValueError(f"split fractions must be non-negative, got {values}")
    if abs(sum(values.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {values} (sum {sum(values.values())})")
    return values


def distributed_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): explicit values, else `RANK`/`WORLD_SIZE`, else torch.distributed, else (0, 1)."""
    if rank is None or world_size is None:
        env_rank, env_world = 0, 1
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            env_rank, env_world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        else:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                env_rank, env_world = dist.get_rank(), dist.get_world_size()
        rank = env_rank if rank is None else rank
        world_size = env_world if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world_size {world_size}")
    return rank, world_size


@dataclass(frozen=True)
class ConsumerSplit:
    """Where one consumer's data comes from.

    Attributes:
        shards: the shards this consumer opens.
        sample_index: keep samples whose running index `i` (over `shards`, in order) satisfies
            `i % sample_stride == sample_index`.
        sample_stride: 1 when the shards are not shared with other consumers.
    """

    shards: list
    sample_index: int = 0
    sample_stride: int = 1

    def keep(self, i: int) -> bool:
        return i % self.sample_stride == self.sample_index


def consumer_split(
    shards: Sequence[T],
    rank: int,
    world_size: int,
    worker: int = 0,
    num_workers: int = 1,
    drop_uneven_shards: bool = True,
) -> ConsumerSplit:
    """Disjoint placement of shards (or samples) on `world_size` ranks x `num_workers` workers.

    Ranks: with at least `world_size` shards, rank r takes shards r, r + W, r + 2W, ... and, if
    `drop_uneven_shards`, every rank gets the same number of shards (the `len % W` last ones are
    dropped, as the reference does, so DDP ranks run the same number of steps). With fewer shards
    than ranks, every rank reads all shards and keeps every W-th sample.

    Workers of a rank split the rank's part the same way (shards if there are enough, else
    samples; nothing is dropped between workers).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world_size {world_size}")
    if not 0 <= worker < num_workers:
        raise ValueError(f"invalid worker {worker} for num_workers {num_workers}")
    shards = list(shards)
    stride, index = 1, 0
    if len(shards) >= world_size:
        usable = len(shards) - (len(shards) % world_size if drop_uneven_shards else 0)
        shards = shards[rank:usable:world_size]
    else:
        stride, index = world_size, rank
    if stride == 1 and len(shards) >= num_workers:
        shards = shards[worker::num_workers]
    else:
        # samples are shared: consumer (rank, worker) keeps every (stride * num_workers)-th sample
        index = index + stride * worker
        stride = stride * num_workers
    return ConsumerSplit(shards=shards, sample_index=index, sample_stride=stride)


def buffered_shuffle(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Buffered shuffle: keeps `size` items and yields a random one per new item."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(len(buffer))
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer
