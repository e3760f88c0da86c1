#!/usr/bin/env bash
# bench/run.sh: the uptime-watchdog benchmark, against monit 5.33 as the baseline.
#
# WHAT IT MEASURES (one run, one summary table at the end)
#   1. Idle memory: `watchdog run --config config/watchdog.toml` (the shipped example, 2 probes)
#      after IDLE_SECONDS (default 10 s): VmRSS and VmHWM from /proc/PID/status; next to monit
#      running the equivalent 2-check monitrc (an http check of 127.0.0.1:8080
#      /server-status?auto for "BusyWorkers", a port check of 127.0.0.1:22). Ratio watchdog/monit.
#      Project target: watchdog idle RSS < 6 MiB.
#   2. Load: 1,000 and 10,000 http probes (BENCH_SIZES), interval 10 s, timeout 2 s,
#      max_in_flight 256, spread over BENCH_SERVERS (default 8) local fake_apache servers so that
#      per-destination TIME_WAIT cannot exhaust ephemeral ports (each check is a fresh
#      connection). For each size, over a window of BENCH_SECONDS (default 60 s, starting when
#      the watchdog logs "watchdog running"; the first 10 s of it are the start-jitter spread):
#        - CPU % of one core: delta of utime+stime (/proc/PID/stat) / CLK_TCK / window;
#        - CPU per check: that CPU time / requests the servers answered in the window;
#        - peak RSS (VmHWM) at the end of the window, and the thread count;
#        - checks, p50/p99/max lateness from the watchdog's own "scheduler lateness" line,
#          logged on SIGTERM (lateness = how late a check started vs its schedule, including
#          the wait for an in-flight slot; the figures cover the whole run);
#        - failures: checks started (watchdog's count) minus requests the servers answered during
#          the run, and the probes that went down (count of "state changed ... down" lines).
#      Project target: 10,000 probes, p99 lateness < 50 ms, on one core.
#   3. monit at MONIT_CHECKS (default 1,000) http checks (`check host` + `if failed port ...
#      protocol http request "/p/N"`), `set daemon 10`, same servers, same window: CPU %, CPU per
#      check, peak RSS, and monit's cycles as seen from the servers (the answered-request counter
#      is polled every 0.25 s; a burst of requests = one monit cycle): cycles, checks per cycle,
#      cycle duration. monit checks serially, so a cycle slower than 10 s would show here.
#      monit at 10,000 is skipped unless MONIT_10K=1 (it is serial: a 10,000-check cycle is
#      projected from the 1,000-check one instead).
#
# HOW
#   - Everything runs on 127.0.0.1. The measured process (watchdog or monit) is pinned to CPU 0
#     with `taskset -c 0` ("one core"; the watchdog runs a single-threaded tokio runtime anyway);
#     the fake_apache servers and this script are pinned to the other CPUs, so the load generator
#     does not steal the measured core. On a 1-CPU machine nothing is pinned.
#   - Probes have no rules (validate warns "no rule acts on this probe"): the watchdog checks,
#     tracks health and logs state changes, and never acts. The idle run uses --dry-run so that
#     the shipped config's remedy/page actions can never fire (none would within 10 s anyway).
#   - Logs are JSON (`--log-format json`) on stderr, kept in the work dir.
#   - Every process started here is stopped by PID on exit (trap: SIGTERM, then SIGKILL after
#     5 s). The work dir is /tmp/watchdog-bench.XXXXXX, removed at exit unless BENCH_KEEP=1.
#   - Installs monit with apt-get if it is missing (needs root, Debian). Builds the release
#     binaries with cargo if they are missing (set BENCH_BUILD=1 to always run the build).
#
# HOW TO RUN
#   bench/run.sh                      # defaults: about 3.5 minutes
#   BENCH_SECONDS=30 bench/run.sh     # shorter windows
#   BENCH_SIZES="1000" bench/run.sh   # only the 1,000-probe load
#   MONIT_10K=1 bench/run.sh          # also monit at 10,000 checks (+1 window)
#   BENCH_KEEP=1 bench/run.sh         # keep configs and logs (path printed at the end)
#   Other knobs: IDLE_SECONDS (10), BENCH_SERVERS (8), BENCH_PORT (18100: service ports
#   BENCH_PORT.., control ports BENCH_PORT+100..), MONIT_CHECKS (1000), BENCH_INTERVAL (10).
#   Run it on a quiet machine: anything else busy on the CPUs skews the CPU figures.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_SECONDS=${BENCH_SECONDS:-60}
IDLE_SECONDS=${IDLE_SECONDS:-10}
BENCH_SIZES=${BENCH_SIZES:-"1000 10000"}
BENCH_SERVERS=${BENCH_SERVERS:-8}
BENCH_PORT=${BENCH_PORT:-18100}
BENCH_INTERVAL=${BENCH_INTERVAL:-10}
MONIT_CHECKS=${MONIT_CHECKS:-1000}
MONIT_10K=${MONIT_10K:-0}
WATCHDOG=$ROOT/target/release/watchdog
FAKE_APACHE=$ROOT/target/release/examples/fake_apache
CLK_TCK=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/watchdog-bench.XXXXXX)
PIDS=()

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- cleanup: stop everything we started, by PID ---------------------------------------------
stop_pid() { # stop_pid PID: SIGTERM, wait up to 5 s, then SIGKILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        log "kept configs and logs in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- CPU placement ------------------------------------------------------------------------------
NCPU=$(nproc)
if ((NCPU >= 2)); then
    PIN_MEASURED=(taskset -c 0)
    PIN_OTHERS=(taskset -c "1-$((NCPU - 1))")
    taskset -pc "1-$((NCPU - 1))" $$ >/dev/null # this script too
    PLACEMENT="measured process on CPU 0; fake_apache servers and this script on CPU 1-$((NCPU - 1))"
else
    PIN_MEASURED=()
    PIN_OTHERS=()
    PLACEMENT="1 CPU: nothing pinned (load generator shares the measured core)"
fi

# --- prerequisites --------------------------------------------------------------------------
if ! command -v monit >/dev/null; then
    log "installing monit (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends monit >/dev/null
fi
if [[ ${BENCH_BUILD:-0} == 1 || ! -x $WATCHDOG || ! -x $FAKE_APACHE ]]; then
    log "building release binaries"
    # Examples first, the watchdog last and alone: built together, the examples' dev-dependency
    # features (tokio's multi-thread runtime, test-util) would end up in the measured binary.
    (cd "$ROOT" && cargo build --release --examples && cargo build --release --bin watchdog)
fi
MONIT_VERSION=$(monit -V | head -n1)
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] && REV="$REV (+ uncommitted changes)"

