"""Starts the web page: `python -m dalle2_pytorch.app --model-dir ...`, the same as `dream --serve ...`.

Loads the models with :func:`dalle2_pytorch.cli.load_models` (a model folder, or checkpoint files),
serves the page on ``--host``/``--port``, prints its local address and never opens a browser.
Offline: gradio's analytics and Hugging Face telemetry are switched off, the page's fonts and scripts
are gradio's own files (no CDN), and there is no share link.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any, Callable, Sequence

from dalle2_pytorch._extras import MissingExtraError, import_optional
from dalle2_pytorch.cli import DreamError, load_models

__all__ = ["main", "serve", "serve_from_args"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860

# no telemetry, no version check, no share tunnel: the page must work on a machine without network
_OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_SHARE": "False"}


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on right now (for `--port 0`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host not in ("", "0.0.0.0") else DEFAULT_HOST, 0))
        return int(s.getsockname()[1])


def serve(
    *,
    model_dir: str | None = None,
    prior: str | None = None,
    decoder: str | None = None,
    prior_config: str | None = None,
    decoder_config: str | None = None,
    clip: str | None = None,
    device: str = "cpu",
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    max_images: int = 8,
    prior_candidates: int = 2,
    defaults: Any = None,
    block: bool = True,
    echo: Callable[[str], None] = print,
) -> Any:
    """Loads the models, builds and launches the page; blocks until Ctrl-C unless ``block=False``.

    Returns:
        the launched ``gr.Blocks`` (its ``local_url`` is the address printed).

    Raises:
        DreamError: models that cannot be loaded, a port that cannot be bound, gradio missing.
    """
    for key, value in _OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import_optional("gradio", "web", "the web page")
    except MissingExtraError as e:
        raise DreamError(str(e)) from None
    if not 0 <= port <= 65535:
        raise DreamError(f"--port must be between 0 and 65535, got {port}")
    if max_images < 1:
        raise DreamError(f"--max-images must be >= 1, got {max_images}")
    from dalle2_pytorch.app.generation import PageDefaults, PageModel
    from dalle2_pytorch.app.page import build_page
    from dalle2_pytorch.dalle2 import DALLE2

    prior_model, decoder_model, _ = load_models(
        model_dir=model_dir, prior=prior, decoder=decoder, prior_config=prior_config,
        decoder_config=decoder_config, clip=clip, device=device,
    )
    chain = DALLE2(prior=prior_model, decoder=decoder_model, prior_num_samples=prior_candidates)
    if chain.clip is None:
        raise DreamError("the page needs a CLIP (to embed prompts and images): give --clip or a model folder with one")
    description = f"model: {model_dir}" if model_dir else f"prior: {prior}, decoder: {decoder}"
    page = build_page(PageModel(chain, description=description, max_images=max_images), defaults or PageDefaults())
    try:
        page.queue(default_concurrency_limit=1).launch(
            server_name=host, server_port=port or free_port(host), inbrowser=False, share=False, quiet=True,
            prevent_thread_lock=True, show_error=False, ssr_mode=False, mcp_server=False, pwa=False,
        )
    except OSError as e:
        raise DreamError(f"cannot serve the page on {host}:{port}: {e}") from None
    echo(f"Serving the DALL·E 2 web page at {page.local_url} (Ctrl-C stops it)")
    sys.stdout.flush()
    if block:
        try:
            page.block_thread()
        except KeyboardInterrupt:
            pass
        finally:
            page.close()
    return page


def serve_from_args(args: argparse.Namespace) -> int:
    """`dream --serve`: the page with dream's model flags, its settings flags as the page's defaults."""
    from dalle2_pytorch.app.generation import PageDefaults

    steps = args.steps if args.steps is not None else args.decoder_steps
    defaults = PageDefaults(
        prompt=args.prompts[0] if args.prompts else "", seed=args.seed, steps=steps, sampler=args.sampler,
        prior_cond_scale=args.prior_cond_scale, cond_scale=args.cond_scale, num_images=args.num_images,
    )
    serve(model_dir=args.model_dir, prior=args.prior, decoder=args.decoder, prior_config=args.prior_config,
          decoder_config=args.decoder_config, clip=args.clip, device=args.device, host=args.host, port=args.port,
          max_images=max(8, args.num_images), prior_candidates=args.prior_candidates, defaults=defaults)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dalle2_pytorch.app [dream's flags]`: the same as `dream --serve [flags]`."""
    from dalle2_pytorch.cli import main as dream_main

    return dream_main(["--serve", *(sys.argv[1:] if argv is None else argv)])
