"""The demo's word tokenizer: :class:`dalle2_pytorch.clip_adapters.WordTokenizer` over the caption vocabulary."""

from __future__ import annotations

from dalle2_pytorch.clip_adapters.word_tokenizer import WordTokenizer as _WordTokenizer
from dalle2_pytorch.demo.captions import caption_vocabulary

__all__ = ["WordTokenizer"]


class WordTokenizer(_WordTokenizer):
    """:class:`~dalle2_pytorch.clip_adapters.WordTokenizer` with the demo's caption vocabulary at hand."""

    @classmethod
    def for_captions(cls, context_length: int = 24) -> "WordTokenizer":
        """Tokenizer over the shapes-dataset caption vocabulary."""
        return cls(caption_vocabulary(), context_length)
