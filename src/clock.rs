//! Time as the watchdog sees it: a monotonic [`Timestamp`] that means the same thing in every
//! process on this boot.
//!
//! The pure core never reads a clock: callers pass `now` in. The effect layer reads
//! `CLOCK_BOOTTIME`, which is monotonic (never jumps with NTP or an operator's `date`), keeps
//! counting through suspend, and — unlike `Instant` — is shared by every process on the host, so
//! `watchdog check` runs from cron can compare a timestamp saved by the previous run. A reboot
//! restarts it; [`boot_id`] tells persisted state which boot its timestamps belong to.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point on the boot-time clock, with millisecond resolution when persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(Duration);

impl Timestamp {
    /// A timestamp `d` after the clock's epoch (the boot); tests build times with it.
    pub const fn from_epoch(d: Duration) -> Self {
        Timestamp(d)
    }

    /// Convenience for tests and tables: `Timestamp::secs(5)`.
    pub const fn secs(s: u64) -> Self {
        Timestamp(Duration::from_secs(s))
    }

    pub fn since_epoch(self) -> Duration {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    pub fn checked_sub(self, d: Duration) -> Option<Timestamp> {
        self.0.checked_sub(d).map(Timestamp)
    }
}

impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(d))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0.as_millis() as u64)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Timestamp(Duration::from_millis(u64::deserialize(d)?)))
    }
}

/// Reads `CLOCK_BOOTTIME`. It cannot fail on Linux; should it ever, `CLOCK_MONOTONIC` is the
/// same clock minus suspended time, which is still monotonic.
pub fn now() -> Timestamp {
    use nix::time::{ClockId, clock_gettime};
    let ts = clock_gettime(ClockId::CLOCK_BOOTTIME)
        .or_else(|_| clock_gettime(ClockId::CLOCK_MONOTONIC))
        .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
    Timestamp(Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32))
}

/// `CLOCK_MONOTONIC` in microseconds, as systemd wants it with `RELOADING=1`.
pub fn monotonic_usec() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|ts| ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1000)
        .unwrap_or(0)
}

/// The kernel's random id for this boot, so state saved before a reboot is not compared with
/// boot-time timestamps of the next one. Empty if /proc is not mounted.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
