//! Build script: link the binaries with packed relative relocations (DT_RELR) on Linux/glibc.
//!
//! Why: the binary is position-independent, and its ~14,000 relative relocations took 330 KiB
//! of `.rela.dyn` that the loader reads at every start: file pages that stayed in the daemon's
//! RSS for its whole life. Packed, they take a few KiB (issue #7, RSS against monit).
//! Needs GNU ld >= 2.38 and glibc >= 2.36 (Debian 12).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
