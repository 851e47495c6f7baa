"""The gradio page: shared settings, and tabs for text to image, variations and interpolation.

Imports gradio (the `[web]` extra); nothing else in the package imports this module except
:mod:`dalle2_pytorch.app.server` when a page is asked for. Bad input raises ``gr.Error`` with one
line (shown on the page); an unexpected failure is logged with its traceback on the server and shown
on the page as one line, never as a stack trace.
"""

from __future__ import annotations

import html
import logging
import time
from typing import Any, Callable

import gradio as gr

from dalle2_pytorch.app.generation import DEFAULT_SAMPLER, PageDefaults, PageModel, sampler_choices
from dalle2_pytorch.diffusion import SPACINGS

__all__ = ["build_page"]

logger = logging.getLogger("dalle2_pytorch.app")


def _shown(action: Callable[[], tuple[list, str]]) -> tuple[list, str]:
    """Runs a button's action; every failure becomes one line on the page."""
    start = time.perf_counter()
    try:
        images, what = action()
    except ValueError as e:  # bad input: the page's own checks and the models' (steps > T, ddpm with few steps)
        raise gr.Error(html.escape(str(e)), title="Cannot generate", print_exception=False) from None
    except Exception as e:  # noqa: BLE001 - anything else: the trace goes to the server log only
        logger.exception("generation failed")
        raise gr.Error(html.escape(f"generation failed: {type(e).__name__}: {e}"), title="Error",
                       print_exception=False) from None
    return images, f"{what} in {time.perf_counter() - start:.1f} s"


def build_page(model: PageModel, defaults: PageDefaults | None = None) -> gr.Blocks:
    """The page's `gr.Blocks` (not launched)."""
    d = defaults or PageDefaults()
    with gr.Blocks(title="DALL·E 2", analytics_enabled=False) as page:
        gr.Markdown(f"# DALL·E 2 (unCLIP)\n{html.escape(model.summary())}", elem_id="title")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                gr.Markdown("### Settings")
                seed = gr.Number(d.seed, label="Seed", precision=0, elem_id="seed",
                                 info="the same seed and settings give the same images")
                steps = gr.Textbox("" if d.steps is None else str(d.steps), label="Steps", elem_id="steps",
                                   placeholder="model default",
                                   info="sampling steps of prior and decoder; empty: each model's default")
                sampler = gr.Dropdown(sampler_choices(), value=d.sampler or DEFAULT_SAMPLER, label="Sampler",
                                      allow_custom_value=True, elem_id="sampler",
                                      info=f"prior and decoder; a name, optionally with a spacing: "
                                           f":{', :'.join((*SPACINGS, 'karras'))}")
                prior_scale = gr.Number(d.prior_cond_scale, label="Prior guidance scale", elem_id="prior_scale",
                                        info="classifier-free guidance of the prior; 1: none")
                scale = gr.Number(d.cond_scale, label="Decoder guidance scale", elem_id="decoder_scale",
                                  info="classifier-free guidance of the decoder; 1: none")
                num_images = gr.Slider(1, model.max_images, value=min(d.num_images, model.max_images), step=1,
                                       label="Number of images", elem_id="num_images")
            settings = [seed, steps, sampler, prior_scale, scale]
            with gr.Column(scale=3):
                with gr.Tabs():
                    with gr.Tab("Text to image", id="text"):
                        prompt = gr.Textbox(d.prompt, label="Prompt", placeholder="a red circle", elem_id="prompt", lines=1)
                        generate = gr.Button("Generate", variant="primary", elem_id="generate")
                        gallery = gr.Gallery(label="Images", columns=4, format="png", object_fit="contain",
                                             elem_id="gallery")
                        status = gr.Markdown(elem_id="status")
                    with gr.Tab("Variations", id="variations"):
                        source = gr.Image(label="Image", type="pil", sources=["upload", "clipboard"],
                                          elem_id="variation_image")
                        caption = gr.Textbox(label="Caption (text-conditioned decoders only)", elem_id="caption")
                        vary = gr.Button("Make variations", variant="primary", elem_id="vary")
                        var_gallery = gr.Gallery(label="Variations", columns=4, format="png", object_fit="contain",
                                                 elem_id="variation_gallery")
                        var_status = gr.Markdown(elem_id="variation_status")
                    with gr.Tab("Interpolation", id="interpolation"):
                        gr.Markdown("From one prompt or image to another: slerp of their CLIP image embeddings, "
                                    "decoded with the same noise (unCLIP sec. 3.2). An image, when given, is "
                                    "used instead of its prompt.")
                        with gr.Row():
                            with gr.Column():
                                start_prompt = gr.Textbox(label="Start prompt", placeholder="a red circle",
                                                          elem_id="start_prompt")
                                start_image = gr.Image(label="or start image", type="pil", elem_id="start_image")
                            with gr.Column():
                                end_prompt = gr.Textbox(label="End prompt", placeholder="a blue square",
                                                        elem_id="end_prompt")
                                end_image = gr.Image(label="or end image", type="pil", elem_id="end_image")
                        frames = gr.Slider(2, 16, value=5, step=1, label="Frames", elem_id="frames")
                        interpolate = gr.Button("Interpolate", variant="primary", elem_id="interpolate")
                        int_gallery = gr.Gallery(label="Frames", columns=8, format="png", object_fit="contain",
                                                 elem_id="interpolation_gallery")
                        int_status = gr.Markdown(elem_id="interpolation_status")

        def on_generate(text: Any, *values: Any) -> tuple[list, str]:
            def action() -> tuple[list, str]:
                s = model.check(*values)
                return model.text_to_image(text, s), f"{s.num_images} image(s) — {s.describe()}"
            return _shown(action)

        def on_vary(image: Any, text: Any, *values: Any) -> tuple[list, str]:
            def action() -> tuple[list, str]:
                s = model.check(*values)
                return model.variations(image, text, s), f"{s.num_images} variation(s) — {s.describe()}"
            return _shown(action)

        def on_interpolate(a: Any, a_image: Any, b: Any, b_image: Any, n: Any, *values: Any) -> tuple[list, str]:
            def action() -> tuple[list, str]:
                s = model.check(*values)
                return model.interpolate((a, a_image), (b, b_image), n, s), f"{int(n)} frames — {s.describe()}"
            return _shown(action)

        generate.click(on_generate, [prompt, *settings, num_images], [gallery, status], api_name="generate")
        prompt.submit(on_generate, [prompt, *settings, num_images], [gallery, status], api_name=False)
        vary.click(on_vary, [source, caption, *settings, num_images], [var_gallery, var_status], api_name="variations")
        interpolate.click(on_interpolate, [start_prompt, start_image, end_prompt, end_image, frames, *settings],
                          [int_gallery, int_status], api_name="interpolate")
    return page
