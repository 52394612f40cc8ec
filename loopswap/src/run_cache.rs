//! Small caches under `/run/loopswap` (tmpfs, gone at reboot) for what
//! costs the kernel or this process a lot to produce and stays the same
//! for a boot or a loaded module. A file is a key line naming exactly what
//! the body was made from, then the body. The key always starts with the
//! cache format, the identity of the loopswap binary that wrote it (a body
//! is never read by another build, which might make it differently) and
//! the boot's id.
//! Only files and folders owned by this user and writable by no one else
//! are read (some bodies are offsets the probes read kernel memory at).
//! A cache that cannot be read or written, or whose key differs, is never
//! an error: the caller makes the body again.

use std::{
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

const ROOT: &str = "/run/loopswap";

/// Changed whenever a body's format changes.
const FORMAT: &str = "loopswap-cache-1";

/// What every key starts with, found once per process: the cache format,
/// the running binary as its file (a reinstalled loopswap is another) and
/// this boot's id (nothing cached in another boot is used). `None` when
/// any part is unknown: then nothing is cached.
fn prefix() -> Option<&'static str> {
    static PREFIX: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    PREFIX
        .get_or_init(|| {
            let exe = std::fs::metadata("/proc/self/exe").ok()?;
            let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
            Some(format!(
                "{FORMAT} {} {}:{} {} {}.{} boot {}",
                env!("CARGO_PKG_VERSION"),
                exe.dev(),
                exe.ino(),
                exe.size(),
                exe.mtime(),
                exe.mtime_nsec(),
                boot.trim()
            ))
        })
        .as_deref()
}

/// The body cached as `kind/name` under exactly `key`.
pub fn read(kind: &str, name: &str, key: &str) -> Option<String> {
    read_at(Path::new(ROOT), &[kind, name], &format!("{} {key}", prefix()?))
}

/// Caches `body` as `kind/name` under `key` (one line), best effort.
pub fn write(kind: &str, name: &str, key: &str, body: &str) {
    if let Some(prefix) = prefix() {
        write_at(Path::new(ROOT), &[kind, name], &format!("{prefix} {key}"), body);
    }
}

/// Owned by this user and writable by no one else.
fn trusted(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .is_ok_and(|meta| meta.uid() == nix::unistd::geteuid().as_raw() && meta.mode() & 0o022 == 0)
}

fn read_at(root: &Path, parts: &[&str], key: &str) -> Option<String> {
    let mut path = root.to_path_buf();
    if !trusted(&path) {
        return None;
    }
    for part in parts {
        path.push(part);
        if !trusted(&path) {
            return None;
        }
    }
    let cached = std::fs::read_to_string(&path).ok()?;
    let (cached_key, body) = cached.split_once('\n')?;
    (cached_key == key).then(|| body.to_owned())
}

fn write_at(root: &Path, parts: &[&str], key: &str, body: &str) {
    let path: PathBuf = parts
        .iter()
        .fold(root.to_path_buf(), |path, part| path.join(part));
    let Some(folder) = path.parent() else {
        return;
    };
    if key.contains('\n')
        || std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(folder)
            .is_err()
    {
        return;
    }
    // Written whole, then renamed: a reader never sees half a file.
    let partial = path.with_extension(format!("{}.partial", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .and_then(|mut file| file.write_all(format!("{key}\n{body}").as_bytes()));
    if written.is_ok() {
        let _ = std::fs::rename(&partial, &path);
    }
    let _ = std::fs::remove_file(&partial);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_read_back_only_under_its_own_key_from_trusted_files() {
        let root = std::env::temp_dir().join(format!("loopswap-run-cache-{}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&root).unwrap();
        let parts = ["kind", "name"];
        assert_eq!(read_at(&root, &parts, "key"), None);
        write_at(&root, &parts, "boot-1 a,b", "line one\nline two\n");
        assert_eq!(
            read_at(&root, &parts, "boot-1 a,b").as_deref(),
            Some("line one\nline two\n")
        );
        assert_eq!(read_at(&root, &parts, "boot-2 a,b"), None);
        assert_eq!(read_at(&root, &parts, "boot-1 a"), None);
        // A key of two lines could be mistaken for a key and a body.
        write_at(&root, &parts, "boot-3\nbody", "x");
        assert_eq!(
            read_at(&root, &parts, "boot-1 a,b").as_deref(),
            Some("line one\nline two\n")
        );
        // A file others may write is not read.
        let file = root.join("kind").join("name");
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
        assert_eq!(read_at(&root, &parts, "boot-1 a,b"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_key_names_this_binary_and_boot() {
        let prefix = prefix().unwrap();
        assert!(prefix.starts_with(FORMAT), "{prefix}");
        assert!(prefix.contains(env!("CARGO_PKG_VERSION")), "{prefix}");
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        assert!(prefix.ends_with(&format!("boot {}", boot.trim())), "{prefix}");
    }
}
