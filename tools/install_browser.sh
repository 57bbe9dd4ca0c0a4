#!/usr/bin/env bash
# What the browser tests (tests/browser) need, for CI and for a developer machine:
#   - Debian's Chromium (apt packages chromium, chromium-driver: /usr/bin/chromium, /usr/bin/chromedriver);
#   - the Python driver Playwright, used only to drive that Chromium (executable_path=/usr/bin/chromium).
# It never downloads a browser: no `playwright install`. Idempotent: skips what is already there.
# Usage: tools/install_browser.sh            (PY=path/to/python to choose the venv; default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PLAYWRIGHT_SPEC=${PLAYWRIGHT_SPEC:-"playwright==1.65.2"}

if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium chromium-driver
fi
if ! "$PY" -c "import playwright.sync_api" >/dev/null 2>&1; then
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip install -q "$PLAYWRIGHT_SPEC"
fi

# Check: Debian's Chromium starts headless under Playwright and renders a page (no network needed).
"$PY" - <<'PYEOF'
from playwright.sync_api import sync_playwright
args = ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic']
with sync_playwright() as p:
    b = p.chromium.launch(executable_path='/usr/bin/chromium', headless=True, args=args)
    pg = b.new_page(); pg.set_content('<p id=t>ok</p>')
    assert pg.inner_text('#t') == 'ok'
    print(f'browser ok: Chromium {b.version} driven by Playwright')
    b.close()
PYEOF
