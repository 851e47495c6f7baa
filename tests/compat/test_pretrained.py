"""from_pretrained offline, on a folder laid out as huggingface_hub's cache.

The "LAION release" here is made of the reference's own small checkpoint files (tests/fixtures/compat,
written by dalle2-pytorch 1.1.0 in LAION's layouts) placed at LAION's repo paths, with blobs named by
their sha256 (LFS files) or git sha1 (configs) and `refs/main` pointing at a snapshot, exactly as
`hf download` leaves them. The real huggingface_hub functions read it (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from dalle2_pytorch import DALLE2, Decoder, DiffusionPrior, OpenClipAdapter
from dalle2_pytorch.compat.hub import ChecksumMismatchError, HubFile, PretrainedNotFoundError
from dalle2_pytorch.compat.pretrained import PRETRAINED, PretrainedRelease, register_pretrained

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "compat"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
LAION = {
    "laion/DALLE2-PyTorch": {
        "prior/latest.pth": FIXTURES / "prior_laion_1.1.0" / "checkpoint.pth",
        "prior/prior_config.json": FIXTURES / "prior_laion_1.1.0" / "config.json",
        # a 16 px base + 32 px upsampler file in LAION's 1.1.0 layout (config embedded)
        "decoder/v1.0.2/latest.pth": FIXTURES / "decoder_upsampler_1.1.0" / "checkpoint.pth",
    },
    "Veldrovive/upsamplers": {
        "working/latest.pth": FIXTURES / "decoder_upsampler_1.1.0" / "checkpoint.pth",
        "working/decoder_config.json": FIXTURES / "decoder_upsampler_1.1.0" / "config.json",
    },
}


def put_in_cache(cache: Path, repo_id: str, files: dict[str, Path | bytes], commit: str = COMMIT, ref: str = "main") -> Path:
    """Writes `files` into `cache` as huggingface_hub stores a downloaded snapshot; returns the snapshot."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    for name, source in files.items():
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        if name.endswith((".json", ".md", ".txt")):  # git-stored small files: blob named by git's sha1
            digest = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
        else:  # LFS files: blob named by the content's sha256
            digest = hashlib.sha256(data).hexdigest()
        blob = root / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def laion_cache(tmp_path) -> Path:
    cache = tmp_path / "hub"
    for repo_id, files in LAION.items():
        put_in_cache(cache, repo_id, files)
    return cache


def tiny_clip64() -> OpenClipAdapter:
    """A random CLIP with the fixtures' widths (64-d embeddings and text encodings, 77 tokens)."""
    torch.manual_seed(0)
    return OpenClipAdapter("ViT-B/32", pretrained=None, model_kwargs=dict(
        embed_dim=64, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=1)))


def _params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_laion_release_by_name_offline(laion_cache):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    clip = tiny_clip64()
    chain = DALLE2.from_pretrained("laion/dalle2", cache_dir=laion_cache, clip=clip)
    assert isinstance(chain, DALLE2) and chain.prior.clip is clip and chain.prior_num_samples == 2
    assert chain.decoder.image_sizes == (16, 32) and chain.decoder.num_unets == 2
    # the same weights as loading the four files by hand
    by_hand = DiffusionPrior.from_checkpoint(LAION["laion/DALLE2-PyTorch"]["prior/latest.pth"],
                                             LAION["laion/DALLE2-PyTorch"]["prior/prior_config.json"])
    assert _params_equal(chain.prior.net, by_hand.net)
    assert chain.prior.net.layout == "1.1.0"  # LAION's key generation was detected
    images = chain("a red circle", decoder_steps=[2, 2], prior_steps=2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 32, 32) and torch.isfinite(images).all()
    # the repo's own id is an alias; the name is case-insensitive
    assert DALLE2.from_pretrained("laion/DALLE2-PyTorch", cache_dir=laion_cache, clip=clip).decoder.num_unets == 2


def test_prior_and_decoder_by_name_and_hf_hub_cache_variable(laion_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(laion_cache))
    prior = DiffusionPrior.from_pretrained("laion/dalle2", clip=None)
    assert prior.clip is None and prior.net.dim == 64 and "laion/dalle2" in prior.pretrained_from
    decoder = Decoder.from_pretrained("laion/dalle2-64px", clip=None)
    assert decoder.num_unets == 1 and decoder.image_sizes == (16,)
    # pinning the snapshot's commit works; an unknown revision is one clear error
    assert Decoder.from_pretrained("laion/dalle2", clip=None, revision=COMMIT).num_unets == 2
    with pytest.raises(PretrainedNotFoundError, match="revision v9.9"):
        Decoder.from_pretrained("laion/dalle2", clip=None, revision="v9.9")


def test_missing_file_offline_names_what_to_download_and_where(laion_cache):
    snapshot = laion_cache / "models--Veldrovive--upsamplers" / "snapshots" / COMMIT
    (snapshot / "working" / "latest.pth").unlink()
    with pytest.raises(PretrainedNotFoundError) as info:
        DALLE2.from_pretrained("laion/dalle2", cache_dir=laion_cache, clip=None)
    message = str(info.value)
    assert "\n" not in message
    for part in ("working/latest.pth", "Veldrovive/upsamplers", "HF_HUB_OFFLINE", str(laion_cache),
                 f"hf download Veldrovive/upsamplers working/latest.pth --revision main --cache-dir {laion_cache}"):
        assert part in message
    # the CLIP weights (OpenAI ViT-L/14 through open_clip) are one more file of the release
    with pytest.raises(PretrainedNotFoundError, match="timm/vit_large_patch14_clip_224.openai"):
        DiffusionPrior.from_pretrained("laion/dalle2", cache_dir=laion_cache)


