//! Installs what is missing, idempotently: Debian packages, the pinned eBPF
//! toolchain, bpf-linker (built against Debian's LLVM 22, cached in
//! target/tools), and Debian's 6.12 kernel image and headers (unpacked in
//! target/guest). Everything is pinned: the toolchains by rust-toolchain.toml
//! files, bpf-linker by version and lock file, the kernel by package version
//! (apt checks each .deb against Debian's signed package lists).

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

/// bpf-linker's version, pinned, with its own Cargo.lock (`--locked`).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The LLVM bpf-linker is built against: Debian's newest packaged LLVM
/// (`llvm-22-dev` below). The eBPF nightly's LLVM major must equal it.
const BPF_LINKER_LLVM: u32 = 22;

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

/// The eBPF toolchain pin: `channel` of `loopswap-ebpf/rust-toolchain.toml`,
/// the one place it is written (loopswap/build.rs reads the same file).
pub fn ebpf_toolchain() -> anyhow::Result<String> {
    let path = paths::workspace()
        .join("loopswap-ebpf")
        .join("rust-toolchain.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let file: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
    file.get("toolchain")
        .and_then(|toolchain| toolchain.get("channel"))
        .and_then(toml::Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("{}: no [toolchain] channel", path.display()))
}

fn ensure_rustup() -> anyhow::Result<()> {
    let toolchain = ebpf_toolchain()?;
    let installed =
        output(Command::new("rustup").args(["component", "list", "--toolchain", &toolchain, "--installed"]))
            .unwrap_or_default();
    let has = |component: &str| installed.lines().any(|line| line.starts_with(component));
    if !has("rust-src") || !has("clippy") {
        eprintln!(
            "xtask: installing the pinned eBPF toolchain {toolchain} (rust-src for -Z build-std=core, clippy)"
        );
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            &toolchain,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
            "--component",
            "clippy",
        ]))?;
    }
    // The host toolchain is pinned by the workspace's rust-toolchain.toml;
    // rustup installs it (with the musl target) when cargo first runs.
    let targets = output(Command::new("rustup").current_dir(paths::workspace()).args([
        "target",
        "list",
        "--installed",
    ]))?;
    if !targets.lines().any(|line| line == paths::GUEST_TARGET) {
        eprintln!("xtask: adding the {} target", paths::GUEST_TARGET);
        run(Command::new("rustup").current_dir(paths::workspace()).args([
            "target",
            "add",
            paths::GUEST_TARGET,
        ]))?;
    }
    Ok(())
}

/// The LLVM major version in `rustc -vV` output (`LLVM version: 22.1.6`).
fn rustc_llvm_major(verbose_version: &str) -> Option<u32> {
    verbose_version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))?
        .split('.')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The LLVM major version a bpf-linker binary links (`libLLVM.so.22.1` in
/// `ldd` output): `bpf-linker --version` does not print it.
fn linked_llvm_major(ldd_output: &str) -> Option<u32> {
    ldd_output
        .split_whitespace()
        .find_map(|word| {
            word.strip_prefix("libLLVM.so.")
                .or_else(|| word.strip_prefix("libLLVM-"))
        })?
        .split(['.', '-'])
        .next()?
        .parse()
        .ok()
}

/// rustc emits LLVM bitcode that bpf-linker reads: an older LLVM cannot read
/// a newer one's bitcode ("ERROR llvm: Invalid record"). Refuse early, in
/// one line naming both versions and the fix.
fn check_llvm_match() -> anyhow::Result<()> {
    let toolchain = ebpf_toolchain()?;
    let rustc = output(Command::new("rustup").args(["run", &toolchain, "rustc", "-vV"]))?;
    let rustc_llvm =
        rustc_llvm_major(&rustc).with_context(|| format!("no LLVM version in `rustc +{toolchain} -vV`"))?;
    let linker = paths::tools_bin().join("bpf-linker");
    let ldd = output(Command::new("ldd").arg(&linker))?;
    let linker_llvm = linked_llvm_major(&ldd)
        .with_context(|| format!("{} links no libLLVM.so (see `ldd {0}`)", linker.display()))?;
    if rustc_llvm != linker_llvm {
        bail!(
            "the eBPF toolchain {toolchain} uses LLVM {rustc_llvm} but bpf-linker links LLVM {linker_llvm}: \
             pin a nightly with LLVM {linker_llvm} in loopswap-ebpf/rust-toolchain.toml (check with `rustc +NIGHTLY -vV`)"
        );
    }
    Ok(())
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    if paths::tools_bin().join("bpf-linker").exists() {
        return Ok(());
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM {BPF_LINKER_LLVM} (a few minutes)"
    );
    run(Command::new("cargo")
        .args(["install", "--root"])
        .arg(paths::target().join("tools"))
        .args(["bpf-linker", "--version", BPF_LINKER_VERSION, "--locked"])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{BPF_LINKER_LLVM}"),
        ])
        .env("LLVM_PREFIX", format!("/usr/lib/llvm-{BPF_LINKER_LLVM}")))
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
    check_llvm_match()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_majors_are_read_from_rustc_and_ldd() {
        let rustc =
            "rustc 1.98.0-nightly (abc 2026-06-14)\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.6\n";
        assert_eq!(rustc_llvm_major(rustc), Some(22));
        assert_eq!(rustc_llvm_major("rustc 1.95.0"), None);
        let ldd = "\tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x00007f4c2be00000)\n";
        assert_eq!(linked_llvm_major(ldd), Some(22));
        assert_eq!(linked_llvm_major("\tlibLLVM-17.so => /x (0x1)\n"), Some(17));
        assert_eq!(linked_llvm_major("\tlibc.so.6 => /lib/libc.so.6\n"), None);
    }

    #[test]
    fn the_ebpf_toolchain_is_a_dated_nightly() {
        let toolchain = ebpf_toolchain().unwrap();
        assert!(toolchain.starts_with("nightly-20"), "{toolchain}");
    }
}
