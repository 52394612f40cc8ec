//! Builds the guest's pieces, each only when its inputs changed: the static
//! loopswap binary (with the eBPF object inside), the project's kernel
//! modules, and the base initramfs.

use std::{fs, process::Command};

use anyhow::Context as _;

use crate::{initramfs, output, paths, run, setup};

/// `loopswap` for the guest: static musl, release. Its build script builds
/// the eBPF object with aya-build, which needs bpf-linker on PATH.
pub fn loopswap() -> anyhow::Result<()> {
    run(Command::new(env!("CARGO"))
        .current_dir(paths::workspace())
        .args([
            "build",
            "--release",
            "--package",
            "loopswap",
            "--target",
            paths::GUEST_TARGET,
        ])
        .env("PATH", setup::path_with_tools()))
    .context("building loopswap for the guest")
}

/// The project's modules, built in a copy of `kernel/` under target/ so
/// the source folder stays clean. Files are copied only when changed, so
/// Kbuild rebuilds only what changed.
pub fn modules() -> anyhow::Result<()> {
    let source = paths::workspace().join("kernel");
    let build = paths::module_build();
    fs::create_dir_all(&build)?;
    for entry in fs::read_dir(&source)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let target = build.join(entry.file_name());
        let data = fs::read(entry.path())?;
        if fs::read(&target).ok().as_deref() != Some(&data[..]) {
            fs::write(&target, data)?;
        }
    }
    run(Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(paths::kdir())
        .arg(format!("M={}", build.display()))
        .arg("modules"))
    .context("building the kernel modules in kernel/")
}

/// The cached base initramfs; rebuilt when /init or the host packages it
/// copies from change.
pub fn base_initramfs() -> anyhow::Result<()> {
    let versions = output(Command::new("dpkg-query").args(["-W", "busybox-static", "fio", "e2fsprogs"]))
        .unwrap_or_default();
    let key = format!("{}\n{versions}", initramfs::INIT);
    let key_path = paths::base_initramfs().with_extension("key");
    if paths::base_initramfs().exists() && fs::read_to_string(&key_path).ok().as_deref() == Some(&key) {
        return Ok(());
    }
    let archive = initramfs::base(&paths::guest_modules()).context("assembling the base initramfs")?;
    let mut data = Vec::new();
    archive.write(&mut data)?;
    fs::create_dir_all(paths::base_initramfs().parent().expect("has a parent"))?;
    fs::write(paths::base_initramfs(), data)?;
    fs::write(key_path, key)?;
    Ok(())
}

/// Installs what is missing, then builds everything the VM needs.
pub fn all() -> anyhow::Result<()> {
    setup::ensure_all()?;
    loopswap()?;
    modules()?;
    base_initramfs()
}
