//! Loading and unloading modules (finit_module/delete_module), and the name
//! a `.ko` file will load under.

use std::{
    ffi::CString,
    fs::File,
    io::Read as _,
    path::{Path, PathBuf},
};

use nix::kmod::{DeleteModuleFlags, ModuleInitFlags, delete_module, finit_module};
use object::{Object as _, ObjectSection as _};

use crate::Error;

/// What `scripts/sign-file` appends after a module's signature.
const SIGNATURE_MARKER: &[u8] = b"~Module signature appended~\n";

/// Largest `.ko` loopswap reads (Debian's largest module is under 20 MiB).
pub const MAX_MODULE_FILE: u64 = 64 << 20;

/// A `.ko` opened once: its name is read from this descriptor and
/// `finit_module` loads this same descriptor, so the file cannot be
/// replaced between the check and the load.
#[derive(Debug)]
pub struct ModuleFile {
    path: PathBuf,
    file: File,
    /// The module name in `.modinfo` (`name=...`).
    pub name: String,
    /// Every `key=value` of `.modinfo`, in order.
    pub modinfo: Vec<(String, String)>,
    /// Whether a module signature is appended to the file.
    pub signed: bool,
    /// Whether it carries symbol versions (`__versions`, CONFIG_MODVERSIONS).
    pub symbol_versions: bool,
}

impl ModuleFile {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let bad = |why: String| Error::BadModuleFile {
            path: path.to_owned(),
            why,
        };
        let io = |cause| Error::Io {
            path: path.to_owned(),
            cause,
        };
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(cause) if cause.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Usage(format!(
                    "--to {}: no such file (give a .ko path or a registered implementation's name)",
                    path.display()
                )));
            }
            Err(cause) => return Err(io(cause)),
        };
        let metadata = file.metadata().map_err(io)?;
        if !metadata.is_file() {
            return Err(bad("not a regular file".into()));
        }
        if metadata.len() > MAX_MODULE_FILE {
            return Err(bad(format!(
                "{} bytes, larger than any kernel module ({} MiB at most)",
                metadata.len(),
                MAX_MODULE_FILE >> 20
            )));
        }
        let mut data = Vec::with_capacity(metadata.len() as usize);
        (&mut file)
            .take(MAX_MODULE_FILE + 1)
            .read_to_end(&mut data)
            .map_err(io)?;
        let elf = object::File::parse(&*data).map_err(|_| bad("not an ELF file".into()))?;
        let modinfo = elf
            .section_by_name(".modinfo")
            .ok_or_else(|| bad("no .modinfo section: not a kernel module".into()))?;
        let bytes = modinfo.data().map_err(|_| bad("unreadable .modinfo".into()))?;
        let name = name_from_modinfo(bytes).ok_or_else(|| bad("no name= in .modinfo".into()))?;
        let modinfo = bytes
            .split(|byte| *byte == 0)
            .filter_map(|entry| std::str::from_utf8(entry).ok()?.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        Ok(Self {
            path: path.to_owned(),
            file,
            name,
            modinfo,
            signed: data.ends_with(SIGNATURE_MARKER),
            symbol_versions: elf.section_by_name("__versions").is_some(),
        })
    }

    /// The first value of `key` in `.modinfo`.
    pub fn info(&self, key: &str) -> Option<&str> {
        self.modinfo
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.as_str())
    }

    /// Loads the module from the descriptor that was checked.
    pub fn load(&self) -> Result<(), Error> {
        finit_module(&self.file, c"", ModuleInitFlags::empty()).map_err(|errno| {
            let cause = std::io::Error::from_raw_os_error(errno as i32);
            match errno {
                // lsw_impl_register: the class it implements is not there.
                nix::errno::Errno::ENXIO => Error::BadModuleFile {
                    path: self.path.clone(),
                    why: "its init failed: the lsw class it implements is not registered \
                          (load the class module first, e.g. insmod lswloop.ko)"
                        .into(),
                },
                nix::errno::Errno::EEXIST => Error::Usage(format!(
                    "{}: module {} is already loaded",
                    self.path.display(),
                    self.name
                )),
                _ => Error::ModuleLoad {
                    path: self.path.clone(),
                    cause,
                },
            }
        })
    }
}

pub fn name_from_modinfo(bytes: &[u8]) -> Option<String> {
    bytes
        .split(|byte| *byte == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .find_map(|entry| entry.strip_prefix("name="))
        .map(str::to_owned)
}

pub fn is_loaded(name: &str) -> Result<bool, Error> {
    Ok(procfs::modules()?.contains_key(name))
}

pub fn unload(name: &str) -> Result<(), Error> {
    let cname = CString::new(name).expect("module names have no NUL");
    delete_module(&cname, DeleteModuleFlags::O_NONBLOCK).map_err(|errno| Error::Io {
        path: format!("delete_module({name})").into(),
        cause: std::io::Error::from_raw_os_error(errno as i32),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_names() {
        assert_eq!(
            name_from_modinfo(b"license=GPL\0name=lswloop_v2\0vermagic=6.12\0").as_deref(),
            Some("lswloop_v2")
        );
        assert_eq!(name_from_modinfo(b"license=GPL\0"), None);
    }
}
