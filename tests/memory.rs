//! The `memory` probe against the real kernel: OOM kills in a v1 memory cgroup we create
//! (with the victim named from /dev/kmsg), available memory under a real 1 GiB allocation, PSI
//! triggers armed on /proc/pressure/memory and fired by real page-cache thrashing — and,
//! through `watchdog check`, the OOM baseline kept in the state file between runs.
//!
//! Every cgroup is made under this process's own memory cgroup, named after its test, and
//! removed (its processes killed by PID first) when its guard drops.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TempDir, wait_until};
use uptime_watchdog::config::{Limit, MemoryCheck};
use uptime_watchdog::health::Verdict;
use uptime_watchdog::probe::{Outcome, Probe};

/// A child cgroup of ours in the v1 memory hierarchy, with a limit; emptied and removed on drop.
struct TestCgroup {
    dir: PathBuf,
}

impl TestCgroup {
    fn new(tag: &str, limit: &str) -> TestCgroup {
        let me = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let ours = me
            .lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                parts.next()?;
                let controllers = parts.next()?;
                let path = parts.next()?;
                controllers
                    .split(',')
                    .any(|c| c == "memory")
                    .then(|| path.to_string())
            })
            .expect("these tests need the cgroup v1 memory controller (see /proc/self/cgroup)");
        let dir = PathBuf::from(format!(
            "/sys/fs/cgroup/memory{}/wd-memtest-{tag}-{}",
            ours.trim_end_matches('/'),
            std::process::id()
        ));
        if dir.exists() {
            let _ = std::fs::remove_dir(&dir);
        }
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let cg = TestCgroup { dir };
        std::fs::write(cg.dir.join("memory.limit_in_bytes"), limit).unwrap();
        cg
    }

    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn enter(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Kill what is left by PID (the fixtures kill their own too), then rmdir once empty.
        let _ = wait_until(Duration::from_secs(10), || {
            for pid in self.pids() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists()
        });
    }
}

