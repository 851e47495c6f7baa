"""A deterministic word-level tokenizer for small CLIPs (the demo's, the tiny test configs').

The demo captions use about fifty distinct words, so a word-level vocabulary keeps the CLIP's
embedding table tiny (vs 49,408 BPE tokens). Ids: 0 padding, 1 start-of-text, 2 end-of-text,
3 unknown word, then the vocabulary in the order given. Text is lower-cased and split into runs
of letters/digits; punctuation is dropped.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch

__all__ = ["WordTokenizer"]

_WORD = re.compile(r"[a-z0-9]+")


class WordTokenizer:
    """Callable ``texts -> LongTensor (b, context_length)``: ``[SOT, w1, ..., wn, EOT, 0, ...]``.

    Args:
        vocab: the known words (unique, lower case); unknown words map to ``unk_id``.
        context_length: output length, start/end tokens included.
    """

    pad_id = 0
    sot_id = 1
    eot_id = 2
    unk_id = 3
    num_special = 4

    def __init__(self, vocab: Sequence[str], context_length: int = 24) -> None:
        vocab = list(vocab)
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab contains duplicate words")
        bad = [w for w in vocab if not _WORD.fullmatch(w)]
        if bad:
            raise ValueError(f"vocab words must be lower-case letters/digits only, got {bad[:5]}")
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3 (start, one word, end), got {context_length}")
        self.vocab = vocab
        self.context_length = int(context_length)
        self._ids = {w: i + self.num_special for i, w in enumerate(vocab)}

    @property
    def vocab_size(self) -> int:
        """Number of ids (special tokens included): the CLIP's ``num_text_tokens``."""
        return len(self.vocab) + self.num_special

    def encode(self, text: str) -> list[int]:
        """Word ids of ``text`` without start/end/padding."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return [self._ids.get(w, self.unk_id) for w in _WORD.findall(text.lower())]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Words of ``ids``, skipping special tokens (unknown words become ``<unk>``)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        words = []
        for i in ids:
            if i == self.unk_id:
                words.append("<unk>")
            elif i >= self.num_special:
                words.append(self.vocab[i - self.num_special])
        return " ".join(words)

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None, truncate_text: bool = True
    ) -> torch.Tensor:
        """Tokenises ``texts`` to a (b, context_length) LongTensor (b = 1 for a single string).

        Texts longer than the context are cut (keeping the end token) if ``truncate_text``, else a
        ``ValueError`` is raised.
        """
        if isinstance(texts, str):
            texts = [texts]
        length = int(context_length or self.context_length)
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) + 2 > length:
                if not truncate_text:
                    raise ValueError(f"text has {len(ids)} words, more than context length {length} allows: {text!r}")
                ids = ids[: length - 2]
            out[row, : len(ids) + 2] = torch.tensor([self.sot_id, *ids, self.eot_id])
        return out

    def to_dict(self) -> dict:
        return {"type": "word", "vocab": list(self.vocab), "context_length": self.context_length}

    @classmethod
    def from_dict(cls, d: dict) -> "WordTokenizer":
        if d.get("type", "word") != "word":
            raise ValueError(f"not a word tokenizer config: type={d.get('type')!r}")
        return cls(d["vocab"], d["context_length"])

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"
