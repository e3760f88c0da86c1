#!/usr/bin/env bash
# stop.sh PIDFILE: monit's stop program, the same as the watchdog's signal action: SIGTERM the pid
# in PIDFILE, wait up to 2 s for it to exit, then SIGKILL (a SIGSTOPped process ignores TERM until
# continued; KILL works). Returns once the process is gone (or a zombie, which the subreaper reaps).
{ pid=$(<"$1"); } 2>/dev/null || exit 0
[[ $pid =~ ^[0-9]+$ ]] || exit 0
exec {nap}<> <(:) # `read -t` on this fd is a sleep without a fork
gone() {
    local st
    { st=$(<"/proc/$pid/stat"); } 2>/dev/null || return 0
    [[ ${st##*) } == Z* ]]
}
us() { echo "${EPOCHREALTIME/./}"; }
kill -TERM "$pid" 2>/dev/null || exit 0
deadline=$(($(us) + 2000000))
while (($(us) < deadline)); do
    gone && exit 0
    read -r -t 0.01 -u "$nap" || :
done
kill -KILL "$pid" 2>/dev/null
deadline=$(($(us) + 1000000))
while (($(us) < deadline)) && ! gone; do read -r -t 0.01 -u "$nap" || :; done
exit 0
