"""Counting what a data pipeline skipped (corrupt samples, unreadable shards).

Large web-scraped datasets always contain some broken samples. Stopping the run on the first one
(webdataset's default `reraise_exception`) wastes a job; dropping them silently
(`ignore_and_continue`) hides a misconfigured pipeline; and webdataset's `warn_and_continue`
sleeps 0.5 s per warning. :class:`SkipCounter` is the middle road: every skipped item is logged
once with its shard and key and counted, and the count can be read by the caller, also when the
samples are produced in DataLoader worker processes (the counts live in shared memory).

As in NVIDIA Megatron-Energon, a long run of consecutive failures is treated as a configuration
error (e.g. a wrong `index_width` makes every embedding lookup fail) and raised.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["SkipCounter", "SkipRecord", "TooManyConsecutiveErrors"]

logger = logging.getLogger(__name__)


class TooManyConsecutiveErrors(RuntimeError):
    """Raised when more than `max_consecutive_errors` items in a row failed."""


@dataclass(frozen=True)
class SkipRecord:
    """One skipped item: `kind` is "sample" or "shard"; `url` the shard, `key` the sample key."""

    kind: str
    url: str | None
    key: str | None
    error: str


class SkipCounter:
    """Process-safe counter of skipped samples and shards.

    The totals (`samples`, `shards`, `total`) are shared between the process that created the
    counter and DataLoader workers started from it (fork, spawn or forkserver), so the training
    loop can read and log them. The most recent records (`recent`) and the consecutive-failure
    count are per process.

    Args:
        max_consecutive_errors: raise :class:`TooManyConsecutiveErrors` once this many items failed
            in a row without a good sample in between (None: never).
        log_level: logging level of the one-line message written per skipped item.
        keep_recent: how many recent :class:`SkipRecord` entries to keep per process.
    """

    def __init__(
        self,
        max_consecutive_errors: int | None = 100,
        log_level: int = logging.WARNING,
        keep_recent: int = 32,
    ) -> None:
        if max_consecutive_errors is not None and max_consecutive_errors < 1:
            raise ValueError(f"max_consecutive_errors must be >= 1 or None, got {max_consecutive_errors}")
        self.max_consecutive_errors = max_consecutive_errors
        self.log_level = log_level
        self.keep_recent = keep_recent
        # a spawn-context lock can be handed to workers of any start method (fork, spawn,
        # forkserver); a fork-context one cannot travel to spawned workers
        context = multiprocessing.get_context("spawn")
        self._samples = context.Value("q", 0)
        self._shards = context.Value("q", 0)
        self._init_local()

    def _init_local(self) -> None:
        self._consecutive = 0
        self.recent: deque[SkipRecord] = deque(maxlen=self.keep_recent)

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("recent", "_consecutive")}
        if multiprocessing.context.get_spawning_popen() is None:
            # Not starting a worker process (e.g. copy.deepcopy or torch.save): shared memory
            # cannot travel, so the copy gets detached counters holding the current values.
            state["_samples"] = _Detached(self.samples)
            state["_shards"] = _Detached(self.shards)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_local()

    # ------------------------------------------------------------------ reading
    @property
    def samples(self) -> int:
        """Number of samples skipped (undecodable image, missing key or embedding, ...)."""
        return int(self._samples.value)

    @property
    def shards(self) -> int:
        """Number of shards abandoned part-way or entirely (unreadable or truncated tar, ...)."""
        return int(self._shards.value)

    @property
    def total(self) -> int:
        return self.samples + self.shards

    def as_dict(self) -> dict[str, int]:
        """`{"skipped_samples": ..., "skipped_shards": ...}`, ready for a logger."""
        return {"skipped_samples": self.samples, "skipped_shards": self.shards}

    def reset(self) -> None:
        with self._samples.get_lock():
            self._samples.value = 0
        with self._shards.get_lock():
            self._shards.value = 0
        self._init_local()

    # ------------------------------------------------------------------ recording
    def record(self, kind: str, error: BaseException, url: str | None = None, key: str | None = None) -> None:
        """Counts and logs one skipped item.

        Args:
            kind: "sample" or "shard".
            error: the exception that made the item unusable.
            url: the shard it came from.
            key: the sample key (None for shard-level failures).

        Raises:
            TooManyConsecutiveErrors: after `max_consecutive_errors` failures in a row.
        """
        if kind not in ("sample", "shard"):
            raise ValueError(f"kind must be 'sample' or 'shard', got {kind!r}")
        value = self._samples if kind == "sample" else self._shards
        with value.get_lock():
            value.value += 1
        message = f"{type(error).__name__}: {error}"
        self.recent.append(SkipRecord(kind, url, key, message))
        where = f"shard {url}" + (f", key {key}" if key is not None else "")
        logger.log(self.log_level, "skipping %s (%s): %s", kind, where, message)
        self._consecutive += 1
        if self.max_consecutive_errors is not None and self._consecutive >= self.max_consecutive_errors:
            raise TooManyConsecutiveErrors(
                f"{self._consecutive} consecutive data errors; the last one was in {where}: {message}. "
                "This usually means a misconfigured pipeline (paths, index_width, image key) rather "
                "than a few corrupt samples"
            ) from error

    def success(self) -> None:
        """Marks a good sample (resets the consecutive-failure count)."""
        self._consecutive = 0

    def __call__(self, error: BaseException) -> bool:
        """webdataset handler protocol: count the exception, return True (continue)."""
        url = getattr(error, "url", None)
        key = getattr(error, "key", None)
        self.record("sample", error, url=url, key=key)
        return True

    def __repr__(self) -> str:
        return f"SkipCounter(samples={self.samples}, shards={self.shards})"


class _Detached:
    """Stand-in for a `multiprocessing.Value` in a copy made outside process start-up."""

    def __init__(self, value: int) -> None:
        self.value = value
        self._lock = _NullLock()

    def get_lock(self) -> "_NullLock":
        return self._lock


class _NullLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
