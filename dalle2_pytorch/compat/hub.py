"""Files on the Hugging Face Hub: download into huggingface_hub's cache, verify, work offline, upload.

Everything goes through ``huggingface_hub`` (the `[hub]` extra; open_clip also installs it): its
cache (``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``, or ``cache_dir=``), its revisions
(a branch, a tag or a commit hash; pin a commit for reproducible loads) and its offline mode
(``HF_HUB_OFFLINE=1``: only the cache is read). A file that is missing offline is one error naming
the repo, the file, the revision and the command that downloads it.

Checksums: a file is verified against the sha256 given for it (:class:`HubFile`) or, when none is
known, against the name of its blob in the cache, which is the file's sha256 for LFS files (the
large weights) and its git blob sha1 for small files (configs). So a truncated or corrupted
download is caught before ``torch.load`` sees it.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dalle2_pytorch._extras import import_optional

__all__ = [
    "ChecksumMismatchError",
    "HubFile",
    "PretrainedNotFoundError",
    "hub_offline",
    "resolve_hub_file",
    "resolve_hub_snapshot",
    "upload_folder",
    "verify_file",
]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_VERIFIED: dict[tuple[str, int, int], str] = {}  # (real path, size, mtime_ns) -> verified digest


class PretrainedNotFoundError(ValueError):
    """A pretrained file or repo could not be found (offline and not cached, or not on the Hub)."""


class ChecksumMismatchError(ValueError):
    """A cached file does not have the checksum it should have (corrupted or truncated)."""


@dataclass(frozen=True)
class HubFile:
    """One file of a Hub repo.

    Attributes:
        repo_id: "owner/name".
        filename: path inside the repo.
        revision: branch, tag or commit hash.
        sha256: expected sha256 of the content, when known.
    """

    repo_id: str
    filename: str
    revision: str = "main"
    sha256: str | None = None

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/blob/{self.revision}/{self.filename}"


def _hf() -> Any:
    return import_optional("huggingface_hub", "hub", "loading pretrained weights from the Hugging Face Hub")


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set (read now, not only when huggingface_hub was imported)."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    constants = import_optional("huggingface_hub.constants", "hub")
    return bool(constants.HF_HUB_OFFLINE)


def _cache_dir(cache_dir: str | os.PathLike | None) -> str:
    if cache_dir is not None:
        return os.fspath(cache_dir)
    # the environment now, else huggingface_hub's default (read when it was imported)
    return os.environ.get("HF_HUB_CACHE") or os.fspath(import_optional("huggingface_hub.constants", "hub").HF_HUB_CACHE)


def _missing(what: str, repo_id: str, filename: str | None, revision: str, cache_dir: str, reason: str) -> str:
    target = f"{filename} of {repo_id}" if filename else f"the repo {repo_id}"
    command = f"hf download {repo_id}{' ' + filename if filename else ''} --revision {revision} --cache-dir {cache_dir}"
    return (
        f"{what} needs {target} (revision {revision}) from the Hugging Face Hub, which {reason}: on a machine "
        f"with network run `{command}` and copy that cache folder here (or unset HF_HUB_OFFLINE)"
    )


def _file_digest(path: str, algorithm: str) -> str:
    h = hashlib.sha256() if algorithm == "sha256" else hashlib.sha1()
    size = os.path.getsize(path)
    if algorithm == "git-sha1":
        h.update(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: str | os.PathLike, sha256: str | None = None) -> str | None:
    """Checks a cached file's content against `sha256` or, without one, against its blob name.

    Returns the verified digest (None when there was nothing to check against, e.g. a local file
    outside the Hub cache). Each (file, size, mtime) is hashed once per process.

    Raises:
        ChecksumMismatchError: the content does not match.
    """
    real = os.path.realpath(path)
    blob = os.path.basename(real)
    if sha256 is not None:
        expected, algorithm = sha256.lower(), "sha256"
    elif os.path.basename(os.path.dirname(real)) == "blobs" and _HEX64.match(blob):
        expected, algorithm = blob, "sha256"
    elif os.path.basename(os.path.dirname(real)) == "blobs" and _HEX40.match(blob):
        expected, algorithm = blob, "git-sha1"
    else:
        return None
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    if _VERIFIED.get(key) == expected:
        return expected
    got = _file_digest(real, algorithm)
    if got != expected:
        raise ChecksumMismatchError(
            f"{path} is corrupted or incomplete: its {algorithm} is {got}, expected {expected}; delete {real} "
            "and download it again"
        )
    _VERIFIED[key] = expected
    return expected


def _fetch(download, *, what: str, repo_id: str, filename: str | None, revision: str, cache: str) -> str:
    """`download(local_files_only)` with huggingface_hub's errors turned into one-line
    :class:`PretrainedNotFoundError` messages (offline: what to download and where)."""
    errors = import_optional("huggingface_hub.errors", "hub")
    offline = hub_offline()
    try:
        return download(offline)
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as e:
        why = "HF_HUB_OFFLINE=1 forbids downloading it" if offline else f"it could not be downloaded ({type(e).__name__})"
        raise PretrainedNotFoundError(_missing(what, repo_id, filename, revision, cache, f"is not in the cache {cache} and {why}")) from None
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.EntryNotFoundError,
            errors.HFValidationError) as e:
        target = f"{filename} of the Hub repo {repo_id}" if filename else f"the Hub repo {repo_id}"
        raise PretrainedNotFoundError(f"{what}: {target} (revision {revision}) was not found: {type(e).__name__}") from None


def resolve_hub_file(
    file: HubFile,
    *,
    what: str,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    verify: bool = True,
) -> Path:
    """The local path of `file`: from the cache, else downloaded (unless offline), then verified.

    Args:
        file: the file (its `revision` unless `revision` is given).
        what: what needs it, for error messages (e.g. "laion/dalle2").
        revision: overrides the file's revision (a pinned sha256 then no longer applies unless
            the revision is the file's own).
        cache_dir: huggingface_hub cache folder (default ``HF_HUB_CACHE``).
        token: Hub token for private or gated repos.
        verify: check the checksum (see :func:`verify_file`).

    Raises:
        PretrainedNotFoundError: not cached while offline, or not on the Hub.
        ChecksumMismatchError: the file is corrupted.
    """
    rev = revision or file.revision
    cache = _cache_dir(cache_dir)
    path = _fetch(
        lambda offline: _hf().hf_hub_download(file.repo_id, file.filename, revision=rev, cache_dir=cache, token=token,
                                              local_files_only=offline),
        what=what, repo_id=file.repo_id, filename=file.filename, revision=rev, cache=cache,
    )
    if verify:
        verify_file(path, file.sha256 if rev == file.revision else None)
    return Path(path)


def resolve_hub_snapshot(
    repo_id: str,
    *,
    what: str,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    verify: bool = True,
) -> Path:
    """The local folder of a whole Hub repo (our exported model folders): cached or downloaded,
    every file verified against its blob name."""
    rev = revision or "main"
    cache = _cache_dir(cache_dir)
    folder = Path(_fetch(
        lambda offline: _hf().snapshot_download(repo_id, revision=rev, cache_dir=cache, token=token,
                                                local_files_only=offline),
        what=what, repo_id=repo_id, filename=None, revision=rev, cache=cache,
    ))
    if verify:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                verify_file(path)
    return folder


def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Uploads a local folder to a Hub model repo (created if needed); returns the repo URL.

    Raises:
        ValueError: offline mode is on (nothing is uploaded).
    """
    if hub_offline():
        raise ValueError(f"push_to_hub needs network access to the Hugging Face Hub, but HF_HUB_OFFLINE is set (nothing was uploaded to {repo_id})")
    api = _hf().HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(repo_id=repo_id, folder_path=os.fspath(folder), revision=revision,
                      commit_message=commit_message or "Upload dalle2_pytorch model")
    return str(url)
