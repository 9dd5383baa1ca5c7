#!/usr/bin/env bash
# Headless Chromium from Debian's packages, for tests/test_demo_workflow.py's report check.
# Idempotent; needs root (CI runs as root) and the Debian package index.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  echo "install_chromium.sh: $(chromium --version 2>/dev/null) already installed"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
echo "install_chromium.sh: installed $(chromium --version 2>/dev/null)"
