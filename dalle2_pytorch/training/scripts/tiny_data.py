"""Inputs of the tiny CPU configs (`train_configs/prior_tiny_cpu.json`, `decoder_tiny_cpu.json`).

`prepare_tiny_data(out_dir)` writes, from the ten small webdataset shards shipped in
`tests/fixtures/reference_shards/` (the reference's CI data: 7 captioned photos per shard):

    OUT/clip/                 a tiny random-weight x-clip CLIP in the demo's folder format
                              (clip.safetensors + clip_config.json with a word tokenizer)
    OUT/prior_embeddings/     img_emb/, text_emb/, metadata/ computed with that CLIP

CLI (from the repository root, then run the tiny configs unchanged)::

    python -m dalle2_pytorch.training.scripts.tiny_data --out .tiny_cpu
    python train_prior.py --config_file train_configs/prior_tiny_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["REFERENCE_CAPTION_WORDS", "TINY_CLIP_KWARGS", "make_tiny_clip", "prepare_tiny_data", "reference_shards"]

#: the words of the reference shards' captions ("cat", "small cat", "buildings", ...)
REFERENCE_CAPTION_WORDS = ("cat", "sea", "tree", "motel", "plants", "small", "buildings")

#: x-clip `CLIP` arguments of the tiny CLIP (text width == latent width, as the prior needs);
#: `num_text_tokens` comes from the tokenizer
TINY_CLIP_KWARGS: dict = dict(
    dim_text=32, dim_image=32, dim_latent=32, text_enc_depth=1, text_seq_len=8, text_heads=2, text_dim_head=16,
    visual_enc_depth=1, visual_heads=2, visual_dim_head=16, visual_image_size=32, visual_patch_size=8,
    text_encode_without_mask=True,
)


def reference_shards() -> list[str]:
    """The ten reference shards shipped with the tests (`tests/fixtures/reference_shards/{0..9}.tar`).

    Raises:
        FileNotFoundError: not run from a source checkout.
    """
    folder = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "reference_shards"
    shards = sorted(folder.glob("*.tar"), key=lambda p: int(p.stem))
    if not shards:
        raise FileNotFoundError(f"no shards in {folder}: the tiny configs need a source checkout")
    return [str(p) for p in shards]


def make_tiny_clip(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Saves a random-weight tiny x-clip CLIP (demo folder format) to `out_dir`; returns the folder."""
    from dalle2_pytorch.clip_adapters.word_tokenizer import WordTokenizer
    from dalle2_pytorch.clip_adapters.x_clip_folder import build_clip, save_clip

    tokenizer = WordTokenizer(list(REFERENCE_CAPTION_WORDS), context_length=TINY_CLIP_KWARGS["text_seq_len"])
    kwargs = dict(TINY_CLIP_KWARGS, num_text_tokens=tokenizer.vocab_size)
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        clip = build_clip(kwargs)
    finally:
        torch.set_rng_state(generator_state)
    return save_clip(clip.eval(), tokenizer, out_dir, kwargs, finished=True)


def prepare_tiny_data(
    out_dir: str | os.PathLike, shards: Sequence[str] | None = None, seed: int = 0, overwrite: bool = False
) -> dict[str, str]:
    """Writes the tiny CLIP and the prior embeddings (see the module docstring).

    Returns:
        `{"clip", "image_url", "meta_url", "text_url"}` paths, ready for config overrides.
    """
    from dalle2_pytorch.data.precompute import precompute_embeddings
    from dalle2_pytorch.training.scripts.clip_loading import build_clip as load_adapter
    from dalle2_pytorch.config import AdapterConfig

    out = Path(out_dir)
    clip_dir = out / "clip"
    if overwrite or not (clip_dir / "clip_config.json").is_file():
        make_tiny_clip(clip_dir, seed=seed)
    adapter = load_adapter(AdapterConfig(make="x-clip", model=str(clip_dir), base_model_kwargs=dict(TINY_CLIP_KWARGS)))
    emb = out / "prior_embeddings"
    precompute_embeddings(list(shards or reference_shards()), emb, adapter, batch_size=16, overwrite=overwrite)
    return {"clip": str(clip_dir), "image_url": str(emb / "img_emb"), "meta_url": str(emb / "metadata"),
            "text_url": str(emb / "text_emb")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dalle2_pytorch.training.scripts.tiny_data",
                                     description="Prepare the inputs of train_configs/*_tiny_cpu.json.")
    parser.add_argument("--out", default=".tiny_cpu", help="output folder (default .tiny_cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps(prepare_tiny_data(args.out, seed=args.seed, overwrite=args.overwrite), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
