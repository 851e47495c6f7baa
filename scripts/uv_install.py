"""`uv pip install` with the package sources pip is configured with: `python uv_install.py ARGS...`.

`scripts/setup_env.sh` installs with uv, which unpacks torch's wheels in about a quarter of pip's time
(14 s against 54 s on the 2-core CI machine), but uv does not read pip's configuration. The sources a
machine's pip is set up with (pip.conf files and PIP_* variables: index-url, extra-index-url,
find-links, constraint, cert) are read from `python -m pip config list` and passed on; like pip, uv
then considers every index for every package (`--index-strategy unsafe-best-match`). Exits with uv's
status; 127 when uv is not installed next to this interpreter (the caller falls back to pip).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

_FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
          "constraint": "--constraint"}


def pip_settings(listing: str) -> dict[str, str]:
    """`pip config list` lines (``global.find-links='/opt/wheels'``) -> {setting: value}; the
    environment's values (``:env:.``) win over the files', as in pip."""
    found: dict[str, str] = {}
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        scope, _, name = key.rpartition(".")
        if sep and (name in _FLAGS or name == "cert") and (scope == ":env:" or name not in found):
            found[name] = value.strip().strip("'\"")
    return found


def uv_flags(settings: dict[str, str]) -> list[str]:
    """The uv flags for pip's settings (a setting may hold several space-separated values)."""
    return [f"{flag}={value}" for name, flag in _FLAGS.items() for value in settings.get(name, "").split()]


def main(argv: list[str]) -> int:
    uv = Path(sys.executable).with_name("uv")
    if not uv.is_file():
        uv = shutil.which("uv")
        if uv is None:
            return 127
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    settings = pip_settings(listing)
    env = dict(os.environ)
    if "cert" in settings:
        env.setdefault("SSL_CERT_FILE", settings["cert"])
    command = [str(uv), "pip", "install", "--python", sys.executable, "--index-strategy", "unsafe-best-match",
               *uv_flags(settings), *argv]
    return subprocess.call(command, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
