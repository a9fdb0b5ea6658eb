#!/usr/bin/env bash
# The main job: set up, then quantize SmolLM2-135M to several formats and compare.
# Extra arguments go to `anybit demo` (see `anybit demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The evaluation text is the King James Bible from Debian's bible-kjv when it is
# installed; as root on Debian/Ubuntu we install it, otherwise the demo uses the
# passage shipped with anybit.
if ! command -v bible >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get install -y -qq bible-kjv >/dev/null 2>&1 || echo "(bible-kjv not installed; using the shipped passage)"
fi
exec .venv/bin/anybit demo "$@"
