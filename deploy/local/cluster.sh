#!/usr/bin/env bash
# A local disaggregated cleave cluster as separate processes: a real etcd, prefill and decode workers registered in
# it, and a router that finds them there and sends long prompts' prefill to a prefill worker, whose KV streams to
# the decode worker. Ctrl-C stops everything. Needs `etcd` (Debian: etcd-server) and a built `cleave`
# (cargo build --release). Usage: deploy/local/cluster.sh [PREFILL_WORKERS] [DECODE_WORKERS] (default 1 1)
set -euo pipefail
cd "$(dirname "$0")/../.."

prefill_workers="${1:-1}"
decode_workers="${2:-1}"
cleave="${CLEAVE_BIN:-target/release/cleave}"
router_port="${ROUTER_PORT:-50051}"
etcd_port="${ETCD_PORT:-23790}"
[ -x "$cleave" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v etcd >/dev/null || { echo "etcd is required (apt-get install etcd-server)" >&2; exit 1; }

data=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$data"
}
trap cleanup EXIT INT TERM

etcd_url="http://127.0.0.1:${etcd_port}"
etcd --name local --data-dir "$data/etcd" \
    --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
    --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-cluster "local=http://127.0.0.1:$((etcd_port + 1))" >"$data/etcd.log" 2>&1 &
pids+=($!)

"$cleave" model pull >/dev/null
for i in $(seq 1 "$prefill_workers"); do
    "$cleave" worker --role prefill --listen "127.0.0.1:$((50060 + i))" --etcd "$etcd_url" --id "prefill-$i" &
    pids+=($!)
done
for i in $(seq 1 "$decode_workers"); do
    "$cleave" worker --role decode --listen "127.0.0.1:$((50080 + i))" --etcd "$etcd_url" --id "decode-$i" &
    pids+=($!)
done
# Prompts with at least this many uncached tokens are prefilled on a prefill worker.
"$cleave" router --listen "127.0.0.1:${router_port}" --etcd "$etcd_url" \
    --remote-prefill-min-tokens "${REMOTE_PREFILL_MIN_TOKENS:-256}" &
pids+=($!)

echo "router on 127.0.0.1:${router_port}; try:"
echo "  grpcurl -plaintext -d '{\"prompt\":\"The capital of France is\",\"max_tokens\":16}' 127.0.0.1:${router_port} cleave.v1.Generation/Generate"
wait
