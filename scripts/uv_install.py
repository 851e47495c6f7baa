"""`uv pip install` with the package sources pip is configured with: `python uv_install.py ARGS...`.

`scripts/setup_env.sh` installs with uv, which unpacks torch's wheels in about a quarter of pip's time
(14 s against 54 s on the 2-core CI machine), but uv does not read pip's configuration. The settings
`pip install` would use (PIP_* variables first, then the `[install]` and `[global]` sections of the
pip.conf files, as `python -m pip config list` prints them) are passed on: index-url, extra-index-url,
find-links, constraint, no-index, and cert (as SSL_CERT_FILE). Like pip, uv then considers every index
for every package (`--index-strategy unsafe-best-match`). A setting that changes what pip would install
and has no uv equivalent here (trusted-host, pre, only-binary, prefer-binary, no-binary, require-hashes)
makes this script step aside, so that the caller installs with pip.

Exit status: uv's; 127 when uv is missing next to this interpreter or a setting steps aside.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

_FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
          "constraint": "--constraint"}
_SWITCHES = {"no-index": "--no-index"}
_UNSUPPORTED = ("trusted-host", "pre", "only-binary", "prefer-binary", "no-binary", "require-hashes")
_SCOPES = (":env:", "install", "global")  # pip install's order of precedence
STEP_ASIDE = 127


def pip_settings(listing: str) -> dict[str, str]:
    """`pip config list` lines (``global.find-links='/opt/wheels'``, values as Python literals) ->
    {setting: value} of the scopes `pip install` reads, the first scope of `_SCOPES` winning."""
    ranked: dict[str, tuple[int, str]] = {}
    for line in listing.splitlines():
        key, sep, text = line.partition("=")
        scope, _, name = key.rpartition(".")
        if not sep or scope not in _SCOPES:
            continue
        try:
            value = ast.literal_eval(text.strip())
        except (SyntaxError, ValueError):
            value = text.strip().strip("'\"")
        rank = _SCOPES.index(scope)
        if name not in ranked or rank < ranked[name][0]:
            ranked[name] = (rank, str(value))
    return {name: value for name, (_, value) in ranked.items()}


def _true(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def uv_flags(settings: dict[str, str]) -> list[str] | None:
    """The uv flags for pip's settings (one setting may hold several values, separated by spaces or
    new lines); None when a setting has no equivalent (the caller should use pip)."""
    if any(name in settings for name in _UNSUPPORTED):
        return None
    flags = [f"{flag}={value}" for name, flag in _FLAGS.items() for value in settings.get(name, "").split()]
    return flags + [flag for name, flag in _SWITCHES.items() if _true(settings.get(name, ""))]


def main(argv: list[str]) -> int:
    uv = Path(sys.executable).with_name("uv")
    if not uv.is_file():
        return STEP_ASIDE
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    settings = pip_settings(listing)
    flags = uv_flags(settings)
    if flags is None:
        return STEP_ASIDE
    env = dict(os.environ)
    if "cert" in settings:
        env.setdefault("SSL_CERT_FILE", settings["cert"])
    # bytecode at install time, as pip does: uv leaves it to the first import, which cannot keep it where
    # PYTHONDONTWRITEBYTECODE is set, and then every `import torch` compiles its sources again (2.7 s
    # instead of 1.1–1.2 s on the 2-core machine, and `dream` 2.7 s instead of 1.4 s warm)
    command = [str(uv), "pip", "install", "--python", sys.executable, "--index-strategy", "unsafe-best-match",
               "--compile-bytecode", *flags, *argv]
    return subprocess.call(command, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