/// A python3 child that waits for a line on stdin before running `code`, so it can be put in
/// a cgroup before it allocates. Killed and reaped by PID on drop.
struct Py {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Py {
    fn start(code: &str) -> Py {
        let mut child = Command::new("python3")
            .args(["-c", &format!("import sys\nsys.stdin.readline()\n{code}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is needed by these tests");
        let stdin = child.stdin.take();
        Py { child, stdin }
    }

    fn go(&mut self) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the child to print `line` (it prints it once it holds what it allocated).
    fn wait_for_line(&mut self, line: &str) {
        let mut out = BufReader::new(self.child.stdout.as_mut().unwrap());
        let mut got = String::new();
        out.read_line(&mut got).unwrap();
        assert_eq!(got.trim(), line, "python3 said {got:?}");
    }

    /// Waits for it to exit; returns its status.
    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut status = None;
        assert!(
            wait_until(within, || {
                status = self.child.try_wait().unwrap();
                status.is_some()
            }),
            "python3 (pid {}) did not exit within {within:?}",
            self.pid()
        );
        status.unwrap()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        self.kill();
    }
}

fn memory_check() -> MemoryCheck {
    MemoryCheck {
        cgroup: None,
        max_psi_some_avg10: None,
        max_psi_full_avg10: None,
        min_available: None,
        max_swap_used: None,
        oom_kills: false,
        psi_trigger: None,
    }
}

fn probe(check: MemoryCheck) -> Probe {
    Probe::Memory(uptime_watchdog::probe::memory::MemoryProbe::new(check))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn run(rt: &tokio::runtime::Runtime, p: &Probe) -> Outcome {
    rt.block_on(p.run(Duration::from_secs(5)))
}

fn kmsg_readable() -> bool {
    std::fs::File::open("/dev/kmsg").is_ok()
}

/// Starts a python3 in `cg` that touches 400 MB (twice its limit) and waits for the OOM kill.
fn oom_kill_in(cg: &TestCgroup) -> u32 {
    let mut py = Py::start("b = bytearray(400 << 20)\nprint('survived', flush=True)\n");
    cg.enter(py.pid());
    py.go();
    let status = py.wait_exit(Duration::from_secs(20));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "not OOM-killed: {status}");
    py.pid()
}

#[test]
fn an_oom_kill_in_a_cgroup_fails_one_check_at_once_and_names_the_victim() {
    let cg = TestCgroup::new("oom-lib", "200M");
    let rt = rt();
    let check = MemoryCheck {
        cgroup: Some(cg.dir.clone()),
        max_psi_full_avg10: Some(60.0),
        min_available: Some(Limit::Percent(10.0)),
        oom_kills: true,
        ..memory_check()
    };
    let daemon = probe(check.clone());
    let first = run(&rt, &daemon);
    assert!(first.ok, "{first:?}");
    assert!(first.reason.contains("OOM kills: baseline 0"), "{first:?}");
    // A v1 cgroup has no memory.pressure: PSI is skipped and said so, not a false alarm.
    assert!(
        first
            .reason
            .contains("skipped, unsupported on this host: PSI: no "),
        "{first:?}"
    );
    assert!(first.reason.contains("of 200 MiB"), "{first:?}");
    // A one-shot `watchdog check` run: a fresh probe restored from the previous snapshot.
    let snapshot = daemon.snapshot().expect("a baseline to keep");
    let one_shot = probe(check);
    one_shot.restore(&snapshot);

    let victim = oom_kill_in(&cg);

    for (who, p) in [("daemon", &daemon), ("one-shot", &one_shot)] {
        let o = run(&rt, p);
        assert_eq!(o.verdict(), Verdict::Dead, "{who}: {o:?}");
        assert!(
            o.reason.starts_with("1 OOM kill since the previous check"),
            "{who}: {o:?}"
        );
        if kmsg_readable() {
            assert!(
                o.reason.contains(&format!("(pid {victim})")) && o.reason.contains("python"),
                "{who}: victim {victim} not named: {o:?}"
            );
        } else {
            assert!(o.reason.contains("victim unknown"), "{who}: {o:?}");
        }
        // One failure per kill: the next check is ok again.
        let again = run(&rt, p);
        assert!(again.ok, "{who}: {again:?}");
        assert!(again.reason.contains("no OOM kill"), "{who}: {again:?}");
    }
}

fn host_mem_available() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// In a cgroup with a 1.5 GiB limit, so that what other processes on this (shared, busy)
/// machine take or free cannot decide the outcome: host-wide MemAvailable moves by gigabytes
/// when parallel tests or builds start and stop.
#[test]
fn min_available_fails_while_a_process_holds_1_gib_and_recovers_when_it_is_gone() {
    let cg = TestCgroup::new("avail", "1536M");
    let rt = rt();
    let p = probe(MemoryCheck {
        cgroup: Some(cg.dir.clone()),
        min_available: Some(Limit::Percent(50.0)),
        ..memory_check()
    });
    let before = run(&rt, &p);
    assert!(before.ok, "{before:?}");
    assert!(
        before.reason.starts_with("available ") && before.reason.contains("of 1.5 GiB"),
        "{before:?}"
    );

    let mut py = Py::start(
        "b = bytearray(b'x') * (1 << 30)\nprint('holding', flush=True)\nsys.stdin.readline()\n",
    );
    cg.enter(py.pid());
    py.go();
    py.wait_for_line("holding");
    let failed = run(&rt, &p);
    assert_eq!(failed.verdict(), Verdict::Fail, "{failed:?}");
    assert!(
        failed.reason.starts_with("available ")
            && failed.reason.contains(" < min 50% = 768 MiB (")
            && failed.reason.contains("of 1.5 GiB cgroup limit)"),
        "{failed:?}"
    );
    // The culprit, from the cgroup's own processes.
    assert!(failed.reason.contains("; top: python"), "{failed:?}");

    py.kill();
    let mut last = None;
    assert!(
        wait_until(Duration::from_secs(15), || {
            let o = run(&rt, &p);
            let done = o.ok;
            last = Some(o);
            done
        }),
        "no recovery after the 1 GiB was freed: {last:?}"
    );
}

#[test]
fn min_available_on_the_host_fails_above_what_is_there() {
    let rt = rt();
    // 4 GiB more than there is now: no other process frees that much in a moment.
    let floor = host_mem_available() + (4 << 30);
    let p = probe(MemoryCheck {
        min_available: Some(Limit::Absolute(floor)),
        ..memory_check()
    });
    let o = run(&rt, &p);
    assert_eq!(o.verdict(), Verdict::Fail, "{o:?}");
    assert!(
        o.reason.starts_with("available ")
            && o.reason.contains(" < min ")
            && o.reason.contains(" GiB MemTotal)")
            && o.reason.contains("; top: "),
        "{o:?}"
    );
    // And a floor far below passes, with the numbers in the reason.
    let p = probe(MemoryCheck {
        min_available: Some(Limit::Absolute(64 << 20)),
        ..memory_check()
    });
    let o = run(&rt, &p);
    assert!(o.ok && o.reason.ends_with("min 64.0 MiB"), "{o:?}");
}

#[test]
fn a_psi_trigger_the_kernel_refuses_falls_back_to_polling() {
    let rt = rt();
    // A stall longer than its window: EINVAL on every kernel.
    let p = uptime_watchdog::probe::memory::MemoryProbe::new(MemoryCheck {
        max_psi_full_avg10: Some(60.0),
        psi_trigger: Some("some 150000 100000".into()),
        ..memory_check()
    });
    let waited = rt
        .block_on(async { tokio::time::timeout(Duration::from_millis(300), p.next_event()).await });
    assert!(waited.is_err(), "next_event completed without a trigger");
    let status = p.trigger_status().expect("set up on the first next_event");
    let err = status.unwrap_err();
    assert!(err.contains("the kernel refused it"), "{err}");
    // Checks still work: polling.
    let o = rt.block_on(p.check(&Default::default(), Instant::now()));
    assert!(o.ok && o.reason.starts_with("PSI some "), "{o:?}");
}

#[test]
fn a_psi_trigger_fires_under_real_pressure_after_cancelled_waits() {
    if !Path::new("/proc/pressure/memory").exists() {
        panic!("this test needs PSI (/proc/pressure/memory)");
    }
    let rt = rt();
    let p = uptime_watchdog::probe::memory::MemoryProbe::new(MemoryCheck {
        max_psi_some_avg10: Some(100.0),
        psi_trigger: Some("some 150000 2000000".into()),
        ..memory_check()
    });
    // Waits cancelled by the schedule tick, as the daemon's select! does.
    for _ in 0..3 {
        let _ = rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(30), p.next_event()).await
        });
    }
    assert_eq!(p.trigger_status(), Some(Ok(())));

    // Page-cache thrashing: a 128 MiB file mapped and read over and over in a 64 MiB cgroup.
    // The file is written here, outside the cgroup and before the clock starts: written from
    // inside it, on a machine whose disk is busy (the rest of the suite), the writing alone
    // took most of the time the trigger was given.
    let cg = TestCgroup::new("psi", "64M");
    let dir = TempDir::new("psi");
    let file = dir.path().join("thrash.bin");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&file).unwrap();
        let block: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for _ in 0..128 {
            f.write_all(&block).unwrap();
        }
        f.sync_all().unwrap();
    }
    let mut py = Py::start(&format!(
        "import os, mmap\n\
         n = 128 << 20\n\
         fd = os.open({file:?}, os.O_RDONLY)\n\
         os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)\n\
         m = mmap.mmap(fd, n, prot=mmap.PROT_READ)\n\
         for i in range(0, n, 4096): m[i]\n\
         print('thrashing', flush=True)\n\
         while True:\n    for i in range(0, n, 4096): m[i]; m[i]\n",
        file = file.display().to_string()
    ));
    cg.enter(py.pid());
    py.go();
    // One pass over the file in 64 MiB: the cgroup is full and reclaiming from here on.
    py.wait_for_line("thrashing");
    let fired =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), p.next_event()).await });
    py.kill();
    assert!(
        fired.is_ok(),
        "the trigger did not fire within 30 s of thrashing; {}",
        std::fs::read_to_string("/proc/pressure/memory").unwrap()
    );
    assert_eq!(p.trigger_status(), Some(Ok(())));
    let o = rt.block_on(p.check(&Default::default(), Instant::now()));
    assert!(o.reason.starts_with("PSI some "), "{o:?}");
}

