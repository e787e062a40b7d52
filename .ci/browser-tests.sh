#!/usr/bin/env bash
# Browser tests of the dashboard: playwright-core (npm) driving Debian's /usr/bin/chromium headless
# against the example `browser_fixture` (a server and the dashboard under /admin/jobs on a fresh
# SQLite file). Installs what it needs on a fresh machine: chromium from Debian, the npm packages
# from the committed lock file. Screenshots go to $CARGO_TARGET_DIR/browser-artifacts/.
#
#   bash .ci/browser-tests.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n=== %s ===\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  else
    sudo "$@"
  fi
}

step "browser tests: chromium"
if [ ! -x /usr/bin/chromium ]; then
  echo "/usr/bin/chromium is missing; installing Debian's chromium"
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi
/usr/bin/chromium --version

step "browser tests: npm ci"
command -v node >/dev/null || { echo "error: node (20 or later) is needed for the browser tests" >&2; exit 1; }
node --version
(cd crates/firelane-dashboard/browser && npm ci --no-audit --no-fund)

step "browser tests: build the fixture"
cargo build -p firelane-dashboard --example browser_fixture

target_dir=${CARGO_TARGET_DIR:-$root/target}
case "$target_dir" in
  /*) ;;
  *) target_dir="$root/$target_dir" ;;
esac
export FIRELANE_BROWSER_FIXTURE="$target_dir/debug/examples/browser_fixture"
export FIRELANE_BROWSER_ARTIFACTS="${FIRELANE_BROWSER_ARTIFACTS:-$root/target/browser-artifacts}"
export CHROMIUM_PATH=/usr/bin/chromium

step "browser tests: run"
status=0
(cd crates/firelane-dashboard/browser && node --test --test-concurrency=1 dashboard.test.js) || status=$?

echo
echo "browser test screenshots: $FIRELANE_BROWSER_ARTIFACTS"
ls -1 "$FIRELANE_BROWSER_ARTIFACTS" 2>/dev/null || true
exit "$status"
