"""`scripts/uv_install.py`: the settings `pip install` would use become uv's flags, so `make setup`
installs from the same places with uv as with pip, or steps aside for pip."""

from __future__ import annotations

import importlib.util
import os
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
download.index-url='https://not-for-install.example/simple'
global.cert='/elsewhere.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/not/this/one'
global.index-url='https://global.example/simple'
global.timeout='60'
install.index-url='https://install.example/simple'
"""


def test_pip_settings_rank_environment_then_install_then_global():
    settings = uv_install.pip_settings(LISTING)
    assert settings == {"cert": "/etc/ssl/certs/ca-certificates.crt", "find-links": "/opt/wheels",
                        "constraint": "/etc/xdg/pip/constraints.txt", "timeout": "60",
                        "index-url": "https://install.example/simple",
                        "extra-index-url": "file:///opt/pypi/simple file:///opt/pypi-more/simple"}


def test_uv_flags_split_several_values():
    flags = uv_install.uv_flags(uv_install.pip_settings(LISTING))
    assert flags == ["--index-url=https://install.example/simple", "--extra-index-url=file:///opt/pypi/simple",
                     "--extra-index-url=file:///opt/pypi-more/simple", "--find-links=/opt/wheels",
                     "--constraint=/etc/xdg/pip/constraints.txt"]
    assert uv_install.uv_flags({}) == []
    assert uv_install.pip_settings("") == {}


def test_multi_line_values_and_switches_as_pip_config_list_prints_them(tmp_path):
    """A real `pip config list` over a pip.conf with a multi-line value (printed as a Python literal
    with escaped new lines) and `no-index`; a setting uv has no equivalent for makes it step aside."""
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nextra-index-url =\n    https://a.example/simple\n    https://b.example/simple\n"
                    "no-index = true\n[install]\nfind-links = /opt/wheels\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=str(conf))
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             env=env, timeout=120).stdout
    assert "\\n" in listing  # pip escapes the new lines of the multi-line value
    flags = uv_install.uv_flags(uv_install.pip_settings(listing))
    # the machine's own site-wide pip.conf is still read: only its constraint file may be added
    flags = [f for f in flags if not f.startswith("--constraint=")]
    assert flags == ["--extra-index-url=https://a.example/simple", "--extra-index-url=https://b.example/simple",
                     "--find-links=/opt/wheels", "--no-index"]
    assert uv_install.uv_flags({"trusted-host": "mirror.example"}) is None
    assert uv_install.uv_flags({"no-index": "false"}) == []


def test_main_installs_with_bytecode_compiled(tmp_path, monkeypatch):
    # a `uv` beside the interpreter that records its arguments (main finds uv next to sys.executable)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"
    python.symlink_to(sys.executable)
    record = tmp_path / "uv-args.txt"
    uv = bin_dir / "uv"
    uv.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {record}\n")
    uv.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    monkeypatch.setenv("PIP_INDEX_URL", "file:///some/index")
    assert uv_install.main(["-q", "-r", "requirements-dev.txt"]) == 0
    args = record.read_text().split("\n")
    assert args[:2] == ["pip", "install"] and "--compile-bytecode" in args
    assert "--index-url=file:///some/index" in args and args[-4:-1] == ["-q", "-r", "requirements-dev.txt"]