/// `watchdog check --json --dry-run`: probe name -> (ok, reason).
fn watchdog_check(cfg: &std::path::Path) -> std::collections::BTreeMap<String, (bool, String)> {
    common::check_rows(cfg, &[])
}

#[test]
fn watchdog_check_keeps_the_oom_baseline_between_runs_and_says_what_is_unsupported() {
    let cg = TestCgroup::new("oom-cli", "200M");
    let dir = TempDir::new("memory-cli");
    for d in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup/pids"] {
        assert!(
            Path::new(d).is_dir(),
            "{d} is expected on this kind of host"
        );
    }
    let cfg = dir.write(
        "watchdog.toml",
        &format!(
            "[watchdog]\nstate_dir = \"state\"\n\n[defaults]\ninterval = \"1m\"\ntimeout = \"5s\"\n\n\
             [[probe]]\nname = \"redis\"\nkind = \"memory\"\ncgroup = \"{}\"\n\n\
             [[probe]]\nname = \"host\"\nkind = \"memory\"\noom_kills = false\nmax_swap_used = \"80%\"\n\n\
             [[probe]]\nname = \"unified\"\nkind = \"memory\"\ncgroup = \"/sys/fs/cgroup/unified\"\n\n\
             [[probe]]\nname = \"no-memcg\"\nkind = \"memory\"\ncgroup = \"/sys/fs/cgroup/pids\"\n",
            cg.dir.display()
        ),
    );
    let r = watchdog_check(&cfg);
    assert_eq!(r["redis"], (true, r["redis"].1.clone()), "{:?}", r["redis"]);
    assert!(
        r["redis"].1.contains("OOM kills: baseline 0"),
        "{:?}",
        r["redis"]
    );
    // The defaults: PSI full 60% and 10% available; a host without swap says so.
    let host = &r["host"];
    assert!(host.0, "{host:?}");
    assert!(host.1.starts_with("PSI some "), "{host:?}");
    assert!(host.1.contains("min 10% = "), "{host:?}");
    assert!(
        host.1.contains("no swap") || host.1.contains("swap used "),
        "{host:?}"
    );
    // cgroup2 without the memory controller: PSI works, the rest is named as skipped.
    let unified = &r["unified"];
    assert!(unified.0, "{unified:?}");
    assert!(
        unified.1.contains("skipped, unsupported on this host: ")
            && unified.1.contains("available memory: no memory controller"),
        "{unified:?}"
    );
    // Nothing measurable: a clear failure, not a crash and not an alarm about memory.
    let none = &r["no-memcg"];
    assert!(!none.0, "{none:?}");
    assert!(none.1.starts_with("unsupported on this host: "), "{none:?}");

    let victim = oom_kill_in(&cg);
    let r = watchdog_check(&cfg);
    let redis = &r["redis"];
    assert!(!redis.0, "{redis:?}");
    assert!(
        redis.1.starts_with("1 OOM kill since the previous check"),
        "{redis:?}"
    );
    if kmsg_readable() {
        assert!(redis.1.contains(&format!("(pid {victim})")), "{redis:?}");
    }
    let r = watchdog_check(&cfg);
    assert!(
        r["redis"].0 && r["redis"].1.contains("no OOM kill"),
        "{:?}",
        r["redis"]
    );
}
