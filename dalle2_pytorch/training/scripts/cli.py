"""Command line of `train_prior.py` / `train_decoder.py`: arguments, config loading, overrides.

Both scripts accept::

    --config_file PATH         (alias --config_path, the spelling of the reference's prior.md)
    --override KEY=VALUE       (repeatable) set a config value before validation, e.g.
                               `--override train.lr=3e-4 --override data.batch_size=16`;
                               KEY is a dotted path (list items by index: decoder.unets.0.dim),
                               VALUE is parsed as JSON when possible, else kept as a string
    --check-config             validate the config (types, ranges, paths) and build the networks on
                               the meta device (no memory, no data, no CLIP); print one line; write nothing
    --dry-run                  parse, build the models and data, run one batch; write nothing
    --resume / --no-resume     continue from the newest valid checkpoint of the run folder
                               (`tracker.data_path/checkpoints/`; default: resume); a folder that
                               cannot be continued is refused (see `run_folder.py`)
    --start-over               move an existing run folder aside (`<folder>.old-<time>`) and start at step 0
    --max-steps N              stop (after saving) once N optimiser steps were taken in total
    --log-every N              print training metrics every N steps (metrics.jsonl gets every step)
    --cpu                      force the CPU even when an accelerator is present
    --verbose, -v              print the traceback of an error (before its one-line message)

Config problems (unknown or misspelled keys, bad values, missing files) raise :class:`ConfigError`,
whose message names every offending key. The console entry points run through
:func:`dalle2_pytorch.command_line.run_command`: every error is one line on stderr and a non-zero
exit status (2: invalid input or refused; 3: failed while running; 1: stopped by a signal after
saving).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from dalle2_pytorch.command_line import ArgumentParser, UserError, exit_fast, run_command
from dalle2_pytorch.config.base import load_json

__all__ = [
    "ConfigError",
    "RunOptions",
    "apply_override",
    "close_process_group",
    "build_parser",
    "format_validation_error",
    "load_config",
    "parse_args",
    "positive_int",
    "run_cli",
]

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class ConfigError(UserError, ValueError):
    """The training config (file, overrides or referenced paths) is invalid (exit status 2)."""


@dataclass
class RunOptions:
    """Command-line options of a training run (everything that is not in the config)."""

    dry_run: bool = False
    check_config: bool = False
    resume: bool = True
    start_over: bool = False
    max_steps: int | None = None
    log_every: int = 10
    cpu: bool = False
    eval_every_steps: int | None = None
    save_every_steps: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The arguments shared by both training scripts (see the module docstring)."""
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--config_file", "--config_path", "--config-file", dest="config_file", required=True,
        help="training config JSON (TrainDiffusionPriorConfig / TrainDecoderConfig schema)",
    )
    parser.add_argument(
        "--override", "-o", action="append", default=[], metavar="KEY=VALUE",
        help="set a config value (dotted key, JSON value), e.g. train.lr=3e-4; repeatable",
    )
    parser.add_argument(
        "--dry-run", "--dry_run", dest="dry_run", action="store_true",
        help="parse the config, build models and data, run one batch, then exit (writes nothing)",
    )
    parser.add_argument(
        "--check-config", "--check_config", dest="check_config", action="store_true",
        help="validate the config and build the networks on the meta device, then exit (writes nothing)",
    )
    parser.add_argument(
        "--resume", action=argparse.BooleanOptionalAction, default=True,
        help="continue from the newest valid checkpoint under tracker.data_path (default: on); "
             "--no-resume starts at step 0 and is refused when the folder holds an earlier run",
    )
    parser.add_argument(
        "--start-over", "--start_over", dest="start_over", action="store_true",
        help="move an existing run folder aside to <folder>.old-<time> (nothing is deleted) and start at step 0",
    )
    parser.add_argument("--max-steps", "--max_steps", dest="max_steps", type=positive_int, default=None,
                        help="stop after this many optimiser steps in total (a checkpoint is saved)")
    parser.add_argument("--log-every", "--log_every", dest="log_every", type=positive_int, default=10,
                        help="print training metrics every N steps (default 10)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is available")
    parser.add_argument("--verbose", "-v", action="store_true", help="print the traceback of an error")
    return parser


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """`parser.parse_args(argv)`; `argv=None` reads `sys.argv[1:]`."""
    return parser.parse_args(None if argv is None else list(argv))


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Applies one `KEY=VALUE` override to the raw config dict in place.

    Intermediate dicts are created when missing (validation then reports unknown keys); list items
    are addressed by index.

    Raises:
        ConfigError: malformed assignment, or a path through a non-container / bad list index.
    """
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--override expects KEY=VALUE (e.g. train.lr=3e-4), got {assignment!r}")
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            node = node[_index(part, node, where)]
        elif isinstance(node, dict):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        else:
            raise ConfigError(f"--override {key}: {'.'.join(parts[:i]) or '<root>'} is not a section")
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--override {key}: {where} is a value, not a section")
    last = parts[-1]
    value = _parse_value(raw)
    if isinstance(node, list):
        node[_index(last, node, key)] = value
    else:
        node[last] = value


def _index(part: str, items: list, where: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(items) <= int(part) < len(items):
        raise ConfigError(f"--override {where}: {part!r} is not a valid index into a list of {len(items)}")
    return int(part)


def _location(loc: tuple) -> str:
    """Dotted field path without pydantic's union-member tags (`function-before[...]`, `tuple[...]`)."""
    parts = [str(p) for p in loc if isinstance(p, int) or not any(c in str(p) for c in "[]()-, ")]
    return ".".join(parts) or "<root>"


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem: `<dotted location>: <message>`. Where a field accepts alternatives (a
    value or one value per unet), the messages of the alternatives that do not apply ("should be a
    valid tuple") are left out when a more specific one exists."""
    by_location: dict[str, list[str]] = {}
    for item in error.errors():
        messages = by_location.setdefault(_location(item["loc"]), [])
        if item["msg"] not in messages:
            messages.append(item["msg"])
    lines = [f"invalid training config {source}:"]
    for loc, messages in by_location.items():
        specific = [m for m in messages if not m.startswith(("Input should be a valid tuple", "Input should be a valid list",
                                                             "Input should be None"))]
        lines.append(f"  {loc}: {'; '.join(specific or messages)}")
    return "\n".join(lines)


def load_config(
    config_cls: type[ConfigT], path: str | Path, overrides: Sequence[str] = (), check_paths: bool = True
) -> ConfigT:
    """Reads, overrides and validates a training config.

    Args:
        config_cls: `TrainDiffusionPriorConfig` or `TrainDecoderConfig`.
        path: the JSON file.
        overrides: `KEY=VALUE` strings (see :func:`apply_override`).
        check_paths: also run `config.validate_paths()` (local data / checkpoint paths exist).

    Raises:
        ConfigError: naming the file and every bad key / value / missing path.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = load_json(path)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        config = config_cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from e
    if check_paths:
        try:
            config.validate_paths()
        except FileNotFoundError as e:
            raise ConfigError(f"{path}: {e}") from e
    return config


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Runs a script's `main` through :func:`~dalle2_pytorch.command_line.run_command`: every error
    becomes one line on stderr and a non-zero exit status (`--verbose` adds the traceback).

    A process that ran collectives (`accelerate launch` with several processes) does not return: it
    leaves through :func:`~dalle2_pytorch.command_line.exit_fast` after the exit handlers. Gloo's
    worker threads can still hold the last reference to a finished collective's tensors when the
    interpreter tears down; freeing them then needs the GIL and aborts the process (SIGABRT,
    "terminate called without an active exception"; the mechanism of pytorch/pytorch#179291, seen
    here with FSDP2's all-gathers), turning a finished run's status 0 into a failure even after
    `destroy_process_group`."""
    name = prog or Path(sys.argv[0]).name or "train"
    distributed = False

    def main_then_close(args: Sequence[str] | None) -> int:
        nonlocal distributed
        status = main(args)
        distributed = close_process_group()  # not after an error: see close_process_group
        return status

    status = run_command(name, main_then_close, argv)
    if distributed or _process_group_open():  # the latter: ended by an error
        exit_fast(status)
    return status


def close_process_group() -> bool:
    """After a run that ended normally on every rank: waits for the other processes and destroys the
    process group; returns whether there was one. Not for an error's path, where a rank still inside
    a collective would leave the others waiting in the barrier."""
    import torch.distributed as dist

    if not _process_group_open():
        return False
    dist.barrier()
    dist.destroy_process_group()
    return True


def _process_group_open() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()
