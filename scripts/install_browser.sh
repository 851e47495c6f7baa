#!/usr/bin/env bash
# Installs Debian's Chromium for the web page's browser test (tests/demo/test_web_page.py), which
# Playwright drives through /usr/bin/chromium (Playwright never downloads a browser here).
# Idempotent: does nothing when /usr/bin/chromium exists. When it cannot install (no apt-get, not
# root and no password-less sudo, no network), it says why and exits 0: the suite still runs, and
# the browser test then fails with that reason (it never skips).
set -uo pipefail
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "[browser] $CHROMIUM is missing and installing it needs root: sudo apt-get install -y chromium" >&2
    exit 0
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[browser] $CHROMIUM is missing and there is no apt-get: install Chromium at $CHROMIUM" >&2
  exit 0
fi
echo "[browser] installing Debian's chromium for the web page test (once)" >&2
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -q >/tmp/dalle2_apt_update.log 2>&1 \
   && $SUDO apt-get install -y -q chromium >/tmp/dalle2_apt_chromium.log 2>&1 \
   && [ -x "$CHROMIUM" ]; then
  echo "[browser] $("$CHROMIUM" --version 2>/dev/null | head -1)" >&2
else
  echo "[browser] could not install chromium (see /tmp/dalle2_apt_update.log, /tmp/dalle2_apt_chromium.log)" >&2
fi
exit 0
