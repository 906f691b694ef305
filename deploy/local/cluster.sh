#!/usr/bin/env bash
# A local cleave cluster as separate processes: a real etcd, N workers registered in it, and a router that finds
# them there. Ctrl-C stops everything. Needs `etcd` (Debian: etcd-server) and a built `cleave`
# (cargo build --release). Usage: deploy/local/cluster.sh [WORKERS] (default 2)
set -euo pipefail
cd "$(dirname "$0")/../.."

workers="${1:-2}"
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
for i in $(seq 1 "$workers"); do
    "$cleave" worker --listen "127.0.0.1:$((50060 + i))" --etcd "$etcd_url" --id "worker-$i" &
    pids+=($!)
done
"$cleave" router --listen "127.0.0.1:${router_port}" --etcd "$etcd_url" &
pids+=($!)

echo "router on 127.0.0.1:${router_port}; try:"
echo "  grpcurl -plaintext -d '{\"prompt\":\"The capital of France is\",\"max_tokens\":16}' 127.0.0.1:${router_port} cleave.v1.Generation/Generate"
wait
