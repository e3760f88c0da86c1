//! Build script: how the `watchdog` binary is linked on Linux/glibc (issue #7, RSS against
//! monit). Two linker options, both about file pages of the binary that stay resident:
//!
//! - packed relative relocations (DT_RELR): the binary is position-independent, and its
//!   ~14,000 relative relocations took 330 KiB of `.rela.dyn` that the loader reads at every
//!   start. Packed, they take a few KiB. Needs GNU ld >= 2.38 or LLD, and glibc >= 2.36.
//! - in release builds, a symbol ordering file (`bench/symbol-order.txt`, written by
//!   `bench/symbol-order.sh`): the ~2,000 functions a running daemon executes are laid out
//!   together at the start of `.text`. Without it they are scattered over all 3.9 MB of it,
//!   and since the kernel maps the page-cache neighbours of every page a process touches
//!   (fault-around, 64 KiB), nearly the whole text ended up resident. Only LLD (Rust's default
//!   linker on x86_64 Linux) takes the option: a test link decides, and a build whose linker
//!   refuses it says so in a warning. A stale list (functions renamed since it was written)
//!   only costs memory: unknown names are skipped.

use std::path::PathBuf;
use std::process::Command;

const ORDER_FILE: &str = "bench/symbol-order.txt";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={ORDER_FILE}");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os != "linux" || env != "gnu" {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    if std::env::var("PROFILE").as_deref() != Ok("release") {
        return;
    }
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let order = root.join(ORDER_FILE);
    if !order.is_file() {
        println!(
            "cargo:warning=no {ORDER_FILE}: functions are not ordered (about 2.5 MB more RSS; bench/symbol-order.sh writes it)"
        );
        return;
    }
    let args = [
        format!("-Wl,--symbol-ordering-file={}", order.display()),
        "-Wl,--no-warn-symbol-ordering".to_string(),
    ];
    match linker_takes(&args) {
        Ok(()) => {
            for arg in args {
                println!("cargo:rustc-link-arg-bins={arg}");
            }
        }
        Err(why) => println!(
            "cargo:warning=the linker does not take --symbol-ordering-file ({why}): functions are not ordered (about 2.5 MB more RSS); LLD does"
        ),
    }
}

/// Links an empty program with `args` and the build's own flags: does the linker take them?
fn linker_takes(args: &[String]) -> Result<(), String> {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("no OUT_DIR")?);
    let source = out_dir.join("link_check.rs");
    std::fs::write(&source, "fn main() {}\n").map_err(|e| e.to_string())?;
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.arg(&source)
        .arg("-o")
        .arg(out_dir.join("link_check"))
        .args(["--edition", "2021"]);
    if let Ok(target) = std::env::var("TARGET") {
        cmd.args(["--target", &target]);
    }
    if let Ok(flags) = std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        cmd.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    }
    for arg in args {
        cmd.arg("-C").arg(format!("link-arg={arg}"));
    }
    let output = cmd.output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr
            .lines()
            .find(|l| l.contains("error") || l.contains("unknown"));
        Err(first.unwrap_or("the test link failed").trim().to_string())
    }
}
