#!/usr/bin/env bash
# Headless Chromium for the browser test of the HTML report (tests/bench/test_html_browser.py,
# `make test-browser`). Needs root and Debian's apt when chromium is missing; fails loudly otherwise.
set -euo pipefail

if command -v chromium >/dev/null; then
  echo "chromium: $(chromium --version 2>/dev/null || echo present)"; exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "chromium: not installed, and installing it needs root (apt-get install chromium); run as root" >&2; exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "chromium: not installed, and this machine has no apt-get to install Debian's chromium" >&2; exit 1
fi
install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
install 2>/dev/null || { apt-get update -qq && install; } ||
  { echo "chromium: apt-get could not install chromium" >&2; exit 1; }
echo "chromium: installed $(chromium --version 2>/dev/null)"
