"""The web page (gradio, the `[web]` extra): text to image, variations and interpolation in a browser.

    python -m dalle2_pytorch.app --model-dir demo_output        # or: dream --serve --model-dir demo_output

Modules: :mod:`.generation` (the page's actions and input checks, no gradio), :mod:`.interpolation`
(slerp of CLIP image embeddings), :mod:`.page` (the gradio Blocks), :mod:`.server` (load, launch,
print the address). Importing this package imports neither gradio nor the models.
"""

__all__: list[str] = []
