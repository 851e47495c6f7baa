"""Compatibility module: reference users import `tokenizer` / `SimpleTokenizer` from here."""

from dalle2_pytorch.clip_adapters.tokenizer import SimpleTokenizer, tokenizer  # noqa: F401

__all__ = ["SimpleTokenizer", "tokenizer"]
