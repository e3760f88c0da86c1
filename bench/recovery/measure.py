#!/usr/bin/env python3
"""measure.py FAULT PIDFILE SERVICE_PORT CONTROL_PORT MAX_WAIT_S

Injects one fault into the fake apache whose pid is in PIDFILE, then times the recovery from
the moment of the injection (CLOCK_MONOTONIC):
  restarted: the pidfile holds another pid than before, and that process is alive (polled every 10 ms);
  serving:   GET http://127.0.0.1:SERVICE_PORT/ answers 200 (polled every 20 ms, 500 ms per try).
FAULT: crash (SIGKILL), stop (SIGSTOP), 504 (POST /mode/status:504 on the control port).
Prints one line: "<restarted_s> <serving_s>", either being "timeout" after MAX_WAIT_S.
"""
import http.client
import os
import signal
import sys
import threading
import time

fault, pidfile, port, cport, max_wait = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])


def read_pid():
    try:
        with open(pidfile) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def http_status(p, path="/", method="GET", timeout=0.5):
    c = http.client.HTTPConnection("127.0.0.1", p, timeout=timeout)
    try:
        c.request(method, path)
        return c.getresponse().status
    except OSError:
        return None
    finally:
        c.close()


old = read_pid()
if old is None or not alive(old):
    sys.exit("measure.py: no live pid in %s" % pidfile)
if http_status(port) != 200:
    sys.exit("measure.py: 127.0.0.1:%d does not answer 200 before the fault" % port)
result = {}


def poll_restarted():
    while time.monotonic() < deadline:
        pid = read_pid()
        if pid is not None and pid != old and alive(pid):
            result["restarted"] = time.monotonic() - t0
            return
        time.sleep(0.01)


def poll_serving():
    while time.monotonic() < deadline:
        if http_status(port) == 200:
            result["serving"] = time.monotonic() - t0
            return
        time.sleep(0.02)


t0 = time.monotonic()
if fault == "crash":
    os.kill(old, signal.SIGKILL)
elif fault == "stop":
    os.kill(old, signal.SIGSTOP)
elif fault == "504":
    if http_status(cport, "/mode/status:504", "POST", 5) != 200:
        sys.exit("measure.py: control port %d refused the mode change" % cport)
else:
    sys.exit("measure.py: unknown fault " + fault)
deadline = t0 + max_wait
threads = [threading.Thread(target=poll_restarted), threading.Thread(target=poll_serving)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("%s %s" % tuple("%.3f" % result[k] if k in result else "timeout" for k in ("restarted", "serving")))
