//! The guest's initramfs, written in Rust as a newc cpio archive (the format
//! the kernel unpacks). The kernel accepts several archives back to back, so
//! a cached base (busybox, fio, e2fsprogs and their libraries, /init) is
//! followed by a small per-run overlay (the command, added files, loopswap,
//! the project's modules).

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::output;

/// The guest's /init: mount what tools expect, run /cmd with its output on
/// the second serial port (the first carries the kernel log), report the
/// exit status, power off.
pub const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/local/bin:/usr/bin:/usr/sbin:/bin:/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
# A task stuck in D state for 20 s is reported (and fails the run).
[ -w /proc/sys/kernel/hung_task_timeout_secs ] && echo 20 > /proc/sys/kernel/hung_task_timeout_secs
stty -F /dev/ttyS1 raw -echo
exec </dev/null >/dev/ttyS1 2>&1
cd /add
/bin/sh /cmd
echo "LSW-EXIT $?"
sync
poweroff -f
"#;

#[derive(Clone, Debug)]
enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// An archive being assembled: guest path → entry.
#[derive(Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    fn add_parents(&mut self, path: &str) {
        let mut prefix = String::new();
        for part in path
            .trim_start_matches('/')
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            prefix.push('/');
            prefix.push_str(part);
            self.entries.entry(prefix.clone()).or_insert(Entry::Dir);
        }
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.add_parents(path);
        self.entries.insert(path.to_owned(), Entry::Dir);
        self
    }

    pub fn bytes(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> &mut Self {
        self.add_parents(path);
        self.entries.insert(
            path.to_owned(),
            Entry::File {
                data: data.into(),
                mode,
            },
        );
        self
    }

    /// Copies a host file (following symlinks) to `path`.
    pub fn file(&mut self, path: &str, host: &Path) -> anyhow::Result<&mut Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let mode = fs::metadata(host)?.permissions().mode() & 0o7777;
        Ok(self.bytes(path, data, mode))
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.add_parents(path);
        self.entries
            .insert(path.to_owned(), Entry::Symlink(target.to_owned()));
        self
    }

    /// Copies a dynamically linked host program and every library `ldd`
    /// names, each at its host path.
    pub fn program_with_libraries(&mut self, path: &str, host: &Path) -> anyhow::Result<&mut Self> {
        self.file(path, host)?;
        for library in shared_libraries(host)? {
            let guest = library.to_str().context("library path is not UTF-8")?.to_owned();
            if !self.entries.contains_key(&guest) {
                self.file(&guest, &library)?;
            }
        }
        Ok(self)
    }

    /// Writes the archive in newc format.
    pub fn write(&self, out: &mut impl Write) -> anyhow::Result<()> {
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let name = path.trim_start_matches('/');
            let builder = cpio::newc::Builder::new(name).ino(ino as u32 + 1).nlink(1);
            let (builder, data): (_, &[u8]) = match entry {
                Entry::Dir => (builder.mode(0o040755).nlink(2), &[]),
                Entry::File { data, mode } => (builder.mode(0o100000 | mode), data),
                Entry::Symlink(target) => (builder.mode(0o120777), target.as_bytes()),
            };
            let mut writer = builder.write(&mut *out, data.len() as u32);
            writer.write_all(data)?;
            writer.finish()?;
        }
        cpio::newc::trailer(out)?;
        Ok(())
    }
}

/// Libraries (and the dynamic loader) a program loads, from `ldd`.
pub fn shared_libraries(program: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let text = output(Command::new("ldd").arg(program))?;
    Ok(parse_ldd(&text))
}

pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The cached part: busybox, fio, mkfs.ext4/fsck.ext4, /init, and the guest
/// kernel's modules needed for ext4.
pub fn base(guest_modules: &Path) -> anyhow::Result<Archive> {
    let mut archive = Archive::default();
    for dir in [
        "/proc", "/sys", "/dev", "/tmp", "/add", "/root", "/modules", "/etc", "/mnt",
    ] {
        archive.dir(dir);
    }
    archive.file("/bin/busybox", Path::new("/bin/busybox"))?;
    archive.bytes("/init", INIT, 0o755);
    archive.bytes(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
        0o644,
    );
    archive.bytes("/etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644);
    archive.program_with_libraries("/usr/bin/fio", Path::new("/usr/bin/fio"))?;
    archive.program_with_libraries("/usr/sbin/mke2fs", Path::new("/usr/sbin/mke2fs"))?;
    archive.program_with_libraries("/usr/sbin/e2fsck", Path::new("/usr/sbin/e2fsck"))?;
    archive.file("/etc/mke2fs.conf", Path::new("/etc/mke2fs.conf"))?;
    for (link, target) in [("mkfs.ext4", "mke2fs"), ("fsck.ext4", "e2fsck")] {
        archive.symlink(&format!("/usr/sbin/{link}"), target);
    }
    // ext4 is a module in Debian's kernel; insmod (busybox) takes them
    // uncompressed, in dependency order, from /lib/modules/ext4/.
    for (index, module) in EXT4_MODULES.iter().enumerate() {
        let compressed = guest_modules.join("kernel").join(format!("{module}.ko.xz"));
        if !compressed.exists() {
            continue;
        }
        let data = output_bytes(Command::new("xz").arg("-dc").arg(&compressed))?;
        let name = Path::new(module)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(module);
        archive.bytes(&format!("/lib/modules/ext4/{index:02}-{name}.ko"), data, 0o644);
    }
    Ok(archive)
}

/// ext4 and what it needs in Debian's 6.12 (modules.dep), in load order.
/// crc32c_generic is not a link-time dependency: ext4 asks the crypto API
/// for it at mount time, and the guest has no modprobe to load it then.
const EXT4_MODULES: &[&str] = &[
    "lib/crc16",
    "fs/mbcache",
    "fs/jbd2/jbd2",
    "crypto/crc32c_generic",
    "fs/ext4/ext4",
];

fn output_bytes(command: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !out.status.success() {
        bail!("{command:?} failed: {}", out.status);
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_absolute_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x1)\n\t/lib64/ld-linux-x86-64.so.2 (0x2)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn archive_has_parents_and_trailer() {
        let mut archive = Archive::default();
        archive.bytes("/a/b/c", "x", 0o644);
        let mut out = Vec::new();
        archive.write(&mut out).unwrap();
        let text = String::from_utf8_lossy(&out);
        let a = text.find("a\0").unwrap();
        let ab = text.find("a/b\0").unwrap();
        let abc = text.find("a/b/c\0").unwrap();
        assert!(a < ab && ab < abc);
        assert!(text.contains("TRAILER!!!"));
        assert_eq!(out.len() % 4, 0);
    }
}
