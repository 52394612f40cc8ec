//! Installs what is missing, idempotently: Debian packages, rustup pieces,
//! bpf-linker (built against Debian's LLVM 22, cached in target/tools), and
//! Debian's 6.12 kernel image and headers (unpacked in target/guest).

use std::{ffi::OsString, fs, process::Command};

use anyhow::{Context as _, bail};

use crate::{output, paths, run};

/// Host packages: qemu for the VM; busybox, fio and e2fsprogs for the
/// guest; LLVM 22 for bpf-linker; gcc-12 (the guest kernel's compiler),
/// make and pahole (module BTF) for out-of-tree modules; xz for the guest
/// kernel's compressed modules.
pub const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "fio",
    "e2fsprogs",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "gcc-12",
    "make",
    "dwarves",
    "xz-utils",
];

/// bpf-linker's version, pinned: it must match rustc's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .output()
        .is_ok_and(|out| out.stdout == b"installed")
}

fn apt_get() -> Command {
    let mut command = Command::new("apt-get");
    command.env("DEBIAN_FRONTEND", "noninteractive");
    command
}

fn ensure_apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix_is_root() {
        bail!(
            "missing Debian packages {missing:?}: run `sudo apt-get install {}`",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(apt_get().args(["update", "-qq"]))?;
    run(apt_get()
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))
}

fn nix_is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0")
}

fn ensure_rustup() -> anyhow::Result<()> {
    let nightly =
        output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
            .unwrap_or_default();
    if !nightly.lines().any(|line| line.starts_with("rust-src")) {
        eprintln!("xtask: installing nightly rust-src (for -Z build-std=core)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let targets = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !targets.lines().any(|line| line == paths::GUEST_TARGET) {
        eprintln!("xtask: adding the {} target", paths::GUEST_TARGET);
        run(Command::new("rustup").args(["target", "add", paths::GUEST_TARGET]))?;
    }
    Ok(())
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    if paths::tools_bin().join("bpf-linker").exists() {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)");
    run(Command::new("cargo")
        .args(["install", "--root"])
        .arg(paths::target().join("tools"))
        .args(["bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
}

fn ensure_guest_kernel() -> anyhow::Result<()> {
    let root = paths::guest_root();
    let stamp = root.join(".unpacked");
    if stamp.exists() {
        return Ok(());
    }
    let debs = paths::target().join("guest").join("debs");
    fs::create_dir_all(&debs)?;
    let download = || {
        run(apt_get()
            .current_dir(&debs)
            .arg("download")
            .args(paths::KERNEL_PACKAGES))
    };
    if download().is_err() {
        // A bare machine has no package lists yet.
        run(apt_get().args(["update", "-qq"]))?;
        download()?;
    }
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(&root)?;
    for deb in fs::read_dir(&debs)? {
        let deb = deb?.path();
        if deb.extension().is_some_and(|ext| ext == "deb") {
            run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
        }
    }
    // The headers' Makefile includes the common tree by absolute path.
    let makefile = paths::kdir().join("Makefile");
    let text = fs::read_to_string(&makefile).with_context(|| format!("reading {}", makefile.display()))?;
    let relocated = text.replace("/usr/src/", &format!("{}/usr/src/", root.display()));
    fs::write(&makefile, relocated)?;
    if !paths::vmlinuz().exists() {
        bail!(
            "{} missing after unpacking the kernel packages",
            paths::vmlinuz().display()
        );
    }
    fs::write(stamp, "")?;
    Ok(())
}

/// Everything `cargo xtask` needs on this machine.
pub fn ensure_all() -> anyhow::Result<()> {
    ensure_apt_packages().context("installing Debian packages")?;
    ensure_rustup().context("installing rustup components")?;
    ensure_bpf_linker().context("installing bpf-linker")?;
    ensure_guest_kernel().context("fetching Debian's 6.12 kernel")?;
    Ok(())
}

/// PATH with target/tools/bin first, for aya-build to find bpf-linker.
pub fn path_with_tools() -> OsString {
    let mut path = OsString::from(paths::tools_bin());
    if let Some(old) = std::env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }
    path
}
