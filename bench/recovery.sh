#!/usr/bin/env bash
# bench/recovery.sh: time to recover, watchdog vs monit, side by side ("Prove it against monit").
#
# ONE COMMAND (root, Debian; ~15 minutes at the defaults on the 2-core CI machine):
#   bench/recovery.sh                 # RUNS=5 runs of every scenario per watchdog, then footprint
#   RUNS=1 FOOT_SECONDS=10 bench/recovery.sh   # quick smoke (~3 minutes)
#   BENCH_KEEP=1 bench/recovery.sh    # keep configs and logs (JSON watchdog logs, monit logs)
#   FOOT_ONLY=1 FOOT_RUNS=3 bench/recovery.sh  # footprint (5.) alone, 3 alternating runs
# Knobs: FOOT_ONLY (0; 1 skips scenarios 1-4), RUNS (5), FOOT_SECONDS (60, the footprint window), FOOT_RUNS (1), BENCH_PORT (18600:
# services BENCH_PORT.., control ports BENCH_PORT+100.., monit httpd BENCH_PORT+300),
# MAX_WAIT (120 s per recovery), BENCH_BUILD (1; 0 skips `cargo build`), RESULTS (bench/RESULTS.md).
#
# WHAT
#   Installs monit if missing (apt-get), builds the release binaries, then for each scenario runs
#   both watchdogs on the same fake apache(s), ALTERNATING them (run 1 watchdog first, run 2 monit
#   first, ...), and measures from the moment the fault is injected:
#     restarted = the pidfile holds a new, live pid (polled every 10 ms),
#     serving   = GET / answers 200 again (polled every 20 ms)     (bench/recovery/measure.py).
#   1. crash:  kill -9 the fake apache. watchdog: an http probe (variant "http"), and, if the build
#              has it, a `kind = "process"` probe on the pidfile (variant "process", pidfd: no
#              fail_after wait). monit: `check process ... with pidfile` + the http test.
#   2. hang:   kill -STOP the fake apache (it ignores TERM: the stop must escalate to KILL).
#   3. 504:    the fake apache answers every request with 504.
#   4. isolation: 20 fake apaches, every one watched and restarted the same way; the first 5 hang
#              (mode hang, also after a restart: they come back hung), then service 20 crashes
#              (kill -9): its recovery, next to the same crash with all 20 healthy. monit's loop
#              is serial (each hung check costs its timeout); the watchdog's probes are not.
#              The crash comes at a random moment 8-20 s after the start (any phase of monit's
#              cycle). The watchdog runs its http + process probes here (monit's equivalent: check process
#              + http test).
#   5. footprint: 20 and 200 http checks every 1 s against 10 healthy fake apaches (no actions),
#              over FOOT_SECONDS: VmRSS, VmHWM, CPU time (utime+stime, /proc/PID/stat) and CPU per
#              check (CPU time / requests the servers answered in the window).
#   Prints min / median / max per figure and the ratio watchdog/monit of the medians, and writes
#   RESULTS (machine, load, date, versions, command, tables).
#
# EQUIVALENT CONFIGS
#   Both: a check every 1 s, down after 3 failed checks, restart = SIGTERM, wait up to 2 s, SIGKILL,
#   then start the daemonizing fake apache (start programs are pinned to CPU 1 with taskset).
#   monit timeouts are whole seconds and the watchdog requires timeout < interval, so:
#   monit `set daemon 1`, `with timeout 1 seconds for 3 cycles then restart`, stop program
#   bench/recovery/stop.sh (TERM, 2 s, KILL), start program `with timeout 1 seconds` (monit
#   pauses a process's connection tests until it is as old as its start timeout: 1 s here, like
#   the watchdog's restart_grace; at monit's default 30 s no http test would run for the first
#   30 s after a (re)start); watchdog interval "1s", timeout "900ms",
#   fail_after 3, recover_after 1, restart_grace "1s", `[action] kind = "signal"` with
#   kill_after "2s", rule budget "100 per 10m" (so the budget never interferes).
#
# FAIRNESS
#   - This script re-executes itself under bench/recovery/reaper.py, a child subreaper
#     (PR_SET_CHILD_SUBREAPER) that reaps every orphan at once. Daemonized servers started by
#     either watchdog are re-parented to it instead of PID 1 (not systemd here, it reaps late: a
#     killed server would linger as a zombie, which slows monit's restarts). Same for both.
#   - The watchdog under test (watchdog or monit) is pinned to CPU 0 (`taskset -c 0`); this
#     script, the fake apaches and the measuring helper to the other CPUs.
#   - Everything on 127.0.0.1; every process started (including fake apaches a watchdog started)
#     is stopped by PID at exit. Work dir /tmp/watchdog-recovery.XXXXXX, removed unless BENCH_KEEP=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPERS=$ROOT/bench/recovery
if [[ -z ${RECOVERY_UNDER_REAPER:-} ]]; then
    export RECOVERY_UNDER_REAPER=1
    knobs=""
    for v in FOOT_ONLY RUNS FOOT_SECONDS FOOT_RUNS BENCH_PORT MAX_WAIT BENCH_BUILD BENCH_KEEP RESULTS; do
        [[ -n ${!v:-} ]] && knobs+="$v=${!v} "
    done
    export RECOVERY_CMD="${RECOVERY_CMD:-${knobs}bench/recovery.sh${*:+ $*}}"
    exec python3 "$HELPERS/reaper.py" bash "${BASH_SOURCE[0]}" "$@"
