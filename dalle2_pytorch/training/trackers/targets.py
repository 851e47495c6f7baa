"""Checkpoint sources (loaders) and save targets (savers) of a :class:`Tracker`.

These are the reference's classes, by name and constructor (`LocalLoader`, `UrlLoader`,
`WandbLoader`, `LocalSaver`, `WandbSaver`, `HuggingfaceSaver`, `create_loader`, `create_saver`),
selected by the `load_from` / `save_to` values of a tracker config. A loader fetches the file to
resume or fine-tune from (`fetch`); a saver copies or uploads a file the tracker wrote
(`save_file`). The tracker writes every file itself (crash-safe checkpoint directories, the
reference's model `.pth`) and hands them to its savers; `Tracker.add_loader` / `add_saver` accept
these objects, as do `TrackerConfig`'s `load`/`save` entries.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_DATA_PATH",
    "BaseLoader",
    "BaseSaver",
    "HuggingfaceSaver",
    "LocalLoader",
    "LocalSaver",
    "UrlLoader",
    "WandbLoader",
    "WandbSaver",
    "create_loader",
    "create_saver",
    "loader_from_config",
    "loader_type_map",
    "saver_from_config",
    "saver_type_map",
]

DEFAULT_DATA_PATH = ".tracker_data"


def _check_extra(cls_name: str, kwargs: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"{cls_name} got unexpected option(s): {', '.join(unknown)}")


# ------------------------------------------------------------------------------------- loaders


class BaseLoader:
    """Where `Tracker.recall` gets a checkpoint from.

    Args:
        data_path: the tracker's folder (downloads go to `<data_path>/downloads/`).
        only_auto_resume: load only when the run is being auto-resumed.
    """

    load_from = "custom"
    _options: tuple[str, ...] = ()

    def __init__(self, data_path: str | os.PathLike = DEFAULT_DATA_PATH, only_auto_resume: bool = False, **kwargs: Any):
        kwargs.pop("load_from", None)  # present in config dumps
        _check_extra(type(self).__name__, kwargs, self._options)
        self.data_path = Path(data_path)
        self.only_auto_resume = only_auto_resume
        for name in self._options:
            setattr(self, name, kwargs.get(name))

    def init(self, logger: Any = None, **kwargs: Any) -> None:
        """Checks that the source can be used (called when the tracker starts)."""

    def fetch(self, is_main_process: bool = True, barrier: Callable[[], None] = lambda: None) -> Path:
        """The local path of the checkpoint (downloaded by the main process first if needed)."""
        raise NotImplementedError

    def recall(self) -> Any:
        """The checkpoint file's contents, read with `safe_torch_load` (single-file checkpoints)."""
        from dalle2_pytorch.serialization import safe_torch_load

        path = self.fetch()
        if path.is_dir():
            raise ValueError(f"{path} is a checkpoint directory; use Tracker.recall(trainer) to load it")
        return safe_torch_load(path)


class LocalLoader(BaseLoader):
    """A local file or checkpoint directory (`file_path`)."""

    load_from = "local"
    _options = ("file_path",)

    def __init__(self, data_path: str | os.PathLike = DEFAULT_DATA_PATH, file_path: str | os.PathLike | None = None, **kwargs: Any):
        super().__init__(data_path, file_path=file_path, **kwargs)
        if not file_path:
            raise ValueError("LocalLoader needs file_path")

    def init(self, logger: Any = None, **kwargs: Any) -> None:
        if not Path(self.file_path).exists():
            raise FileNotFoundError(f"checkpoint to load not found: {self.file_path}")

    def fetch(self, is_main_process: bool = True, barrier: Callable[[], None] = lambda: None) -> Path:
        return Path(self.file_path)


class UrlLoader(BaseLoader):
    """A file downloaded from `url` into `<data_path>/downloads/`."""

    load_from = "url"
    _options = ("url",)

    def __init__(self, data_path: str | os.PathLike = DEFAULT_DATA_PATH, url: str | None = None, **kwargs: Any):
        super().__init__(data_path, url=url, **kwargs)
        if not url:
            raise ValueError("UrlLoader needs url")

    def fetch(self, is_main_process: bool = True, barrier: Callable[[], None] = lambda: None) -> Path:
        path = self.data_path / "downloads" / Path(self.url.split("?")[0]).name
        if is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            urllib.request.urlretrieve(self.url, path)
        barrier()
        return path


