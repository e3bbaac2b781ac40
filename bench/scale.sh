#!/usr/bin/env bash
# Scale test: idle connections through wsgate with fast heartbeats (see README.md).
# Same as `bench/compare.sh scale ...`; options: --quick, --conns N, --hold SECS,
# --client-interval 1s, --backend-interval 30s, --no-build, --keep.
exec "$(dirname "${BASH_SOURCE[0]}")/compare.sh" scale "$@"