def test_corrupted_cached_file_is_caught_before_loading(laion_cache):
    blob = Path(os.path.realpath(laion_cache / "models--laion--DALLE2-PyTorch" / "snapshots" / COMMIT / "prior" / "latest.pth"))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor data
    blob.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="corrupted or incomplete"):
        DiffusionPrior.from_pretrained("laion/dalle2", cache_dir=laion_cache, clip=None)
    prior = DiffusionPrior.from_pretrained("laion/dalle2", cache_dir=laion_cache, clip=None, verify=False)
    assert prior.net.dim == 64  # verify=False skips the check (the flipped byte is in a tensor)


def test_known_sha256_is_checked(laion_cache, monkeypatch):
    files = LAION["laion/DALLE2-PyTorch"]
    good = hashlib.sha256(files["prior/latest.pth"].read_bytes()).hexdigest()
    monkeypatch.setitem(PRETRAINED, "test/pinned", None)
    for sha, ok in ((good, True), ("0" * 64, False)):
        register_pretrained("test/pinned", PretrainedRelease(
            "test", HubFile("laion/DALLE2-PyTorch", "prior/latest.pth", COMMIT, sha),
            HubFile("laion/DALLE2-PyTorch", "prior/prior_config.json", COMMIT), (), ()))
        if ok:
            assert DiffusionPrior.from_pretrained("test/pinned", cache_dir=laion_cache, clip=None).net.dim == 64
        else:
            with pytest.raises(ChecksumMismatchError, match="expected 0000"):
                DiffusionPrior.from_pretrained("test/pinned", cache_dir=laion_cache, clip=None)


def test_unknown_names_and_repos(laion_cache, tmp_path):
    with pytest.raises(ValueError, match="neither a known pretrained name .*laion/dalle2"):
        DALLE2.from_pretrained("not a name", cache_dir=laion_cache)
    with pytest.raises(PretrainedNotFoundError, match="the repo someone/nothing"):
        DALLE2.from_pretrained("someone/nothing", cache_dir=laion_cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="dalle2.json"):
        DALLE2.from_pretrained(tmp_path / "empty")


def _tiny_chain(clip) -> DALLE2:
    prior = DiffusionPrior.from_checkpoint(LAION["laion/DALLE2-PyTorch"]["prior/latest.pth"],
                                           LAION["laion/DALLE2-PyTorch"]["prior/prior_config.json"], clip=clip)
    decoder = Decoder.from_checkpoint(FIXTURES / "decoder_upsampler_1.1.0" / "checkpoint.pth", clip=clip)
    return DALLE2(prior=prior, decoder=decoder, prior_num_samples=1)


def _draw(chain: DALLE2) -> torch.Tensor:
    return chain(["a red circle"], decoder_steps=[2, 2], prior_steps=2, generator=torch.Generator().manual_seed(3))


class _FakeHub:
    """HfApi stand-in: `upload_folder` stores the folder in a cache layout, as a later download would."""

    cache: Path
    uploads: list = []

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, revision=None, commit_message=None):
        files = {str(p.relative_to(folder_path)): p for p in Path(folder_path).rglob("*") if p.is_file()}
        self.uploads.append((repo_id, sorted(files)))
        put_in_cache(self.cache, repo_id, files, commit="f" * 40)


def test_our_exports_from_a_folder_and_from_a_hub_repo(tmp_path, monkeypatch):
    clip = tiny_clip64()
    chain = _tiny_chain(clip)
    expected = _draw(chain)
    folder = chain.save_pretrained(tmp_path / "model", clip={"make": "openai", "model": "ViT-L/14"})
    assert sorted(p.name for p in folder.iterdir()) == ["dalle2.json", "decoder", "prior"]
    assert torch.equal(_draw(DALLE2.from_pretrained(folder, clip=clip)), expected)
    assert DiffusionPrior.from_pretrained(folder / "prior", clip=None).net.layout == "1.1.0"  # one export folder
    # push_to_hub: offline, nothing is uploaded and the error says why
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        chain.push_to_hub("me/tiny-dalle2")
    # with a Hub (faked at the HTTP API), the uploaded folder loads back by repo id from the cache
    import huggingface_hub

    cache = tmp_path / "hub"
    _FakeHub.cache = cache
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHub)
    monkeypatch.setattr("dalle2_pytorch.compat.hub.hub_offline", lambda: False)
    url = chain.push_to_hub("me/tiny-dalle2", clip={"make": "openai", "model": "ViT-L/14"})
    assert url == "https://huggingface.co/me/tiny-dalle2"
    assert "dalle2.json" in _FakeHub.uploads[-1][1] and "prior/model.safetensors" in _FakeHub.uploads[-1][1]
    monkeypatch.setattr("dalle2_pytorch.compat.hub.hub_offline", lambda: True)
    loaded = DALLE2.from_pretrained("me/tiny-dalle2", cache_dir=cache, clip=clip)
    assert "me/tiny-dalle2" in loaded.pretrained_from
    assert torch.equal(_draw(loaded), expected)
    # a corrupted blob of our export is caught too
    blob = Path(os.path.realpath(cache / "models--me--tiny-dalle2" / "snapshots" / ("f" * 40) / "decoder" / "model.safetensors"))
    blob.write_bytes(blob.read_bytes()[:-10])
    with pytest.raises(ChecksumMismatchError):
        DALLE2.from_pretrained("me/tiny-dalle2", cache_dir=cache, clip=clip)
    shutil.rmtree(cache)
