//! Small caches under `/run/loopswap` (tmpfs, writable by root only, gone
//! at reboot) for what costs the kernel or this process a lot to produce
//! and stays the same for a boot or a loaded module. A file is a key line
//! naming exactly what the body was made from, then the body; a cache that
//! cannot be read or written, or whose key differs, is never an error: the
//! caller makes the body again.

use std::path::{Path, PathBuf};

const ROOT: &str = "/run/loopswap";

fn path(kind: &str, name: &str) -> PathBuf {
    PathBuf::from(ROOT).join(kind).join(name)
}

/// This boot's id: a cache made in another boot is never used.
pub fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_owned())
}

/// The body cached as `kind/name` under exactly `key`.
pub fn read(kind: &str, name: &str, key: &str) -> Option<String> {
    read_at(&path(kind, name), key)
}

/// Caches `body` as `kind/name` under `key` (one line), best effort.
pub fn write(kind: &str, name: &str, key: &str, body: &str) {
    write_at(&path(kind, name), key, body);
}

fn read_at(path: &Path, key: &str) -> Option<String> {
    let cached = std::fs::read_to_string(path).ok()?;
    let (cached_key, body) = cached.split_once('\n')?;
    (cached_key == key).then(|| body.to_owned())
}

fn write_at(path: &Path, key: &str, body: &str) {
    let Some(folder) = path.parent() else {
        return;
    };
    if key.contains('\n') || std::fs::create_dir_all(folder).is_err() {
        return;
    }
    // Written whole, then renamed: a reader never sees half a file.
    let partial = path.with_extension(format!("{}.partial", std::process::id()));
    if std::fs::write(&partial, format!("{key}\n{body}")).is_ok() {
        let _ = std::fs::rename(&partial, path);
    }
    let _ = std::fs::remove_file(&partial);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_read_back_only_under_its_own_key() {
        let folder = std::env::temp_dir().join(format!("loopswap-run-cache-{}", std::process::id()));
        let path = folder.join("kind").join("name");
        assert_eq!(read_at(&path, "key"), None);
        write_at(&path, "boot-1 a,b", "line one\nline two\n");
        assert_eq!(
            read_at(&path, "boot-1 a,b").as_deref(),
            Some("line one\nline two\n")
        );
        assert_eq!(read_at(&path, "boot-2 a,b"), None);
        assert_eq!(read_at(&path, "boot-1 a"), None);
        // A key of two lines could be mistaken for a key and a body.
        write_at(&path, "boot-3\nbody", "x");
        assert_eq!(
            read_at(&path, "boot-1 a,b").as_deref(),
            Some("line one\nline two\n")
        );
        std::fs::remove_dir_all(&folder).unwrap();
    }
}
