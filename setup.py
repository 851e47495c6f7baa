from pathlib import Path

from setuptools import find_packages, setup

version: dict = {}
exec((Path(__file__).parent / "dalle2_pytorch" / "version.py").read_text(), version)

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
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy",
        "einops>=0.7",
        "open-clip-torch>=2.24",
        "x-clip>=0.14",
        "ema-pytorch>=0.5",
        "accelerate>=0.30",
        "webdataset>=0.2.80",
        "kornia>=0.7",
        "pydantic>=2.7,<3",
        "wandb>=0.16",
        "tqdm",
        "safetensors>=0.4",
        "torchmetrics[image]>=1.0",
        "packaging",
        "pillow",
    ],
    extras_require={
        # VQGanVAE (latent decoder stages) and its trainer; importing dalle2_pytorch never needs it
        "vqgan": ["vector-quantize-pytorch>=1.32"],
    },
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
