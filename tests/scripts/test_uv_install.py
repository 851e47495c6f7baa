"""`scripts/uv_install.py`: pip's configured package sources become uv's flags, so `make setup`
installs from the same places with uv as with pip."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("uv_install", REPO / "scripts" / "uv_install.py")
uv_install = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(uv_install)

LISTING = """\
:env:.cert='/etc/ssl/certs/ca-certificates.crt'
:env:.find-links='/opt/wheels'
global.cert='/elsewhere.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/not/this/one'
global.timeout='60'
"""


def test_pip_settings_prefer_the_environment_and_keep_only_sources():
    settings = uv_install.pip_settings(LISTING)
    assert settings == {"cert": "/etc/ssl/certs/ca-certificates.crt", "find-links": "/opt/wheels",
                        "constraint": "/etc/xdg/pip/constraints.txt",
                        "extra-index-url": "file:///opt/pypi/simple file:///opt/pypi-more/simple"}


def test_uv_flags_split_several_values():
    flags = uv_install.uv_flags(uv_install.pip_settings(LISTING))
    assert flags == ["--extra-index-url=file:///opt/pypi/simple", "--extra-index-url=file:///opt/pypi-more/simple",
                     "--find-links=/opt/wheels", "--constraint=/etc/xdg/pip/constraints.txt"]
    assert uv_install.uv_flags({}) == []
    assert uv_install.pip_settings("") == {}


def test_this_machines_pip_listing_parses(tmp_path):
    """The real `pip config list` of this interpreter reads without error (whatever it holds)."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             timeout=120).stdout
    flags = uv_install.uv_flags(uv_install.pip_settings(listing))
    assert all(f.startswith(("--index-url=", "--extra-index-url=", "--find-links=", "--constraint=")) for f in flags)
