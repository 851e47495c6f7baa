from pathlib import Path

from setuptools import find_packages, setup

version: dict = {}
exec((Path(__file__).parent / "dalle2_pytorch" / "version.py").read_text(), version)

_CLIP = ["open-clip-torch>=2.24", "x-clip>=0.14"]
_HUB = ["huggingface_hub>=0.23"]
_TRAIN = [*_CLIP, "accelerate>=0.30", "ema-pytorch>=0.5", "webdataset>=0.2.80", "wandb>=0.16",
          "torchmetrics[image]>=1.0", "kornia>=0.7", "torchvision>=0.19"]
EXTRAS = {
    "clip": _CLIP,  # OpenClipAdapter / OpenAIClipAdapter (open_clip), XClipAdapter and x-clip folders
    "hub": _HUB,  # from_pretrained by name / Hub repo id, push_to_hub (huggingface_hub's cache, offline mode)
    "train": _TRAIN,  # trainers, training scripts, data loaders, metrics, trackers
    "demo": _TRAIN,  # `make demo`: the embedded dataset, demo CLIP, training lanes, report
    "web": ["gradio>=6.0,<7"],  # the web page: python -m dalle2_pytorch.app / dream --serve
    "test": [*_TRAIN, *_HUB, "pytest", "pytest-timeout", "hypothesis", "import-linter>=2.1", "torch-fidelity",
             "vector-quantize-pytorch>=1.32", "gradio>=6.0,<7", "playwright>=1.40"],
    # VQGanVAE (latent decoder stages) and its trainer; importing dalle2_pytorch never needs it
    "vqgan": ["vector-quantize-pytorch>=1.32"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="dalle2-pytorch",
    version=version["__version__"],
    description="DALL-E 2 (unCLIP) in PyTorch: CLIP adapters, diffusion prior, cascaded decoder, "
    "trainers; drop-in for dalle2-pytorch 1.15.6 configs and checkpoints",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(exclude=("tests", "tests.*", "benchmarks")),
    include_package_data=True,
    python_requires=">=3.10",
    # the base install loads models (ours and the reference's) and samples images
    install_requires=[
        "torch>=2.4",
        "numpy",
        "einops>=0.7",
        "safetensors>=0.4",
        "pydantic>=2.7,<3",
        "tqdm",
        "packaging",
        "pillow",
    ],
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "dream = dalle2_pytorch.cli:dream",
            "dalle2_pytorch = dalle2_pytorch.cli:main",
        ]
    },
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
