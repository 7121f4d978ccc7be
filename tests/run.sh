#!/usr/bin/env bash
# The whole test suite, as CI runs it. Installs what the tests drive for real (trace-cmd,
# memcached, memcaslap, perf, zstd, node/npm for Perfetto's trace processor, chromium for report.html) when run as root on
# Debian, then kptrace itself, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v trace-cmd >/dev/null || need+=(trace-cmd)
command -v memcached >/dev/null || need+=(memcached)
command -v memcaslap >/dev/null || need+=(libmemcached-tools)
command -v perf >/dev/null || need+=(linux-perf)
command -v zstd >/dev/null || need+=(zstd)
command -v node >/dev/null && command -v npm >/dev/null || need+=(nodejs npm)   # Perfetto trace processor test
command -v chromium >/dev/null || need+=(chromium)                              # report.html browser test
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "tests/run.sh: not installing ${need[*]} (needs root and apt-get); tests that use them will skip" >&2
  fi
fi
# pip's status decides, not grep's: grep exits 1 when it filters out every line, so the two are
# kept apart. Only pip's harmless notes (running as root; a stray folder on sys.path) are hidden.
show_pip_log() {
  [ -z "$1" ] || printf '%s\n' "$1" | grep -Ev '^WARNING: Running pip as|is ignored: it is neither' >&2 || true
}
if ! install_log=$(python3 -m pip install -q -e '.[test]' 2>&1); then
  show_pip_log "$install_log"
  echo "tests/run.sh: pip install -e '.[test]' failed; not running the tests" >&2
  exit 1
fi
show_pip_log "$install_log"
exec python3 -m pytest -q -rs "$@"