class WandbLoader(BaseLoader):
    """A file of a wandb run (`wandb_file_path` in run `wandb_run_path`, default: the current run)."""

    load_from = "wandb"
    _options = ("wandb_file_path", "wandb_run_path")

    def __init__(self, data_path: str | os.PathLike = DEFAULT_DATA_PATH, wandb_file_path: str | None = None,
                 wandb_run_path: str | None = None, **kwargs: Any):
        super().__init__(data_path, wandb_file_path=wandb_file_path, wandb_run_path=wandb_run_path, **kwargs)
        if not wandb_file_path:
            raise ValueError("WandbLoader needs wandb_file_path")

    def fetch(self, is_main_process: bool = True, barrier: Callable[[], None] = lambda: None) -> Path:
        root = self.data_path / "downloads"
        if is_main_process:
            import wandb

            wandb.restore(self.wandb_file_path, run_path=self.wandb_run_path, root=str(root))
        barrier()
        return root / self.wandb_file_path


loader_type_map: dict[str, type[BaseLoader]] = {"local": LocalLoader, "url": UrlLoader, "wandb": WandbLoader}


def create_loader(loader_type: str, data_path: str | os.PathLike, **kwargs: Any) -> BaseLoader:
    """'local' / 'url' / 'wandb' → the loader class, built with `kwargs`."""
    if loader_type not in loader_type_map:
        raise ValueError(f"unknown loader type {loader_type!r}; expected one of {sorted(loader_type_map)}")
    return loader_type_map[loader_type](data_path, **kwargs)


def _fields(cfg: Any, names: tuple[str, ...]) -> dict[str, Any]:
    get = cfg.get if isinstance(cfg, Mapping) else (lambda n, d=None: getattr(cfg, n, d))
    return {n: get(n) for n in names if get(n) is not None}


def loader_from_config(cfg: Any, data_path: str | os.PathLike) -> BaseLoader | None:
    """A loader from a loader, a `TrackerLoadConfig` or a dict; None when nothing is to be loaded."""
    if cfg is None or isinstance(cfg, BaseLoader):
        return cfg
    kind = _fields(cfg, ("load_from",)).get("load_from")
    if kind is None:
        return None
    options = ("only_auto_resume", *loader_type_map[kind]._options) if kind in loader_type_map else ()
    return create_loader(kind, data_path, **_fields(cfg, options))


# -------------------------------------------------------------------------------------- savers


class BaseSaver:
    """Where `Tracker.save` puts copies of what it wrote.

    Args:
        data_path: the tracker's folder.
        save_latest_to, save_best_to: target paths (may contain `{}` fields such as `{epoch}`);
            None/False: not saved.
        save_meta_to: folder for the run config.
        save_type: 'checkpoint' (full trainer state) or 'model' (EMA weights, reference layout).
    """

    save_to = "custom"
    _options: tuple[str, ...] = ()

    def __init__(self, data_path: str | os.PathLike = DEFAULT_DATA_PATH, save_latest_to: str | bool | None = None,
                 save_best_to: str | bool | None = None, save_meta_to: str | None = None,
                 save_type: str = "checkpoint", **kwargs: Any):
        for key in ("save_to", "save_all", "save_latest", "save_best"):  # present in config dumps
            kwargs.pop(key, None)
        _check_extra(type(self).__name__, kwargs, self._options)
        if save_type not in ("checkpoint", "model"):
            raise ValueError(f"save_type must be 'checkpoint' or 'model', got {save_type!r}")
        self.data_path = Path(data_path)
        self.save_latest_to = save_latest_to or None
        self.save_best_to = save_best_to or None
        self.save_meta_to = save_meta_to
        self.save_type = save_type
        self.saving_latest = self.save_latest_to is not None
        self.saving_best = self.save_best_to is not None
        self.saving_meta = save_meta_to is not None
        for name in self._options:
            setattr(self, name, kwargs.get(name))

    def init(self, logger: Any = None, **kwargs: Any) -> None:
        """Checks that the target can be used and remembers the logger (wandb)."""
        self.logger = logger

    def save_file(self, local_path: str | os.PathLike, save_path: str, **kwargs: Any) -> None:
        """Copies / uploads `local_path` (a file or a checkpoint directory) to `save_path`."""
        raise NotImplementedError