fi

FOOT_ONLY=${FOOT_ONLY:-0}
RUNS=${RUNS:-5}
((FOOT_ONLY)) && RUNS=0
FOOT_SECONDS=${FOOT_SECONDS:-60}
FOOT_RUNS=${FOOT_RUNS:-1}
BENCH_PORT=${BENCH_PORT:-18600}
MAX_WAIT=${MAX_WAIT:-120}
RESULTS=${RESULTS:-$ROOT/bench/RESULTS.md}
WATCHDOG=$ROOT/target/release/watchdog
FAKE_APACHE=$ROOT/target/release/examples/fake_apache
CLK_TCK=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/watchdog-recovery.XXXXXX)
PIDS=()
START_EPOCH=$EPOCHSECONDS

log() { printf '[recovery %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- stopping things, by PID ---------------------------------------------------------------------
stop_pid() { # stop_pid PID [GRACE_TENTHS]: SIGCONT+SIGTERM, wait, SIGKILL
    local pid=$1 grace=${2:-50} i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace; i++)); do
        is_live "$pid" || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
is_live() { # alive and not a zombie
    local st
    { read -r st <"/proc/$1/stat"; } 2>/dev/null || return 1
    [[ ${st##*) } != Z* ]]
}
# Fake apaches of a case dir: by their pidfiles, then any fake_apache whose command line names
# this dir (one whose start lost a race and never wrote its pidfile).
stop_servers() { # stop_servers DIR
    local f pid cmd pids=()
    for f in "$1"/fa*.pid; do
        [[ -e $f ]] || continue
        { read -r pid <"$f"; } 2>/dev/null || continue
        [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == fake_apache ]] && pids+=("$pid")
    done
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == fake_apache ]] || continue
        cmd=$(tr '\0' ' ' <"$f" 2>/dev/null) || continue
        [[ $cmd == *"$1/"* ]] && pids+=("$pid")
    done
    for pid in "${pids[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do stop_pid "$pid" 20; done
}
cleanup() {
    local pid d
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    for d in "$WORK"/*/; do [[ -d $d ]] && stop_servers "${d%/}"; done
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then log "kept configs and logs in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- CPU placement ---------------------------------------------------------------------------------
NCPU=$(nproc)
TASKSET=$(command -v taskset || true)
if ((NCPU >= 2)) && [[ -n $TASKSET ]]; then
    PIN_MEASURED=("$TASKSET" -c 0)
    PIN_OTHERS=("$TASKSET" -c "1-$((NCPU - 1))")
    "$TASKSET" -pc "1-$((NCPU - 1))" $$ >/dev/null
    PLACEMENT="watchdog/monit on CPU 0; this script, the fake apaches (also those started by a restart) and the measuring helper on CPU 1-$((NCPU - 1))"
else
    PIN_MEASURED=()
    PIN_OTHERS=()
    PLACEMENT="1 CPU or no taskset: nothing pinned"
fi

# --- prerequisites -------------------------------------------------------------------------------
if ! command -v monit >/dev/null; then
    log "installing monit (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends monit >/dev/null
fi
if [[ ${BENCH_BUILD:-1} == 1 || ! -x $WATCHDOG || ! -x $FAKE_APACHE ]]; then
    # Examples first, the watchdog last and alone: built together, the examples' dev-dependency
    # features (tokio's multi-thread runtime, test-util) would end up in the measured binary.
    log "building release binaries (cargo build --release --examples; cargo build --release --bin watchdog)"
    (cd "$ROOT" && cargo build --release --examples 2>&1 | tail -n 3 >&2 && cargo build --release --bin watchdog 2>&1 | tail -n 3 >&2) || die "build failed"
fi
[[ -x $WATCHDOG && -x $FAKE_APACHE ]] || die "missing $WATCHDOG or $FAKE_APACHE"
MONIT=$(command -v monit)
MONIT_VERSION=$(monit -V | head -n1)
WATCHDOG_VERSION=$("$WATCHDOG" --version)
# How much of the symbol order (build.rs) the binary still matches: a stale list costs RSS.
ORDER_FILE=$ROOT/bench/symbol-order.txt
if [[ -s $ORDER_FILE ]] && command -v nm >/dev/null; then
    ORDER_MATCH="$(comm -12 <(sort -u "$ORDER_FILE") <(nm "$WATCHDOG" | awk '{ print $NF }' | sort -u) | wc -l) of $(sort -u "$ORDER_FILE" | wc -l) functions of bench/symbol-order.txt are in the binary"
else
    ORDER_MATCH="not checked (no bench/symbol-order.txt or no nm)"
fi
log "symbol order: $ORDER_MATCH"
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] && REV="$REV (+ uncommitted changes in the tree)"
LOAD_START=$(</proc/loadavg)
UPTIME_START=$(uptime)

# Is `kind = "process"` in this build?
mkdir -p "$WORK/probe-check"
cat >"$WORK/probe-check/w.toml" <<EOF
[watchdog]
state_dir = "$WORK/probe-check/state"
[[probe]]
name = "apache-proc"
kind = "process"
pidfile = "$WORK/probe-check/fa.pid"
[[rule]]
probe = "apache-proc"
when = "down"
do = ["restart"]
[action.restart]
kind = "signal"
pidfile = "$WORK/probe-check/fa.pid"
start = ["/bin/true"]
EOF
if "$WATCHDOG" validate --config "$WORK/probe-check/w.toml" >/dev/null 2>&1; then HAVE_PROC=1; else HAVE_PROC=0; fi

# --- fake apaches --------------------------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
sport() { echo $((BENCH_PORT + $1)); }
cport() { echo $((BENCH_PORT + 100 + $1)); }
fa_argv() { # fa_argv DIR I MODE: the daemonizing start command of service I (one word per line)
    printf '%s\n' "${PIN_OTHERS[@]}" "$FAKE_APACHE" --listen "127.0.0.1:$(sport "$2")" \
        --control "127.0.0.1:$(cport "$2")" --pidfile "$1/fa$2.pid" --log "$1/fa$2.log" --daemon
    [[ $3 == healthy ]] || printf '%s\n' --mode "$3"
}
wait_served() { # wait_served PIDFILE PORT: up to 10 s for the pidfile and a listener
    local i
    for ((i = 0; i < 200; i++)); do
        [[ -s $1 ]] && port_open "$2" && return 0
        sleep 0.05
    done
    die "no fake apache on 127.0.0.1:$2 (pidfile $1) after 10 s"
}
wait_ports_free() { # wait_ports_free N: service and control ports 1..N closed (up to 10 s)
    local i j busy
    for ((i = 0; i < 100; i++)); do
        busy=0
        for ((j = 1; j <= $1; j++)); do
            if port_open "$(sport "$j")" || port_open "$(cport "$j")"; then busy=1; break; fi
        done
        ((busy)) || return 0
        sleep 0.1
    done
    die "ports of an earlier case are still open"
}
mode_of() { # mode_of I HUNG: services 1..HUNG hang
    if (($1 <= $2)); then echo hang; else echo healthy; fi
}

# --- configs -------------------------------------------------------------------------------------
toml_argv() { # the lines of stdin as a TOML array of strings
    local first=1 w
    printf '['
    while IFS= read -r w; do
        ((first)) || printf ', '
        first=0
        printf '"%s"' "$w"
    done
    printf ']'
}
write_watchdog() { # write_watchdog DIR N HUNG VARIANT(http|process|both)
    local dir=$1 n=$2 hung=$3 variant=$4 i
    {
        printf '[watchdog]\nstate_dir = "%s/state"\n\n' "$dir"
        printf '[defaults]\ninterval = "1s"\ntimeout = "900ms"\nfail_after = 3\nrecover_after = 1\nrestart_grace = "1s"\n'
        for ((i = 1; i <= n; i++)); do
            if [[ $variant != process ]]; then
                printf '\n[[probe]]\nname = "fa%d"\nkind = "http"\nurl = "http://127.0.0.1:%d/"\n' "$i" "$(sport "$i")"
                printf '[[rule]]\nprobe = "fa%d"\nwhen = "down"\ndo = ["restart-fa%d"]\nbudget = "100 per 10m"\n' "$i" "$i"
            fi
            if [[ $variant != http ]]; then
                printf '\n[[probe]]\nname = "fa%d-proc"\nkind = "process"\npidfile = "%s/fa%d.pid"\n' "$i" "$dir" "$i"
                printf '[[rule]]\nprobe = "fa%d-proc"\nwhen = "down"\ndo = ["restart-fa%d"]\nbudget = "100 per 10m"\n' "$i" "$i"
            fi
            printf '[action.restart-fa%d]\nkind = "signal"\npidfile = "%s/fa%d.pid"\nsignal = "TERM"\nkill_after = "2s"\nstart = %s\n' \
                "$i" "$dir" "$i" "$(fa_argv "$dir" "$i" "$(mode_of "$i" "$hung")" | toml_argv)"
        done
    } >"$dir/watchdog.toml"
    "$WATCHDOG" validate --config "$dir/watchdog.toml" >"$dir/validate.out" 2>&1 ||
        die "watchdog rejects $dir/watchdog.toml: $(head -n5 "$dir/validate.out")"
}
monit_head() { # monit_head DIR
    printf 'set daemon 1\nset log %s/monit.log\nset pidfile %s/monit.pid\nset statefile %s/monit.state\nset idfile %s/monit.id\n' \
        "$1" "$1" "$1" "$1"
    printf 'set httpd port %d and use address 127.0.0.1\n  allow 127.0.0.1\n\n' $((BENCH_PORT + 300))
}
write_monit() { # write_monit DIR N HUNG
    local dir=$1 n=$2 hung=$3 i
    {
        monit_head "$dir"
        for ((i = 1; i <= n; i++)); do
            printf 'check process fa%d with pidfile %s/fa%d.pid\n' "$i" "$dir" "$i"
            printf '  start program = "%s" with timeout 1 seconds\n' "$(fa_argv "$dir" "$i" "$(mode_of "$i" "$hung")" | paste -sd' ')"
            printf '  stop program = "%s %s/fa%d.pid" with timeout 10 seconds\n' "$HELPERS/stop.sh" "$dir" "$i"
            printf '  if failed host 127.0.0.1 port %d protocol http request "/" with timeout 1 seconds for 3 cycles then restart\n\n' "$(sport "$i")"
        done
    } >"$dir/monitrc"
    chmod 600 "$dir/monitrc"
    "$MONIT" -t -c "$dir/monitrc" >"$dir/validate.out" 2>&1 || die "monit rejects $dir/monitrc: $(head -n5 "$dir/validate.out")"
}

# --- the watchdog under test ------------------------------------------------------------------------
TOOL_PID=
start_tool() { # start_tool TOOL DIR
    if [[ $1 == monit ]]; then
        "${PIN_MEASURED[@]}" "$MONIT" -I -c "$2/monitrc" >"$2/monit.stdout" 2>&1 &
    else
        "${PIN_MEASURED[@]}" "$WATCHDOG" --log-format json run --config "$2/watchdog.toml" 2>"$2/watchdog.log" &
    fi
    TOOL_PID=$!
    PIDS+=("$TOOL_PID")
}
check_tool() { # check_tool TOOL DIR: still running, and it is what we think it is
    local want=$1 logf=$2/watchdog.log
    [[ $1 == monit ]] && logf=$2/monit.stdout
    is_live "$TOOL_PID" || die "$1 exited: $(tail -n5 "$logf")"
    [[ $(cat "/proc/$TOOL_PID/comm" 2>/dev/null) == "$want" ]] || die "pid $TOOL_PID is not $want"
}
stop_tool() { stop_pid "$TOOL_PID" 100; TOOL_PID=; }

# --- one recovery case ----------------------------------------------------------------------------
# case_run TOOL VARIANT FAULT N HUNG SETTLE: N services (1..HUNG hung), fault on service N.
# Sets C_RESTARTED and C_SERVING (seconds or "timeout").
CASE_NO=0
case_run() {
    local tool=$1 variant=$2 fault=$3 n=$4 hung=$5 settle=$6 dir i out
    CASE_NO=$((CASE_NO + 1))
    dir=$WORK/$(printf '%03d' "$CASE_NO")-$fault-n$n-h$hung-$tool-$variant
    mkdir -p "$dir/state"
    wait_ports_free "$n"
    for ((i = 1; i <= n; i++)); do
        mapfile -t argv < <(fa_argv "$dir" "$i" "$(mode_of "$i" "$hung")")
        "${argv[@]}"
    done
    for ((i = 1; i <= n; i++)); do wait_served "$dir/fa$i.pid" "$(sport "$i")"; done
    if [[ $tool == monit ]]; then write_monit "$dir" "$n" "$hung"; else write_watchdog "$dir" "$n" "$hung" "$variant"; fi
    start_tool "$tool" "$dir"
    if [[ $settle == *+* ]]; then # BASE+SPREAD: a random point in that range (the phase of monit's cycle)
        settle=$(awk -v b="${settle%+*}" -v s="${settle#*+}" -v r="$RANDOM" 'BEGIN { printf "%.2f", b + s * r / 32767 }')
    fi
    sleep "$settle"
    check_tool "$tool" "$dir"
    out=$(python3 "$HELPERS/measure.py" "$fault" "$dir/fa$n.pid" "$(sport "$n")" "$(cport "$n")" "$MAX_WAIT") ||
        die "measure failed in $dir"
    read -r C_RESTARTED C_SERVING <<<"$out"
    echo "$out" >"$dir/result"
    check_tool "$tool" "$dir"
    stop_tool
    stop_servers "$dir"
}

# =================================================================================================
log "work dir $WORK; $NCPU CPUs; $PLACEMENT"
log "$MONIT_VERSION; $WATCHDOG_VERSION (commit $REV); process probe in this build: $((HAVE_PROC)) "
log "load at start: $UPTIME_START"

# Cases: "label|tool|variant|fault|n|hung|settle". The watchdog's variants per scenario.
WD_CRASH="http"
((HAVE_PROC)) && WD_CRASH="http process"
WD_ISO=http
((HAVE_PROC)) && WD_ISO=both
CASES=()
# The fault comes at a random moment 3-4 s after the start (settle "3+1"): both tools check on a
# 1 s period that is phase-locked to their start, so a fixed delay would always hit the same
# point of their cycles (measured: monit 0.97-1.00 s for every crash with a fixed 3 s).
for v in $WD_CRASH; do CASES+=("crash|watchdog|$v|crash|1|0|3+1"); done
CASES+=("crash|monit|-|crash|1|0|3+1")
CASES+=("hang|watchdog|http|stop|1|0|3+1" "hang|monit|-|stop|1|0|3+1")
CASES+=("504|watchdog|http|504|1|0|3+1" "504|monit|-|504|1|0|3+1")
CASES+=("iso-base|watchdog|$WD_ISO|crash|20|0|4+1" "iso-base|monit|-|crash|20|0|4+1")
# With 5 hung services monit's cycle takes ~6 s (a whole one with a restart of the hung ones):
# the crash comes at a random moment 8-20 s after the start, so it falls at any phase of it.
CASES+=("iso-hung|watchdog|$WD_ISO|crash|20|5|8+12" "iso-hung|monit|-|crash|20|5|8+12")

declare -A RES # RES[label,tool,variant,restarted|serving] = "v1 v2 ..."
for ((r = 1; r <= RUNS; r++)); do
    # Alternate: odd runs watchdog first, even runs monit first, within each scenario.
    ordered=()
    for label in crash hang 504 iso-base iso-hung; do
        wd=() mo=()
        for c in "${CASES[@]}"; do
            IFS='|' read -r l t _ <<<"$c"
            [[ $l == "$label" ]] || continue
            if [[ $t == monit ]]; then mo+=("$c"); else wd+=("$c"); fi
        done
        if ((r % 2)); then ordered+=("${wd[@]}" "${mo[@]}"); else ordered+=("${mo[@]}" "${wd[@]}"); fi
    done
    for c in "${ordered[@]}"; do
        IFS='|' read -r label tool variant fault n hung settle <<<"$c"
        case_run "$tool" "$variant" "$fault" "$n" "$hung" "$settle"
        log "run $r/$RUNS $label $tool$([[ $variant == - ]] || echo " ($variant)") ($fault, $n services, $hung hung): restarted $C_RESTARTED s, serving $C_SERVING s"
        k="$label,$tool,$variant"
        RES[$k,restarted]+="$C_RESTARTED "
        RES[$k,serving]+="$C_SERVING "
    done
done

# --- 5. footprint ---------------------------------------------------------------------------------
cpu_ticks() {
    local stat rest f
    stat=$(<"/proc/$1/stat")
    rest=${stat##*) }
    read -r -a f <<<"$rest"
    echo "${f[11]} ${f[12]}" # utime stime
}
status_kb() {
    local line
    while read -r line; do
        if [[ $line == "$2:"* ]]; then line=${line#*:}; line=${line% kB}; echo $((line)); return; fi
    done <"/proc/$1/status"
    echo 0
}
served_total() { # requests answered by services 1..N (fake_apache /stats on the control ports)
    local total=0 i resp fd
    for ((i = 1; i <= $1; i++)); do
        exec {fd}<>"/dev/tcp/127.0.0.1/$(cport "$i")"
        printf 'GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&"$fd"
        resp=""
        IFS= read -r -d '' -t 5 resp <&"$fd" || true
        exec {fd}>&-
        [[ $resp =~ \"requests\":([0-9]+) ]] || die "no request count from control port $(cport "$i")"
        total=$((total + BASH_REMATCH[1]))
    done
    echo "$total"
}
FOOT_SERVERS=10
FDIR=$WORK/footprint
mkdir -p "$FDIR"
wait_ports_free "$FOOT_SERVERS"
for ((i = 1; i <= FOOT_SERVERS; i++)); do
    "${PIN_OTHERS[@]}" "$FAKE_APACHE" --listen "127.0.0.1:$(sport "$i")" --control "127.0.0.1:$(cport "$i")" \
        --pidfile "$FDIR/fa$i.pid" --workers 32 --backlog 256 --log "$FDIR/fa$i.log" &
    PIDS+=($!)
done
for ((i = 1; i <= FOOT_SERVERS; i++)); do wait_served "$FDIR/fa$i.pid" "$(sport "$i")"; done
declare -A FOOT # FOOT[checks,tool,figure] = "v ..."
foot_run() { # foot_run TOOL CHECKS
    local tool=$1 n=$2 dir="$FDIR/$1-$2-$RANDOM" i u0 u1 k0 k1 s0 s1
    mkdir -p "$dir/state"
    if [[ $tool == monit ]]; then
        {
            monit_head "$dir"
            for ((i = 1; i <= n; i++)); do
                printf 'check host p%d with address 127.0.0.1\n  if failed port %d protocol http request "/p/%d" with timeout 1 seconds then alert\n' \
                    "$i" "$(sport $(((i - 1) % FOOT_SERVERS + 1)))" "$i"
            done
        } >"$dir/monitrc"
        chmod 600 "$dir/monitrc"
        "$MONIT" -t -c "$dir/monitrc" >/dev/null 2>&1 || die "monit rejects $dir/monitrc"
    else
        {
            printf '[watchdog]\nstate_dir = "%s/state"\n\n[defaults]\ninterval = "1s"\ntimeout = "900ms"\nfail_after = 3\nrecover_after = 1\n' "$dir"
            for ((i = 1; i <= n; i++)); do
                printf '\n[[probe]]\nname = "p%d"\nkind = "http"\nurl = "http://127.0.0.1:%d/p/%d"\n' "$i" "$(sport $(((i - 1) % FOOT_SERVERS + 1)))" "$i"
            done
        } >"$dir/watchdog.toml"
        "$WATCHDOG" validate --config "$dir/watchdog.toml" >/dev/null 2>&1 || {
            "$WATCHDOG" validate --config "$dir/watchdog.toml" 2>&1 | grep -v 'no rule acts' | head -n5 >&2
            die "watchdog rejects $dir/watchdog.toml"
        }
    fi
    start_tool "$tool" "$dir"
    sleep 3 # start-up and the watchdog's start jitter
    check_tool "$tool" "$dir"
    read -r u0 k0 <<<"$(cpu_ticks "$TOOL_PID")"
    s0=$(served_total "$FOOT_SERVERS")
    sleep "$FOOT_SECONDS"
    read -r u1 k1 <<<"$(cpu_ticks "$TOOL_PID")"
    s1=$(served_total "$FOOT_SERVERS")
    check_tool "$tool" "$dir"
    local rss hwm cpu_ms per user_per sys_per
    rss=$(status_kb "$TOOL_PID" VmRSS)
    hwm=$(status_kb "$TOOL_PID" VmHWM)
    stop_tool
    cpu_ms=$(awk -v t=$((u1 - u0 + k1 - k0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", 1000 * t / hz }')
    per=$(awk -v c="$cpu_ms" -v s=$((s1 - s0)) 'BEGIN { printf "%.3f", s ? c / s : 0 }')
    user_per=$(awk -v t=$((u1 - u0)) -v hz="$CLK_TCK" -v s=$((s1 - s0)) 'BEGIN { printf "%.3f", s ? 1000 * t / hz / s : 0 }')
    sys_per=$(awk -v t=$((k1 - k0)) -v hz="$CLK_TCK" -v s=$((s1 - s0)) 'BEGIN { printf "%.3f", s ? 1000 * t / hz / s : 0 }')
    FOOT[$n,$tool,rss]+="$(awk -v k="$rss" 'BEGIN { printf "%.2f", k / 1024 }') "
    FOOT[$n,$tool,hwm]+="$(awk -v k="$hwm" 'BEGIN { printf "%.2f", k / 1024 }') "
    FOOT[$n,$tool,cpu]+="$cpu_ms "
    FOOT[$n,$tool,per]+="$per "
    FOOT[$n,$tool,user]+="$user_per "
    FOOT[$n,$tool,sys]+="$sys_per "
    FOOT[$n,$tool,checks]+="$((s1 - s0)) "
    log "footprint $tool $n checks: rss $rss kB, hwm $hwm kB, cpu $cpu_ms ms in ${FOOT_SECONDS} s, $((s1 - s0)) checks answered, $per ms/check ($user_per user + $sys_per system)"
}
# The floor (bench/recovery/floor.c): a C client that makes only the system calls of a check,
# all the checks of a second at once. What it costs is the kernel's work for the connections and
# one wake-up a second: no watchdog that opens a connection per check can cost less.
FLOOR=""
if command -v gcc >/dev/null && gcc -O2 -o "$WORK/floor" "$HELPERS/floor.c" 2>"$WORK/floor-build.log"; then
    FLOOR=$WORK/floor
else
    log "no C compiler (gcc): the floor of the footprint table is not measured"
fi
floor_run() { # floor_run CHECKS
    local n=$1 line
    line=$("${PIN_MEASURED[@]}" "$FLOOR" "$BENCH_PORT" "$FOOT_SERVERS" "$n" "$n" "$FOOT_SECONDS") ||
        die "the floor client failed: $line"
    [[ $line =~ user_ms_per_check\ ([0-9.]+)\ sys_ms_per_check\ ([0-9.]+) ]] || die "floor: $line"
    FOOT[$n,floor,per]+="$(awk -v u="${BASH_REMATCH[1]}" -v k="${BASH_REMATCH[2]}" 'BEGIN { printf "%.3f", u + k }') "
    log "footprint floor $n checks: $line"
}
for ((r = 1; r <= FOOT_RUNS; r++)); do
    for n in 20 200; do
        if (((r + n / 200) % 2)); then foot_run watchdog "$n"; foot_run monit "$n"; else foot_run monit "$n"; foot_run watchdog "$n"; fi
        [[ -z $FLOOR ]] || floor_run "$n"
    done
done
for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
PIDS=()
LOAD_END=$(</proc/loadavg)

# --- report ---------------------------------------------------------------------------------------
stats() { # stats "v1 v2 ..." [DECIMALS]: "min|median|max" (timeouts excluded and counted)
    tr ' ' '\n' <<<"$1" | awk 'NF' | awk -v d="${2:-2}" '
        $1 == "timeout" { t++; next } { v[++n] = $1 }
        END {
            if (n == 0) { printf "-|-|-"; if (t) printf " (%d timeouts)", t; exit }
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { x = v[i]; v[i] = v[j]; v[j] = x }
            med = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
            f = "%." d "f"
            printf f "|" f "|" f, v[1], med, v[n]
            if (t) printf " (%d timeouts)", t
        }'
}
median() { local s; s=$(stats "$1" "${2:-2}"); s=${s#*|}; echo "${s%%|*}"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "n/a"; else printf "%.3f", a / b }'; }
scen_desc() {
    case $1 in
    crash) echo "1. crash (kill -9)" ;;
    hang) echo "2. hang (kill -STOP)" ;;
    504) echo "3. HTTP 504" ;;
    iso-base) echo "4a. crash, 20 healthy services" ;;
    iso-hung) echo "4b. crash, next to 5 hung services" ;;
    esac
}
report() {
    local label v fig w m mo
    echo "# Recovery benchmark: uptime-watchdog vs monit"
    echo
    echo "- date: $(date -u -d "@$START_EPOCH" '+%Y-%m-%d %H:%M UTC') (took $(((EPOCHSECONDS - START_EPOCH) / 60)) min)"
    echo "- machine: $(lscpu | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2; exit }'), nproc $NCPU, $(uname -sr)"
    echo "- load: at start \`$UPTIME_START\`; load average at the end $LOAD_END (other builds share this machine: the figures are noisy)"
    echo "- versions: $MONIT_VERSION; $WATCHDOG_VERSION, commit $REV; process probe in this build: $( ((HAVE_PROC)) && echo yes || echo no); symbol order: $ORDER_MATCH"
    echo "- command: \`$RECOVERY_CMD\` (RUNS=$RUNS, FOOT_SECONDS=$FOOT_SECONDS, FOOT_RUNS=$FOOT_RUNS)"
    echo "- placement: $PLACEMENT; the whole benchmark runs under a child subreaper (bench/recovery/reaper.py) that reaps orphaned servers at once, for both watchdogs"
    echo
    if ((FOOT_ONLY)); then echo "(FOOT_ONLY=1: scenarios 1-4 not run)"; else
    echo "## Recovery (seconds from the fault: restarted = new live pid in the pidfile; serving = HTTP 200 again)"
    echo
    echo "Equivalent configs: check every 1 s, down after 3 failures, restart = TERM, up to 2 s, KILL, start."
    echo "monit: \`set daemon 1\`, \`check process ... with pidfile\` + \`if failed ... protocol http ... with timeout 1 seconds for 3 cycles then restart\`, stop program bench/recovery/stop.sh, start program \`with timeout 1 seconds\` (monit pauses a process's connection tests until the process is as old as the start timeout; 1 s matches the watchdog's restart_grace)."
    echo "watchdog: interval 1s, timeout 900ms (monit timeouts are whole seconds, the watchdog's must be < interval), fail_after 3, recover_after 1, restart_grace 1s, signal action kill_after 2s, budget 100 per 10m."
    echo "Runs alternate the two (odd runs watchdog first). $RUNS runs each; min / median / max."
    echo
    echo "| scenario | figure | watchdog | min | median | max | monit min | median | max | ratio of medians watchdog/monit |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
    for label in crash hang 504 iso-base iso-hung; do
        for fig in restarted serving; do
            mo=${RES[$label,monit,-,$fig]:-}
            for c in "${CASES[@]}"; do
                IFS='|' read -r l t v _ <<<"$c"
                [[ $l == "$label" && $t == watchdog ]] || continue
                w=$(stats "${RES[$label,watchdog,$v,$fig]:-}")
                m=$(stats "$mo")
                echo "| $(scen_desc "$label") | $fig | $v probe$([[ $v == both ]] && echo "s (http + process)") | ${w//|/ | } | ${m//|/ | } | $(ratio "$(median "${RES[$label,watchdog,$v,$fig]:-}")" "$(median "$mo")") |"
            done
        done
    done
    echo
    echo "Isolation (4b vs 4a, serving, medians): watchdog $(median "${RES[iso-hung,watchdog,$WD_ISO,serving]:-}") s vs $(median "${RES[iso-base,watchdog,$WD_ISO,serving]:-}") s; monit $(median "${RES[iso-hung,monit,-,serving]:-}") s vs $(median "${RES[iso-base,monit,-,serving]:-}") s."
    echo "In 4a/4b every one of the 20 services is watched and restarted the same way; services 1-5 hang (mode hang, and they come back hung after each restart); service 20 is killed."
    fi
    echo
    echo "## Footprint (http checks every 1 s against 10 healthy fake apaches, no actions; window ${FOOT_SECONDS} s after 3 s warm-up; $FOOT_RUNS run(s))"
    echo
    echo "| checks | figure | watchdog min | median | max | monit min | median | max | ratio of medians watchdog/monit |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    for n in 20 200; do
        for fig in rss hwm cpu per user sys checks; do
            w=${FOOT[$n,watchdog,$fig]:-}
            m=${FOOT[$n,monit,$fig]:-}
            local name
            case $fig in rss) name="VmRSS MiB (end)" ;; hwm) name="VmHWM MiB" ;; cpu) name="CPU ms (utime+stime) in the window" ;; per) name="CPU ms per check" ;; user) name="... of which user" ;; sys) name="... of which system" ;; checks) name="checks answered in the window" ;; esac
            local d=2
            case $fig in per | user | sys) d=3 ;; cpu | checks) d=0 ;; esac
            ws=$(stats "$w" $d)
            ms=$(stats "$m" $d)
            echo "| $n | $name | ${ws//|/ | } | ${ms//|/ | } | $(ratio "$(median "$w" 3)" "$(median "$m" 3)") |"
        done
    done
    echo
    echo "monit checks serially and sleeps 1 s between cycles, so it may answer fewer than N checks per second; compare CPU per check."
    if [[ -n $FLOOR ]]; then
        echo
        echo "The floor: bench/recovery/floor.c, a C client that makes only the system calls of a check (socket, connect, epoll_ctl, write, read, close) against the same servers, all the checks of a second at once, pinned like the watchdogs. No watchdog that opens a connection per check can cost less."
        echo
        echo "| checks | floor CPU ms per check: min | median | max | monit median | ratio floor/monit | watchdog median | ratio watchdog/floor |"
        echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
        for n in 20 200; do
            local f fs mm wm
            f=${FOOT[$n,floor,per]:-}
            fs=$(stats "$f" 3)
            mm=$(median "${FOOT[$n,monit,per]:-}" 3)
            wm=$(median "${FOOT[$n,watchdog,per]:-}" 3)
            echo "| $n | ${fs//|/ | } | $mm | $(ratio "$(median "$f" 3)" "$mm") | $wm | $(ratio "$wm" "$(median "$f" 3)") |"
        done
        echo
        echo "(The floor's split into user and system time is left out: at its few milliseconds a second, the kernel's tick-based accounting puts whole ticks in one or the other.)"
    fi
}
report | tee "$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
log "wrote $RESULTS"
