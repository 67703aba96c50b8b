//! Link settings for the `pgwarden` binary that Cargo's profiles cannot express.
//!
//! Relative relocations are packed (`DT_RELR`, `-z pack-relative-relocs`) when building for a
//! glibc host that can load them (2.36 or newer): the executable is position-independent, and
//! its 25,000 relative relocations otherwise take 600 KB of `.rela.dyn` that the loader reads
//! once and that then stay resident in every agent for nothing. Older glibc cannot start such
//! a binary, so the flag is left out when the build host's glibc is older, when the target is
//! not the host (a cross build), or when `PGWARDEN_NO_RELR` is set.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PGWARDEN_NO_RELR");
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if std::env::var_os("PGWARDEN_NO_RELR").is_some()
        || target != host
        || !target.ends_with("-linux-gnu")
    {
        return;
    }
    if host_glibc().is_some_and(|(major, minor)| (major, minor) >= (2, 36)) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// The build host's glibc version, from `getconf GNU_LIBC_VERSION` ("glibc 2.36").
fn host_glibc() -> Option<(u32, u32)> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.trim().parse().ok()?;
    Some((major, minor))
}