class LocalSaver(BaseSaver):
    """Copies into a local path (the tracker already writes local targets in place)."""

    save_to = "local"

    def save_file(self, local_path: str | os.PathLike, save_path: str, **kwargs: Any) -> None:
        src, dst = Path(local_path), Path(save_path)
        if src.resolve() == dst.resolve():
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
        if src.is_dir():
            shutil.copytree(src, tmp)
        else:
            shutil.copy2(src, tmp)
        if dst.is_dir():
            shutil.rmtree(dst)
        os.replace(tmp, dst)


class WandbSaver(BaseSaver):
    """Uploads to the files of the wandb run (needs the tracker's wandb logger)."""

    save_to = "wandb"
    _options = ("wandb_run_path",)

    def init(self, logger: Any = None, **kwargs: Any) -> None:
        from dalle2_pytorch.training.trackers.loggers import WandbLogger

        if not isinstance(logger, WandbLogger):
            raise ValueError("save_to='wandb' needs the wandb logger (tracker.log.log_type='wandb')")
        self.logger = logger

    def save_file(self, local_path: str | os.PathLike, save_path: str, **kwargs: Any) -> None:
        path = Path(local_path)
        for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
            self.logger.log_file(f)


class HuggingfaceSaver(BaseSaver):
    """Uploads to a Hugging Face Hub repository (`huggingface_repo`; token from `token_path` or the login)."""

    save_to = "huggingface"
    _options = ("huggingface_repo", "token_path")

    def __init__(self, data_path: str | os.PathLike = DEFAULT_DATA_PATH, huggingface_repo: str | None = None, **kwargs: Any):
        super().__init__(data_path, huggingface_repo=huggingface_repo, **kwargs)
        if not huggingface_repo:
            raise ValueError("HuggingfaceSaver needs huggingface_repo")

    def save_file(self, local_path: str | os.PathLike, save_path: str, **kwargs: Any) -> None:
        from huggingface_hub import HfApi

        token = Path(self.token_path).read_text().strip() if self.token_path else None
        api, path = HfApi(token=token), Path(local_path)
        if path.is_dir():
            api.upload_folder(repo_id=self.huggingface_repo, folder_path=str(path), path_in_repo=save_path)
        else:
            api.upload_file(repo_id=self.huggingface_repo, path_or_fileobj=str(path), path_in_repo=save_path)


saver_type_map: dict[str, type[BaseSaver]] = {"local": LocalSaver, "wandb": WandbSaver, "huggingface": HuggingfaceSaver}


def create_saver(saver_type: str, data_path: str | os.PathLike, **kwargs: Any) -> BaseSaver:
    """'local' / 'wandb' / 'huggingface' → the saver class, built with `kwargs`."""
    if saver_type not in saver_type_map:
        raise ValueError(f"unknown saver type {saver_type!r}; expected one of {sorted(saver_type_map)}")
    return saver_type_map[saver_type](data_path, **kwargs)


def saver_from_config(cfg: Any, data_path: str | os.PathLike) -> BaseSaver:
    """A saver from a saver, a `TrackerSaveConfig` or a dict."""
    if isinstance(cfg, BaseSaver):
        return cfg
    kind = _fields(cfg, ("save_to",)).get("save_to", "local")
    common = ("save_latest_to", "save_best_to", "save_meta_to", "save_type")
    options = common + (saver_type_map[kind]._options if kind in saver_type_map else ())
    return create_saver(kind, data_path, **_fields(cfg, options))
