"""Self-contained text-to-image demo on a procedural "coloured shapes" dataset.

Modules:
    shapes         attribute vocabulary, seeded sampling, rendering, webdataset shard generation
    captions       natural-language captions from attributes and parsing of free-form prompts
    evaluate       model-independent colour / shape analysis of (generated) images
    text_tokenizer word-level tokenizer for the small demo CLIP
    train_clip     trains, saves and loads a small x-clip ``CLIP`` on the shards

Nothing here downloads anything; everything runs on a CPU in minutes. Needs the `[demo]` extra.
"""

from dalle2_pytorch._extras import require_extra

require_extra("demo", "x_clip", "accelerate", "ema_pytorch", "webdataset", what="the demo (dalle2_pytorch.demo)")
