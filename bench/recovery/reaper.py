#!/usr/bin/env python3
"""reaper.py CMD [ARGS...]: run CMD as a child subreaper (PR_SET_CHILD_SUBREAPER).

Daemonized servers started by a watchdog (fork, parent exits) are orphans; without a subreaper
they are re-parented to PID 1, which on this machine (not systemd) reaps them late, so a killed
server stays a zombie and a watchdog sees it "running" a while longer. bench/recovery.sh runs
itself under this, so every orphan of either watchdog is reaped here at once, the same for both.
Signals TERM/INT/HUP are forwarded to CMD; the exit status is CMD's.
"""
import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit("reaper.py: prctl(PR_SET_CHILD_SUBREAPER) failed: errno %d" % ctypes.get_errno())
main = os.fork()
if main == 0:
    os.execvp(sys.argv[1], sys.argv[1:])


def forward(signum, _frame):
    try:
        os.kill(main, signum)
    except ProcessLookupError:
        pass


for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, forward)
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        sys.exit(0)
    except InterruptedError:
        continue
    if pid == main:
        sys.exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
