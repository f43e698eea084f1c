//! Builds the bundled guest (user programs, then the kernel that embeds
//! them) for `x86_64-unknown-none` and hands the kernel's path to the VMM
//! through the `GUEST_KERNEL_ELF` environment variable.
//!
//! The nested `cargo` uses its own target directory so that it never waits
//! on the lock of the build that runs this script. When the active
//! toolchain lacks the guest target (rustup installs a toolchain file's
//! `targets` only when it installs the toolchain itself), this script adds
//! it with `rustup target add`, saying so on one line, so that a fresh
//! machine needs no step from the user.

// A build script reports a failure by panicking with its message: that is
// cargo's convention, so the VMM's no-expect rule does not hold here.
#![allow(clippy::expect_used)]

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "x86_64-unknown-none";
const GUEST_PROFILE: &str = "guest";

fn cargo_build(workspace: &Path, target_dir: &Path, args: &[&str], extra_env: &[(&str, &Path)]) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .arg("build")
        .args(["--target", GUEST_TARGET, "--profile", GUEST_PROFILE])
        .arg("--target-dir")
        .arg(target_dir)
        .args(args);
    // The outer build's flags and wrappers are for the host, not the guest.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTDOCFLAGS",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo for the guest: {e}"));
    if !status.success() {
        panic!(
            "building the guest failed ({status}); is the {GUEST_TARGET} target installed? \
             (rustup target add {GUEST_TARGET})"
        );
    }
}

/// Makes sure the active toolchain has the guest target's standard
/// library, installing it with rustup when it is missing. The script runs
/// again whenever that library changes or goes away.
fn ensure_guest_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let Some(sysroot) = sysroot else {
        panic!("cannot ask {rustc} for its sysroot");
    };
    let rustlib = sysroot.join("lib").join("rustlib");
    // `rustup target remove` deletes the target's directory, which changes
    // its parent: watch that, so a removed target is noticed and restored.
    println!("cargo:rerun-if-changed={}", rustlib.display());
    let lib = rustlib.join(GUEST_TARGET).join("lib");
    let has_core = std::fs::read_dir(&lib).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
    });
    if has_core {
        return;
    }
    // The toolchain rustup chose for this build (rust-toolchain.toml).
    let toolchain = env::var("RUSTUP_TOOLCHAIN").ok();
    println!(
        "cargo:warning=the {GUEST_TARGET} target is missing from toolchain {}: installing it with rustup",
        toolchain.as_deref().unwrap_or("(active)")
    );
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", GUEST_TARGET]);
    if let Some(t) = &toolchain {
        cmd.args(["--toolchain", t]);
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "`rustup target add {GUEST_TARGET}` failed ({s}); the guest cannot be built without it"
        ),
        Err(e) => panic!(
            "the {GUEST_TARGET} target is missing and rustup cannot be run ({e}); \
             install the target for {} by hand",
            sysroot.display()
        ),
    }
}

fn main() {
    ensure_guest_target();
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest
        .parent()
        .expect("vmm/ sits in the workspace")
        .to_path_buf();
    let target_dir = workspace.join("target").join("guest");
    let out = target_dir.join(GUEST_TARGET).join(GUEST_PROFILE);

    cargo_build(
        &workspace,
        &target_dir,
        &["-p", "guest-user", "--features", "user"],
        &[],
    );
    let user = out.join("guest-user");
    cargo_build(
        &workspace,
        &target_dir,
        &["-p", "guest-kernel", "--features", "kernel"],
        &[("GUEST_USER_ELF", &user)],
    );
    let kernel = out.join("guest-kernel");
    println!("cargo:rustc-env=GUEST_KERNEL_ELF={}", kernel.display());
    println!("cargo:rustc-env=GUEST_USER_ELF={}", user.display());
    for dir in ["guest-kernel", "guest-user", "abi"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join(".cargo").display()
    );
}
