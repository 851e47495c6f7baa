"""CLIP byte-pair-encoding tokenizer with start/end-of-text tokens.

The BPE itself (OpenAI's 49 408-entry vocabulary; ftfy + HTML unescape, whitespace clean-up,
lower-casing) comes from `open_clip`, which ships the merges file, so nothing is downloaded.

Difference from the reference package's `dalle2_pytorch.tokenizer`: its `tokenize` omitted the
`<|startoftext|>` (49406) and `<|endoftext|>` (49407) tokens, so CLIP models that pool at the
end-of-text position (OpenAI/OpenCLIP pool at the highest token id) embedded the wrong token.
Here `tokenize` adds both by default (`add_start_end=False` reproduces the old output), truncation
keeps the end-of-text token in the last slot, and `decode` strips the real end-of-text id.

`tokenizer` (module attribute) is a lazily built default instance, like the reference's global.
"""

from __future__ import annotations

import functools
from typing import Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["SimpleTokenizer", "tokenizer", "SOT_TOKEN_ID", "EOT_TOKEN_ID", "VOCAB_SIZE"]

SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
VOCAB_SIZE = 49408


@functools.lru_cache(maxsize=None)
def _open_clip_bpe(bpe_path: str | None):
    from open_clip.tokenizer import SimpleTokenizer as OpenClipBPE

    return OpenClipBPE() if bpe_path is None else OpenClipBPE(bpe_path)


class SimpleTokenizer:
    """OpenAI CLIP BPE tokenizer.

    Args:
        context_length: default length of `__call__` outputs (77 for OpenAI/OpenCLIP models).
        bpe_path: optional path of a merges file (`.txt.gz`); default: the one shipped with open_clip.

    Calling the instance, `tok(texts)`, returns (b, context_length) ids with start/end-of-text
    tokens and silent truncation (the CLIP convention); `tokenize` is the reference-compatible
    method with an explicit `truncate_text` flag.
    """

    def __init__(self, context_length: int = 77, bpe_path: str | None = None) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (start and end tokens), got {context_length}")
        self.context_length = int(context_length)
        self._bpe_path = bpe_path

    @property
    def _bpe(self):
        return _open_clip_bpe(self._bpe_path)

    @property
    def vocab_size(self) -> int:
        return len(self._bpe.encoder)

    def _special_id(self, attribute: str, spellings: tuple[str, ...]) -> int:
        bpe = self._bpe
        if hasattr(bpe, attribute):
            return int(getattr(bpe, attribute))
        for spelling in spellings:  # the spelling differs between open_clip versions
            if spelling in bpe.encoder:
                return int(bpe.encoder[spelling])
        raise KeyError(f"the BPE vocabulary has no {spellings[0]} token")

    @property
    def sot_token_id(self) -> int:
        return self._special_id("sot_token_id", ("<start_of_text>", "<|startoftext|>"))

    @property
    def eot_token_id(self) -> int:
        return self._special_id("eot_token_id", ("<end_of_text>", "<|endoftext|>"))

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text` without start/end tokens (as the reference's `encode`)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a string, got {type(text).__name__}")
        return list(self._bpe.encode(text))

    def decode(
        self,
        tokens: Iterable[int] | Tensor,
        remove_start_end: bool = True,
        pad_tokens: Iterable[int] = (),
    ) -> str:
        """Ids -> text. Drops 0 padding, `pad_tokens` and (by default) start/end-of-text ids."""
        if torch.is_tensor(tokens):
            tokens = tokens.tolist()
        drop = {0, *pad_tokens}
        if remove_start_end:
            drop |= {self.sot_token_id, self.eot_token_id}
        kept = [int(t) for t in tokens if int(t) not in drop]
        return self._bpe.decode(kept).strip()

    def tokenize(
        self,
        texts: str | Sequence[str],
        context_length: int = 256,
        truncate_text: bool = False,
        add_start_end: bool = True,
    ) -> Tensor:
        """Reference-compatible batch tokenisation.

        Args:
            texts: a string or list of strings.
            context_length: output length (the reference's default is 256; CLIP models use 77).
            truncate_text: cut texts that are too long (keeping end-of-text last) instead of raising.
            add_start_end: add `<|startoftext|>` / `<|endoftext|>` (False reproduces the reference).

        Returns:
            (b, context_length) LongTensor, zero padded.

        Raises:
            ValueError: a text is too long and `truncate_text` is False.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("tokenize expects a string or a list of strings")
        if context_length < (2 if add_start_end else 1):
            raise ValueError(f"context_length too small: {context_length}")
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.encode(text)
            if add_start_end:
                ids = [self.sot_token_id, *ids, self.eot_token_id]
            if len(ids) > context_length:
                if not truncate_text:
                    raise ValueError(
                        f"text {i} has {len(ids)} tokens, more than context_length={context_length}; "
                        "pass truncate_text=True to cut it"
                    )
                ids = ids[:context_length]
                if add_start_end:
                    ids[-1] = self.eot_token_id
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tensor:
        """(b, context_length) ids with start/end tokens; long texts are truncated (end token kept)."""
        length = self.context_length if context_length is None else context_length
        return self.tokenize(texts, context_length=length, truncate_text=True, add_start_end=True)


@functools.lru_cache(maxsize=None)
def _default_tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer()


def __getattr__(name: str):
    # lazily built module-level instance (no work at import time)
    if name == "tokenizer":
        return _default_tokenizer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
