#!/usr/bin/env bash
# Makes sure the browser tests can run: Debian's Chromium (/usr/bin/chromium) and the
# playwright-core package in tests/ui (pinned in tests/ui/package.json). Installs what is
# missing; changes nothing that is already in place. Playwright never downloads a browser here.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v chromium >/dev/null 2>&1; then
  echo "carebell: installing chromium from Debian's packages" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# Chinese text on the pages (and in their screenshots) needs a CJK font.
if ! fc-list 2>/dev/null | grep -qi -e 'wenquanyi' -e 'noto sans cjk'; then
  echo "carebell: installing a Chinese font (fonts-wqy-zenhei) from Debian's packages" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-zenhei >/dev/null
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "carebell: installing nodejs and npm from Debian's packages" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi

if [ ! -f tests/ui/node_modules/playwright-core/package.json ]; then
  echo "carebell: installing playwright-core for the browser tests" >&2
  (cd tests/ui && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --silent)
fi