# --- /proc helpers ---------------------------------------------------------------------------
cpu_ticks() { # utime+stime of PID, in clock ticks (fields 14 and 15, counted after the comm)
    local stat rest f
    stat=$(<"/proc/$1/stat")
    rest=${stat##*) }
    read -r -a f <<<"$rest"
    echo $((f[11] + f[12]))
}
status_kb() { # status_kb PID FIELD -> value in kB (VmRSS, VmHWM)
    local line
    while read -r line; do
        if [[ $line == "$2:"* ]]; then
            line=${line#*:}
            line=${line% kB}
            echo $((line))
            return
        fi
    done <"/proc/$1/status"
    echo 0
}
threads() { status_kb "$1" Threads; }
expect_comm() { # expect_comm PID NAME: the PID we measure is really that program
    local comm
    comm=$(<"/proc/$1/comm")
    [[ $comm == "$2" ]] || die "PID $1 is '$comm', expected '$2'"
}
mib() { awk -v k="$1" 'BEGIN { printf "%.2f", k / 1024 }'; }
ms() { awk -v v="$1" 'BEGIN { printf "%.2f", v }'; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # wait_port PORT: up to 10 s for a listener
    local i
    for ((i = 0; i < 100; i++)); do
        port_free "$1" || return 0
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$1 after 10 s"
}

# --- fake_apache servers --------------------------------------------------------------------
SERVICE_PORTS=()
CONTROL_PORTS=()
start_fake_apache() { # start_fake_apache SERVICE_PORT CONTROL_PORT
    port_free "$1" || die "port $1 is in use (set BENCH_PORT)"
    port_free "$2" || die "port $2 is in use (set BENCH_PORT)"
    "${PIN_OTHERS[@]}" "$FAKE_APACHE" --listen "127.0.0.1:$1" --control "127.0.0.1:$2" \
        --workers 64 --backlog 1024 --log "$WORK/fake_apache-$1.log" &
    PIDS+=($!)
    wait_port "$1"
    wait_port "$2"
}
# Requests answered so far by the servers on the given control ports (fake_apache /stats).
served_total() {
    local total=0 port resp fd
    for port in "$@"; do
        exec {fd}<>"/dev/tcp/127.0.0.1/$port"
        printf 'GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&"$fd"
        resp=""
        IFS= read -r -d '' -t 5 resp <&"$fd" || true
        exec {fd}>&-
        [[ $resp =~ \"requests\":([0-9]+) ]] || die "no request count from control port $port"
        total=$((total + BASH_REMATCH[1]))
    done
    echo "$total"
}

# --- config writers ---------------------------------------------------------------------------
write_watchdog_config() { # write_watchdog_config N FILE
    mkdir -p "$WORK/state-$1"
    {
        printf '[watchdog]\nstate_dir = "%s"\nmax_in_flight = 256\n\n' "$WORK/state-$1"
        printf '[defaults]\ninterval = "%ss"\ntimeout = "2s"\n' "$BENCH_INTERVAL"
        awk -v n="$1" -v ports="${SERVICE_PORTS[*]}" 'BEGIN {
            k = split(ports, p, " ")
            for (i = 1; i <= n; i++)
                printf "\n[[probe]]\nname = \"p%d\"\nkind = \"http\"\nurl = \"http://127.0.0.1:%d/p/%d\"\n", i, p[(i - 1) % k + 1], i
        }'
    } >"$2"
}
monitrc_head() { # monitrc_head DIR
    printf 'set daemon %s\nset log %s/monit.log\nset pidfile %s/monit.pid\nset statefile %s/monit.state\nset idfile %s/monit.id\n\n' \
        "$BENCH_INTERVAL" "$1" "$1" "$1" "$1"
}
write_monitrc_load() { # write_monitrc_load N DIR
    mkdir -p "$2"
    {
        monitrc_head "$2"
        awk -v n="$1" -v ports="${SERVICE_PORTS[*]}" 'BEGIN {
            k = split(ports, p, " ")
            for (i = 1; i <= n; i++)
                printf "check host p%d with address 127.0.0.1\n  if failed port %d protocol http request \"/p/%d\" with timeout 2 seconds then alert\n", i, p[(i - 1) % k + 1], i
        }'
    } >"$2/monitrc"
    chmod 600 "$2/monitrc"
}

# --- one watchdog load run ---------------------------------------------------------------------
# Sets R_* globals: cpu%, cpu per check (ms), hwm kB, rss kB, threads, checks, p50, p99, max,
# served in window, unanswered, downs, errors, startup seconds.
run_watchdog_load() { # run_watchdog_load N
    local n=$1 cfg="$WORK/watchdog-$1.toml" wlog="$WORK/watchdog-$1.log" pid t0 t1 i
    local served0 servedA servedB served1 ticksA ticksB line
    write_watchdog_config "$n" "$cfg"
    "$WATCHDOG" validate --config "$cfg" >/dev/null 2>&1 || {
        "$WATCHDOG" validate --config "$cfg" 2>&1 | grep -v 'no rule acts' | head -20 >&2
        die "generated config $cfg does not validate"
    }
    served0=$(served_total "${CONTROL_PORTS[@]}")
    log "watchdog: $n probes, window ${BENCH_SECONDS} s"
    t0=$EPOCHREALTIME
    "${PIN_MEASURED[@]}" "$WATCHDOG" --log-format json run --config "$cfg" 2>"$wlog" &
    pid=$!
    PIDS+=("$pid")
    for ((i = 0; i < 1800; i++)); do # up to 180 s to load the config and spawn the probes
        grep -q '"watchdog running"' "$wlog" && break
        kill -0 "$pid" 2>/dev/null || die "watchdog exited at start: $(tail -n5 "$wlog")"
        sleep 0.1
    done
    t1=$EPOCHREALTIME
    expect_comm "$pid" watchdog
    R_STARTUP=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    ticksA=$(cpu_ticks "$pid")
    servedA=$(served_total "${CONTROL_PORTS[@]}")
    sleep "$BENCH_SECONDS"
    ticksB=$(cpu_ticks "$pid")
    servedB=$(served_total "${CONTROL_PORTS[@]}")
    R_HWM=$(status_kb "$pid" VmHWM)
    R_RSS=$(status_kb "$pid" VmRSS)
    R_THREADS=$(threads "$pid")
    kill -TERM "$pid"
    for ((i = 0; i < 300; i++)); do # up to 30 s for a clean stop
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && { log "watchdog did not stop in 30 s: SIGKILL"; kill -KILL "$pid"; }
    wait "$pid" 2>/dev/null || true
    sleep 1 # let the last in-flight answers land in the servers' counters
    served1=$(served_total "${CONTROL_PORTS[@]}")

    line=$(grep '"scheduler lateness"' "$wlog" | tail -n1) || die "no lateness line in $wlog"
    [[ $line =~ \"checks\":([0-9]+) ]] && R_CHECKS=${BASH_REMATCH[1]}
    [[ $line =~ \"p50_ms\":([0-9.eE+-]+) ]] && R_P50=$(ms "${BASH_REMATCH[1]}")
    [[ $line =~ \"p99_ms\":([0-9.eE+-]+) ]] && R_P99=$(ms "${BASH_REMATCH[1]}")
    [[ $line =~ \"max_ms\":([0-9.eE+-]+) ]] && R_MAX=$(ms "${BASH_REMATCH[1]}")
    R_SERVED=$((servedB - servedA))
    R_UNANSWERED=$((R_CHECKS - (served1 - served0)))
    R_DOWNS=$(grep -c '"state":"down"' "$wlog" || true)
    R_ERRORS=$(grep -c '"level":"ERROR"' "$wlog" || true)
    R_CPU=$(awk -v t=$((ticksB - ticksA)) -v hz="$CLK_TCK" -v w="$BENCH_SECONDS" 'BEGIN { printf "%.1f", 100 * t / hz / w }')
    R_CPU_PER_CHECK=$(awk -v t=$((ticksB - ticksA)) -v hz="$CLK_TCK" -v c="$R_SERVED" 'BEGIN { printf "%.3f", c ? 1000 * t / hz / c : 0 }')
    log "  startup ${R_STARTUP} s, cpu ${R_CPU}%, rss $(mib "$R_RSS") MiB, hwm $(mib "$R_HWM") MiB, threads $R_THREADS, checks $R_CHECKS, p50 ${R_P50} ms, p99 ${R_P99} ms, max ${R_MAX} ms, unanswered $R_UNANSWERED, down $R_DOWNS, errors $R_ERRORS"
    if ((R_ERRORS > 0 || R_DOWNS > 0)); then
        grep -E '"level":"(ERROR|WARN)"' "$wlog" | grep -v 'config: ' | head -n3 >&2 || true
    fi
}

# --- one monit load run --------------------------------------------------------------------------
run_monit_load() { # run_monit_load N
    local n=$1 dir="$WORK/monit-$1" pid i ticksA ticksB servedA servedB now
    write_monitrc_load "$n" "$dir"
    monit -t -c "$dir/monitrc" >/dev/null || die "monit rejects $dir/monitrc"
    log "monit: $n checks, window ${BENCH_SECONDS} s"
    "${PIN_MEASURED[@]}" monit -I -c "$dir/monitrc" >"$dir/stdout.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    sleep 0.5
    kill -0 "$pid" 2>/dev/null || die "monit exited at start: $(tail -n5 "$dir/stdout.log")"
    expect_comm "$pid" monit
    ticksA=$(cpu_ticks "$pid")
    servedA=$(served_total "${CONTROL_PORTS[@]}")
    # Poll the answered-request counter to see monit's cycles (bursts of requests).
    : >"$dir/timeline"
    local end=$((${EPOCHREALTIME/./} + BENCH_SECONDS * 1000000))
    while now=${EPOCHREALTIME/./}; ((now < end)); do
        printf '%s %s\n' "$now" "$(served_total "${CONTROL_PORTS[@]}")" >>"$dir/timeline"
        sleep 0.25
    done
    ticksB=$(cpu_ticks "$pid")
    servedB=$(served_total "${CONTROL_PORTS[@]}")
    M_HWM=$(status_kb "$pid" VmHWM)
    M_RSS=$(status_kb "$pid" VmRSS)
    M_THREADS=$(threads "$pid")
    stop_pid "$pid"
    M_SERVED=$((servedB - servedA))
    M_FAILED=$(grep -c 'failed' "$dir/monit.log" || true)
    M_CPU=$(awk -v t=$((ticksB - ticksA)) -v hz="$CLK_TCK" -v w="$BENCH_SECONDS" 'BEGIN { printf "%.1f", 100 * t / hz / w }')
    M_CPU_PER_CHECK=$(awk -v t=$((ticksB - ticksA)) -v hz="$CLK_TCK" -v c="$M_SERVED" 'BEGIN { printf "%.3f", c ? 1000 * t / hz / c : 0 }')
    # Bursts: runs of samples where the counter grew. Cycle duration is measured from the last
    # quiet sample before the burst to the last growing sample, so it is an upper bound
    # (resolution 0.25 s). Only bursts that start and end inside the window are counted.
    read -r M_CYCLES M_PER_CYCLE M_CYCLE_S M_PERIOD_S < <(awk '
        NR > 1 {
            grow = $2 > prev
            if (!grow) quiet = 1
            if (grow && !inb && quiet) { inb = 1; bstart = prevt; bcount = 0 }
            if (grow && inb) { bcount += $2 - prev; bend = $1 }
            if (!grow && inb) {
                inb = 0; cycles++; total += bcount; dur += bend - bstart
                if (lastStart) { per += bstart - lastStart; gaps++ }
                lastStart = bstart
            }
        }
        { prev = $2; prevt = $1 }
        END {
            if (cycles) printf "%d %.0f %.2f %s\n", cycles, total / cycles, dur / cycles / 1e6, gaps ? sprintf("%.2f", per / gaps / 1e6) : "n/a"
            else print "0 0 0 n/a"
        }' "$dir/timeline")
    log "  cpu ${M_CPU}%, hwm $(mib "$M_HWM") MiB, answered $M_SERVED, failed lines $M_FAILED, cycles $M_CYCLES x $M_PER_CYCLE checks, ${M_CYCLE_S} s each, every ${M_PERIOD_S} s"
}

# =============================================================================================
log "work dir $WORK; $PLACEMENT; CLK_TCK $CLK_TCK; $MONIT_VERSION"
log "load average at start: $(</proc/loadavg)"
busy=$(awk '{ print ($1 > 0.5) }' /proc/loadavg)
((busy)) && log "WARNING: the machine is not idle; CPU figures may be skewed"

# --- 1. idle ----------------------------------------------------------------------------------
IDLE_TARGET="none (connection refused)"
if port_free 8080; then
    # A real target on 8080, as in the shipped config; 22 stays whatever it is on this machine.
    "${PIN_OTHERS[@]}" "$FAKE_APACHE" --listen 127.0.0.1:8080 --control 127.0.0.1:$((BENCH_PORT + 99)) \
        --log "$WORK/fake_apache-8080.log" &
    IDLE_SERVER=$!
    PIDS+=("$IDLE_SERVER")
    wait_port 8080
    IDLE_TARGET="fake_apache"
else
    log "port 8080 is in use: the idle probes hit whatever listens there"
    IDLE_TARGET="whatever listens on 8080"
fi
mkdir -p "$WORK/monit-idle"
{
    monitrc_head "$WORK/monit-idle"
    cat <<'EOF'
check host apache with address 127.0.0.1
  if failed port 8080 protocol http request "/server-status?auto" and content = "BusyWorkers" with timeout 2 seconds then alert
check host ssh with address 127.0.0.1
  if failed port 22 with timeout 2 seconds then alert
EOF
} >"$WORK/monit-idle/monitrc"
chmod 600 "$WORK/monit-idle/monitrc"
log "idle: watchdog (config/watchdog.toml, --dry-run) and monit (2 checks), ${IDLE_SECONDS} s"
(cd "$ROOT" && exec "${PIN_MEASURED[@]}" "$WATCHDOG" --log-format json run --dry-run --config config/watchdog.toml) \
    2>"$WORK/watchdog-idle.log" &
IDLE_W=$!
PIDS+=("$IDLE_W")
"${PIN_MEASURED[@]}" monit -I -c "$WORK/monit-idle/monitrc" >"$WORK/monit-idle/stdout.log" 2>&1 &
IDLE_M=$!
PIDS+=("$IDLE_M")
sleep "$IDLE_SECONDS"
kill -0 "$IDLE_W" 2>/dev/null || die "idle watchdog exited: $(tail -n5 "$WORK/watchdog-idle.log")"
kill -0 "$IDLE_M" 2>/dev/null || die "idle monit exited: $(tail -n5 "$WORK/monit-idle/stdout.log")"
expect_comm "$IDLE_W" watchdog
expect_comm "$IDLE_M" monit
IW_RSS=$(status_kb "$IDLE_W" VmRSS) IW_HWM=$(status_kb "$IDLE_W" VmHWM) IW_THREADS=$(threads "$IDLE_W")
IM_RSS=$(status_kb "$IDLE_M" VmRSS) IM_HWM=$(status_kb "$IDLE_M" VmHWM) IM_THREADS=$(threads "$IDLE_M")
stop_pid "$IDLE_W"
stop_pid "$IDLE_M"
[[ -n ${IDLE_SERVER:-} ]] && stop_pid "$IDLE_SERVER"
log "  watchdog rss $(mib "$IW_RSS") MiB (hwm $(mib "$IW_HWM")), monit rss $(mib "$IM_RSS") MiB (hwm $(mib "$IM_HWM"))"

# --- servers for the load runs ------------------------------------------------------------------
for ((s = 0; s < BENCH_SERVERS; s++)); do
    SERVICE_PORTS+=($((BENCH_PORT + s)))
    CONTROL_PORTS+=($((BENCH_PORT + 100 + s)))
    start_fake_apache "$((BENCH_PORT + s))" "$((BENCH_PORT + 100 + s))"
done
log "$BENCH_SERVERS fake_apache servers on 127.0.0.1:${SERVICE_PORTS[0]}-${SERVICE_PORTS[-1]}"

# --- 2. watchdog under load ------------------------------------------------------------------
declare -A W
for n in $BENCH_SIZES; do
    run_watchdog_load "$n"
    for k in CPU CPU_PER_CHECK HWM RSS THREADS CHECKS P50 P99 MAX SERVED UNANSWERED DOWNS ERRORS STARTUP; do
        v="R_$k"
        W[$n,$k]=${!v}
    done
    sleep 2
done

# --- 3. monit under load -------------------------------------------------------------------------
MONIT_SIZES=$MONIT_CHECKS
[[ $MONIT_10K == 1 ]] && MONIT_SIZES="$MONIT_SIZES 10000"
declare -A M
for n in $MONIT_SIZES; do
    run_monit_load "$n"
    for k in CPU CPU_PER_CHECK HWM RSS THREADS SERVED FAILED CYCLES PER_CYCLE CYCLE_S PERIOD_S; do
        v="M_$k"
        M[$n,$k]=${!v}
    done
done

# --- summary ---------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }
yes_no() { awk -v v="$1" -v lim="$2" 'BEGIN { print (v + 0 < lim + 0) ? "yes" : "NO" }'; }
echo
echo "## uptime-watchdog benchmark"
echo
echo "commit $REV; $(uname -sr), $NCPU CPUs, $PLACEMENT; $MONIT_VERSION; window ${BENCH_SECONDS} s, interval ${BENCH_INTERVAL} s, ${BENCH_SERVERS} fake_apache servers"
echo
echo "### 1. Idle (after ${IDLE_SECONDS} s; 8080 target: $IDLE_TARGET)"
echo
echo "| | VmRSS MiB | VmHWM MiB | threads |"
echo "|---|---:|---:|---:|"
echo "| watchdog (config/watchdog.toml, 2 probes) | $(mib "$IW_RSS") | $(mib "$IW_HWM") | $IW_THREADS |"
echo "| monit (2 checks) | $(mib "$IM_RSS") | $(mib "$IM_HWM") | $IM_THREADS |"
echo "| ratio watchdog/monit | $(ratio "$IW_RSS" "$IM_RSS") | $(ratio "$IW_HWM" "$IM_HWM") | |"
echo
echo "Target idle RSS < 6 MiB: $(yes_no "$(mib "$IW_RSS")" 6) ($(mib "$IW_RSS") MiB)"
echo
echo "### 2-3. Load: http checks every ${BENCH_INTERVAL} s (CPU and RSS over the ${BENCH_SECONDS} s window)"
echo
echo "| | checks/s answered | CPU % of 1 core | CPU ms/check | VmRSS MiB (end) | VmHWM MiB | checks (lateness) | p50 ms | p99 ms | max ms | unanswered | probes down | errors | startup s |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for n in $BENCH_SIZES; do
    rate=$(awk -v c="${W[$n,SERVED]}" -v w="$BENCH_SECONDS" 'BEGIN { printf "%.0f", c / w }')
    echo "| watchdog, $n probes | $rate | ${W[$n,CPU]} | ${W[$n,CPU_PER_CHECK]} | $(mib "${W[$n,RSS]}") | $(mib "${W[$n,HWM]}") | ${W[$n,CHECKS]} | ${W[$n,P50]} | ${W[$n,P99]} | ${W[$n,MAX]} | ${W[$n,UNANSWERED]} | ${W[$n,DOWNS]} | ${W[$n,ERRORS]} | ${W[$n,STARTUP]} |"
done
for n in $MONIT_SIZES; do
    rate=$(awk -v c="${M[$n,SERVED]}" -v w="$BENCH_SECONDS" 'BEGIN { printf "%.0f", c / w }')
    echo "| monit, $n checks | $rate | ${M[$n,CPU]} | ${M[$n,CPU_PER_CHECK]} | $(mib "${M[$n,RSS]}") | $(mib "${M[$n,HWM]}") | – | – | – | – | ${M[$n,FAILED]} failed | – | – | – |"
done
echo
for n in $MONIT_SIZES; do
    echo "monit, $n checks: ${M[$n,CYCLES]} full cycles seen in the window, ~${M[$n,PER_CYCLE]} checks per cycle, each cycle ~${M[$n,CYCLE_S]} s (upper bound, 0.25 s resolution), a cycle every ${M[$n,PERIOD_S]} s (set daemon ${BENCH_INTERVAL})."
done
if [[ $MONIT_10K != 1 ]]; then
    n=$MONIT_CHECKS
    if ((${M[$n,CYCLES]} > 0)); then
        proj="from the $n-check run a 10,000-check cycle would take ~$(awk -v c="${M[$n,CYCLE_S]}" -v n="$n" 'BEGIN { printf "%.1f", c * 10000 / n }') s"
    else
        proj="no full cycle was seen in the window (make BENCH_SECONDS longer)"
    fi
    echo "monit, 10000 checks: not run (MONIT_10K=1 to run it). monit checks serially; $proj."
fi
echo
n=$MONIT_CHECKS
if [[ -n ${W[$n,CPU]:-} ]]; then
    echo "Ratios at $n, watchdog/monit: CPU per check $(ratio "${W[$n,CPU_PER_CHECK]}" "${M[$n,CPU_PER_CHECK]}"), peak RSS $(ratio "${W[$n,HWM]}" "${M[$n,HWM]}"), CPU % $(ratio "${W[$n,CPU]}" "${M[$n,CPU]}") (monit's rate is lower: its period is interval + cycle time)."
fi
if [[ -n ${W[10000,P99]:-} ]]; then
    echo "Target 10,000 probes, p99 lateness < 50 ms on one core: $(yes_no "${W[10000,P99]}" 50) (p99 ${W[10000,P99]} ms, CPU ${W[10000,CPU]} % of CPU 0)."
fi
echo
echo "Load average at the end: $(</proc/loadavg) (anything else running skews the CPU figures)."
echo "unanswered = checks the watchdog started minus requests the servers answered during its run (in-flight checks cancelled at stop count here); probes down = \"state changed\" lines to down; errors = ERROR lines in the watchdog log."
