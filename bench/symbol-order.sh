#!/usr/bin/env bash
# bench/symbol-order.sh: writes bench/symbol-order.txt, the functions a running watchdog
# executes, hottest first. build.rs hands it to the linker (LLD's --symbol-ordering-file) for
# release builds, which lays those functions out together at the start of .text.
#
# Why (issue #7, RSS against monit): the kernel maps the page-cache neighbours of every page a
# process touches (fault-around, 64 KiB). The ~2,000 functions a daemon runs were scattered over
# the 3.9 MB of text, so nearly all of it became resident: 3.5 MB of a 6.3 MiB RSS. Laid out
# together they fill ~0.8 MB.
#
# When to run it: after a dependency update or a big change, when `bench/recovery.sh` reports
# fewer of the file's functions found in the binary (a stale list only costs memory: names the
# binary no longer has are skipped by the linker). Takes ~2 minutes plus the release build.
#
# How: the release binary (built alone, as bench/recovery.sh and the Dockerfile build it: built
# together with the examples, dependency features and so every symbol name would differ) runs
# under valgrind's callgrind, which records every function executed:
#   1. `watchdog validate` and `watchdog check` of the shipped example config;
#   2. `watchdog run` for RUN_SECONDS (default 15) with 20 http probes against a local fake
#      apache, a process probe on its pidfile, a tcp probe, rules with a signal restart and a
#      webhook page (never triggered), the status API on a unix socket, which is queried once;
#   then stopped with SIGTERM (the shutdown path counts too). Functions are ordered by the
#   instructions they executed, most first; those of the run before those of validate/check.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_SECONDS=${RUN_SECONDS:-15}
PORT=${BENCH_PORT:-18750}
OUT=${OUT:-$ROOT/bench/symbol-order.txt}
WATCHDOG=$ROOT/target/release/watchdog
FAKE_APACHE=$ROOT/target/release/examples/fake_apache
WORK=$(mktemp -d /tmp/watchdog-order.XXXXXX)
PIDS=()

log() { printf '[symbol-order %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

if ! command -v valgrind >/dev/null; then
    log "installing valgrind (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi
log "building (cargo build --release --example fake_apache; cargo build --release --bin watchdog)"
(cd "$ROOT" && cargo build --release --example fake_apache 2>&1 | tail -n 1 >&2 &&
    cargo build --release --bin watchdog 2>&1 | tail -n 1 >&2) || die "build failed"

"$FAKE_APACHE" --listen "127.0.0.1:$PORT" --control "127.0.0.1:$((PORT + 1))" \
    --pidfile "$WORK/fa.pid" --workers 8 --log "$WORK/fa.log" &
PIDS+=($!)
for ((i = 0; i < 100; i++)); do [[ -s $WORK/fa.pid ]] && break; sleep 0.1; done
[[ -s $WORK/fa.pid ]] || die "the fake apache did not start (see $WORK/fa.log)"

cat >"$WORK/run.toml" <<EOF
[watchdog]
state_dir = "$WORK/state"
api_socket = "$WORK/watchdog.sock"

[defaults]
interval = "1s"
timeout = "900ms"

[[probe]]
name = "apache-process"
kind = "process"
pidfile = "$WORK/fa.pid"

[[probe]]
name = "apache-port"
kind = "tcp"
address = "127.0.0.1:$PORT"

[[rule]]
probe = "apache-process"
when = "down"
do = ["restart-apache", "page"]

[action.restart-apache]
kind = "signal"
pidfile = "$WORK/fa.pid"
start = ["/bin/true"]

[action.page]
kind = "webhook"
url = "http://127.0.0.1:$((PORT + 2))/hook"
EOF
for ((i = 1; i <= 20; i++)); do
    printf '\n[[probe]]\nname = "http-%d"\nkind = "http"\nurl = "http://127.0.0.1:%d/p/%d"\n' "$i" "$PORT" "$i" >>"$WORK/run.toml"
done
"$WATCHDOG" validate --config "$WORK/run.toml" >/dev/null 2>&1 || {
    "$WATCHDOG" validate --config "$WORK/run.toml" >&2 || true
    die "the profiling config is invalid"
}

grind() { # grind NAME COMMAND...: callgrind output in $WORK/NAME.cg (exec: in `( ) &`, $! is valgrind)
    exec valgrind --tool=callgrind --callgrind-out-file="$WORK/$1.cg" --dump-instr=no \
        --demangle=no --trace-children=no -q "${@:2}"
}
log "callgrind: validate and check of config/watchdog.toml"
mkdir -p "$WORK/shipped"
sed "s|^state_dir = .*|state_dir = \"$WORK/shipped\"|" "$ROOT/config/watchdog.toml" >"$WORK/shipped/watchdog.toml"
cp -r "$ROOT/config/conf.d" "$WORK/shipped/"
(grind validate "$WATCHDOG" validate --config "$WORK/shipped/watchdog.toml") >/dev/null 2>&1 || true
(grind check "$WATCHDOG" check --dry-run --config "$WORK/shipped/watchdog.toml") >/dev/null 2>&1 || true

log "callgrind: watchdog run for ${RUN_SECONDS} s"
(grind run "$WATCHDOG" run --config "$WORK/run.toml") 2>"$WORK/run.log" &
WD=$!
PIDS+=("$WD")
sleep "$RUN_SECONDS"
python3 - "$WORK/watchdog.sock" <<'EOF' || log "the status API did not answer (the order is written anyway)"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(b"GET /status HTTP/1.1\r\nHost: watchdog\r\nConnection: close\r\n\r\n")
while s.recv(65536):
    pass
EOF
kill -TERM "$WD"
wait "$WD" || true
[[ -s $WORK/run.cg ]] || die "no callgrind output of the run (see $WORK/run.log)"

python3 - "$WATCHDOG" "$OUT" "$WORK/run.cg" "$WORK/validate.cg" "$WORK/check.cg" <<'EOF'
# The functions of the watchdog binary with their self cost (instructions), per callgrind file.
import re, subprocess, sys
binary, out, files = sys.argv[1], sys.argv[2], sys.argv[3:]
text = set()
for line in subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout.splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[1] in "tTwW":
        text.add(parts[2])
order, seen = [], set()
for path in files:
    try:
        lines = open(path)
    except FileNotFoundError:
        continue
    objects, functions, cost = {}, {}, {}
    current_object, current = None, None
    for line in lines:
        line = line.rstrip("\n")
        m = re.match(r"^(c?ob|c?fn|c?fi|c?fe|fl)=\((\d+)\)(?: (.*))?$", line)
        if m:
            kind, ident, name = m.groups()
            table = objects if kind.endswith("ob") else functions if kind.endswith("fn") else None
            if table is not None and name:
                table[ident] = name
            if kind == "ob":
                current_object = objects[ident]
            elif kind == "fn":
                current = functions[ident] if current_object and current_object.endswith("/watchdog") else None
            continue
        if current and line[:1] in "0123456789+-*":
            # A cost line: "line count" (the count of the function's own instructions).
            fields = line.split()
            if len(fields) >= 2:
                cost[current] = cost.get(current, 0) + int(fields[1])
        elif line.startswith("calls="):
            next(lines, None)  # the call's inclusive cost: not this function's own
    for name, _ in sorted(cost.items(), key=lambda kv: -kv[1]):
        if name in text and name not in seen:
            seen.add(name)
            order.append(name)
with open(out, "w") as f:
    f.write("\n".join(order) + "\n")
print(f"{len(order)} functions", file=sys.stderr)
EOF
log "wrote $OUT"
