//! Program loads and links that aya 0.14 cannot make, by bpf(2):
//!
//! - One BPF link for the entries of every function of a module and one for
//!   their returns: kprobe.multi (fprobe, Linux 5.18+, `CONFIG_FPROBE`).
//!   The kernel patches the text of all the functions in one ftrace update,
//!   not once per probe, and the links go with their file descriptors: a
//!   killed controller leaves nothing behind.
//! - The task iterator, attached by the BTF id of `bpf_iter_task` found by
//!   a quick scan (`crate::btf`): aya would parse all of the kernel's BTF
//!   (half a second under emulation) to find it.
//!
//! aya loads the object and creates its maps; this module loads programs a
//! second time, with the types and attach types they need, their map
//! references resolved by aya-obj to the maps aya created, so every program
//! shares the same maps.

use std::{
    collections::HashSet,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use aya::Ebpf;
use aya_obj::generated::{
    BPF_F_KPROBE_MULTI_RETURN, bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_link_info, bpf_prog_type,
};

use crate::Error;

/// A program loaded for kprobe.multi, and the link attaching it.
#[derive(Debug)]
pub struct MultiLink {
    // Field order is drop order: the link goes before its program.
    link: OwnedFd,
    program: OwnedFd,
}

impl MultiLink {
    /// Loads `program` from `object` for kprobe.multi and attaches it to
    /// every address: at their entries, or with `returns` at their returns.
    pub fn attach(
        object: &[u8],
        maps: &[(String, RawFd)],
        program: &str,
        addresses: &[u64],
        returns: bool,
    ) -> Result<Self, Error> {
        let program = load(object, maps, program, LoadAs::KprobeMulti)?;
        // SAFETY: bpf_attr is plain old data; zero is valid for every field.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the link_create member of a zeroed union.
        let create = unsafe { &mut attr.link_create };
        create.__bindgen_anon_1.prog_fd = program.as_raw_fd() as u32;
        create.attach_type = bpf_attach_type::BPF_TRACE_KPROBE_MULTI as u32;
        create.__bindgen_anon_3.kprobe_multi.flags = if returns { BPF_F_KPROBE_MULTI_RETURN } else { 0 };
        create.__bindgen_anon_3.kprobe_multi.cnt = addresses.len() as u32;
        create.__bindgen_anon_3.kprobe_multi.addrs = addresses.as_ptr() as u64;
        let link = bpf_new_fd(
            bpf_cmd::BPF_LINK_CREATE,
            &mut attr,
            "BPF_LINK_CREATE (kprobe.multi)",
        )?;
        Ok(Self { link, program })
    }

    /// Calls the kernel could not follow: entries skipped because a BPF
    /// program was already running on the CPU, and returns lost because
    /// fprobe's pool of return hooks (functions × CPUs × 2) ran out.
    pub fn missed(&self) -> Result<u64, Error> {
        let (hooks, programs) = self.missed_by_kind()?;
        Ok(hooks + programs)
    }

    /// [`missed`](Self::missed), as (calls fprobe could not follow, runs
    /// of the program skipped because a BPF program or a BPF syscall held
    /// the CPU).
    pub fn missed_by_kind(&self) -> Result<(u64, u64), Error> {
        // SAFETY: plain old data; zero is valid.
        let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
        object_info(&self.link, &mut info)?;
        // SAFETY: a kprobe.multi link fills the kprobe_multi member.
        let link_missed = unsafe { info.__bindgen_anon_1.kprobe_multi.missed };
        // SAFETY: plain old data; zero is valid.
        let mut program: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
        object_info(&self.program, &mut program)?;
        Ok((link_missed, program.recursion_misses))
    }
}

/// Every map of a loaded object with its descriptor, for [`MultiLink::attach`].
/// Call before taking maps out of `ebpf`.
pub fn map_descriptors(ebpf: &Ebpf) -> Result<Vec<(String, RawFd)>, Error> {
    use aya::maps::Map;
    ebpf.maps()
        .map(|(name, map)| {
            let data = match map {
                Map::Array(data)
                | Map::HashMap(data)
                | Map::PerCpuArray(data)
                | Map::PerCpuHashMap(data)
                | Map::RingBuf(data) => data,
                _ => {
                    return Err(Error::Map(aya::maps::MapError::InvalidName {
                        name: format!("{name} (a map type loopswap does not expect)"),
                    }));
                }
            };
            Ok((name.to_owned(), data.fd().as_fd().as_raw_fd()))
        })
        .collect()
}

/// A task iterator program and the link that makes it runnable: each
/// [`TaskIterator::run`] walks every task once.
#[derive(Debug)]
pub struct TaskIterator {
    // Field order is drop order: the link goes before its program.
    link: OwnedFd,
    _program: OwnedFd,
}

impl TaskIterator {
    /// Loads `program` (an `iter/task` program) of `object` against the
    /// kernel's `bpf_iter_task` (BTF type id `btf_id`) and links it.
    pub fn load(object: &[u8], maps: &[(String, RawFd)], program: &str, btf_id: u32) -> Result<Self, Error> {
        let program = load(object, maps, program, LoadAs::TaskIterator { btf_id })?;
        // SAFETY: plain old data; zero is valid for every field.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the link_create member of a zeroed union.
        let create = unsafe { &mut attr.link_create };
        create.__bindgen_anon_1.prog_fd = program.as_raw_fd() as u32;
        create.attach_type = bpf_attach_type::BPF_TRACE_ITER as u32;
        let link = bpf_new_fd(bpf_cmd::BPF_LINK_CREATE, &mut attr, "BPF_LINK_CREATE (iter/task)")?;
        Ok(Self {
            link,
            _program: program,
        })
    }

    /// Runs the iterator over every task; what the program wrote.
    pub fn run(&self) -> Result<Vec<u8>, Error> {
        use std::io::Read as _;
        // SAFETY: plain old data; zero is valid for every field.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.iter_create.link_fd = self.link.as_raw_fd() as u32;
        let output = bpf_new_fd(bpf_cmd::BPF_ITER_CREATE, &mut attr, "BPF_ITER_CREATE")?;
        let mut bytes = Vec::new();
        std::fs::File::from(output)
            .read_to_end(&mut bytes)
            .map_err(|cause| Error::Io {
                path: "the task iterator".into(),
                cause,
            })?;
        Ok(bytes)
    }
}

/// How to load a program.
#[derive(Clone, Copy, Debug)]
enum LoadAs {
    KprobeMulti,
    TaskIterator { btf_id: u32 },
}

/// `program` of `object` with its maps and calls relocated, loaded as
/// `how` says.
fn load(object: &[u8], maps: &[(String, RawFd)], program: &str, how: LoadAs) -> Result<OwnedFd, Error> {
    let malformed = |why: String| Error::Io {
        path: "the embedded eBPF object".into(),
        cause: std::io::Error::other(why),
    };
    let mut obj = aya_obj::Object::parse(object).map_err(|err| malformed(err.to_string()))?;
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    let definitions = obj.maps.clone();
    obj.relocate_maps(
        maps.iter()
            .filter_map(|(name, fd)| definitions.get(name).map(|map| (name.as_str(), *fd, map))),
        &text_sections,
    )
    .map_err(|err| malformed(err.to_string()))?;
    obj.relocate_calls(&text_sections)
        .map_err(|err| malformed(err.to_string()))?;
    let key = obj
        .programs
        .get(program)
        .ok_or_else(|| malformed(format!("no program {program}")))?
        .function_key();
    let instructions: &[bpf_insn] = &obj.functions[&key].instructions;

    let mut log = vec![0u8; 1 << 16];
    let mut name = [0 as std::ffi::c_char; 16];
    for (slot, byte) in name.iter_mut().zip(program.bytes().take(15)) {
        *slot = byte as std::ffi::c_char;
    }
    // SAFETY: plain old data; zero is valid for every field.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the prog-load member of a zeroed union.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    match how {
        LoadAs::KprobeMulti => {
            load.prog_type = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32;
            load.expected_attach_type = bpf_attach_type::BPF_TRACE_KPROBE_MULTI as u32;
        }
        LoadAs::TaskIterator { btf_id } => {
            load.prog_type = bpf_prog_type::BPF_PROG_TYPE_TRACING as u32;
            load.expected_attach_type = bpf_attach_type::BPF_TRACE_ITER as u32;
            load.attach_btf_id = btf_id;
        }
    }
    load.insns = instructions.as_ptr() as u64;
    load.insn_cnt = instructions.len() as u32;
    load.license = c"GPL".as_ptr() as u64;
    load.prog_name = name;
    // Without a log first (a verbose log that overflows its buffer would
    // fail a good load); on failure once more with it, to say why.
    let what = match how {
        LoadAs::KprobeMulti => "BPF_PROG_LOAD (kprobe.multi)",
        LoadAs::TaskIterator { .. } => "BPF_PROG_LOAD (iter/task)",
    };
    if let Ok(fd) = bpf_new_fd(bpf_cmd::BPF_PROG_LOAD, &mut attr, what) {
        return Ok(fd);
    }
    // SAFETY: writing the prog-load member of the union set up above.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    load.log_level = 1;
    load.log_buf = log.as_mut_ptr() as u64;
    load.log_size = log.len() as u32;
    bpf_new_fd(bpf_cmd::BPF_PROG_LOAD, &mut attr, what).map_err(|err| {
        let verifier = String::from_utf8_lossy(&log);
        let last = verifier
            .trim_end_matches('\0')
            .lines()
            .last()
            .unwrap_or("")
            .to_owned();
        match err {
            Error::Io { path, cause } => Error::Io {
                path,
                cause: std::io::Error::new(cause.kind(), format!("{cause}; verifier: {last}")),
            },
            other => other,
        }
    })
}

fn object_info<T>(fd: &OwnedFd, info: &mut T) -> Result<(), Error> {
    // SAFETY: plain old data; zero is valid.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = std::mem::size_of::<T>() as u32;
    attr.info.info = std::ptr::from_mut(info) as u64;
    bpf(
        bpf_cmd::BPF_OBJ_GET_INFO_BY_FD,
        &mut attr,
        "BPF_OBJ_GET_INFO_BY_FD",
    )
    .map(drop)
}

/// The bpf(2) system call; its non-negative return value.
fn bpf(command: bpf_cmd, attr: &mut bpf_attr, what: &str) -> Result<i64, Error> {
    // SAFETY: attr is a live, fully initialised bpf_attr; every pointer in it
    // points at memory that outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command as libc::c_int,
            std::ptr::from_mut(attr),
            std::mem::size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(Error::Io {
            path: format!("bpf({what})").into(),
            cause: std::io::Error::last_os_error(),
        });
    }
    Ok(ret)
}

/// A bpf(2) command that returns a new descriptor.
fn bpf_new_fd(command: bpf_cmd, attr: &mut bpf_attr, what: &str) -> Result<OwnedFd, Error> {
    let fd = bpf(command, attr, what)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
