//! What loopswap loads and links by bpf(2) instead of through aya 0.14:
//!
//! - The object itself ([`LoadedObject`]): parsed once by aya-obj, its maps
//!   created by aya's `MapData`, its programs' map references and calls
//!   resolved once. `aya::EbpfLoader::new()` reads and parses all of the
//!   kernel's BTF (5 MB; a quarter of a second under emulation) even when
//!   `.btf(None)` then drops it, and no program here needs a CO-RE
//!   relocation.
//! - One BPF link for the entries of every function of a module and one for
//!   their returns: kprobe.multi (fprobe, Linux 5.18+, `CONFIG_FPROBE`).
//!   The kernel patches the text of all the functions in one ftrace update,
//!   not once per probe, and the links go with their file descriptors: a
//!   killed controller leaves nothing behind.
//! - The task iterator, attached by the BTF id of `bpf_iter_task` found by
//!   a quick scan (`crate::btf`): aya would parse all of the kernel's BTF
//!   to find it.
//! - A kprobe by the perf kprobe PMU, and a raw tracepoint.

use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    sync::Arc,
};

use aya::maps::{Map, MapData, MapError};
use aya_obj::generated::{
    BPF_F_KPROBE_MULTI_RETURN, bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_link_info, bpf_prog_type,
};
use perf_event_open_sys as perf;

use crate::Error;

/// The object's maps, created, and its programs, ready to load.
#[derive(Debug)]
pub struct LoadedObject {
    maps: HashMap<String, Map>,
    programs: Arc<Programs>,
}

impl LoadedObject {
    /// Parses `object` and creates its maps, each with the size
    /// `max_entries` gives it, if any, or the object's.
    pub fn load(object: &[u8], max_entries: &[(&str, u32)]) -> Result<Self, Error> {
        let sized_later: Vec<&str> = max_entries.iter().map(|(name, _)| *name).collect();
        Self::begin(object, &sized_later)?.finish(max_entries)
    }

    /// Parses `object` and creates every map but those `sized_later`,
    /// whose sizes the caller does not know yet: the slow part of a load,
    /// to run beside whatever finds those sizes.
    pub fn begin(object: &[u8], sized_later: &[&str]) -> Result<PartlyLoaded, Error> {
        let mut parsed = aya_obj::Object::parse(object).map_err(|err| malformed(err.to_string()))?;
        let btf = load_btf(&mut parsed)?;
        let mut maps = HashMap::new();
        for (name, definition) in &parsed.maps {
            if !sized_later.contains(&name.as_str()) {
                maps.insert(name.clone(), create_map(name, definition.clone(), btf.as_ref())?);
            }
        }
        Ok(PartlyLoaded { parsed, maps, btf })
    }

    /// Takes the map `name` out of the object. Programs loaded later still
    /// use it: they refer to it by a descriptor [`Programs`] keeps open.
    pub fn take_map(&mut self, name: &str) -> Result<Map, Error> {
        self.maps.remove(name).ok_or_else(|| {
            Error::Map(MapError::InvalidName {
                name: format!("{name} (missing from the eBPF object, or taken)"),
            })
        })
    }

    /// The programs, resolved against this object's maps (which they
    /// hold open).
    pub fn programs(&self) -> &Arc<Programs> {
        &self.programs
    }
}

/// An object [`LoadedObject::begin`] parsed, with its maps of known size.
#[derive(Debug)]
pub struct PartlyLoaded {
    parsed: aya_obj::Object,
    maps: HashMap<String, Map>,
    /// The object's BTF, loaded: the maps made later are described by it.
    btf: Option<OwnedFd>,
}

impl PartlyLoaded {
    /// Creates the maps left, each with the size `max_entries` gives it,
    /// if any, or the object's, and resolves the programs' references to
    /// the maps.
    pub fn finish(self, max_entries: &[(&str, u32)]) -> Result<LoadedObject, Error> {
        let Self {
            mut parsed,
            mut maps,
            btf,
        } = self;
        for (name, definition) in &parsed.maps {
            if !maps.contains_key(name) {
                let mut definition = definition.clone();
                if let Some((_, entries)) = max_entries.iter().find(|(map, _)| map == name) {
                    definition.set_max_entries(*entries);
                }
                maps.insert(name.clone(), create_map(name, definition, btf.as_ref())?);
            }
        }
        // The programs keep descriptors of their own for the maps they
        // refer to: one loaded after its map was taken and dropped still
        // gets that map, not whatever reuses the number.
        let descriptors: Vec<(String, OwnedFd)> = maps
            .iter()
            .map(|(name, map)| map_fd(name, map).map(|fd| (name.clone(), fd)))
            .collect::<Result<_, _>>()?;
        let text_sections: HashSet<usize> = parsed.functions.keys().map(|(section, _)| *section).collect();
        let definitions = parsed.maps.clone();
        parsed
            .relocate_maps(
                descriptors.iter().filter_map(|(name, fd)| {
                    definitions
                        .get(name)
                        .map(|map| (name.as_str(), fd.as_raw_fd(), map))
                }),
                &text_sections,
            )
            .map_err(|err| malformed(err.to_string()))?;
        parsed
            .relocate_calls(&text_sections)
            .map_err(|err| malformed(err.to_string()))?;
        Ok(LoadedObject {
            maps,
            programs: Arc::new(Programs {
                object: parsed,
                _maps: descriptors.into_iter().map(|(_, fd)| fd).collect(),
            }),
        })
    }
}

fn create_map(name: &str, definition: aya_obj::Map, btf: Option<&OwnedFd>) -> Result<Map, Error> {
    // Plain maps only: no initial data to write, nothing to freeze.
    if !definition.data().is_empty() {
        return Err(malformed(format!("map {name} has initial data")));
    }
    let data = MapData::create(definition, name, btf.map(AsFd::as_fd)).map_err(Error::Map)?;
    Map::from_map_data(data).map_err(Error::Map)
}

/// Loads the object's BTF into the kernel, as aya's loader would (fixed up
/// for this kernel's BTF features: Linux 6.12 has every one but empty
/// data sections): a task storage map must name its key and value types
/// there. `None` when the object has no BTF.
fn load_btf(parsed: &mut aya_obj::Object) -> Result<Option<OwnedFd>, Error> {
    let features = aya_obj::btf::BtfFeatures::new(true, true, true, false, true, true, true, true);
    let Some(btf) = parsed
        .fixup_and_sanitize_btf(&features)
        .map_err(|err| malformed(format!("its BTF: {err}")))?
    else {
        return Ok(None);
    };
    let bytes = btf.to_bytes();
    // SAFETY: plain old data; zero is valid for every field.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BTF-load member of a zeroed union.
    let load = unsafe { &mut attr.__bindgen_anon_7 };
    load.btf = bytes.as_ptr() as u64;
    load.btf_size = bytes.len() as u32;
    bpf_new_fd(
        bpf_cmd::BPF_BTF_LOAD,
        &mut attr,
        "BPF_BTF_LOAD (the object's BTF)",
    )
    .map(Some)
}

/// A descriptor of its own for the map `name`.
pub fn map_fd(name: &str, map: &Map) -> Result<OwnedFd, Error> {
    let data = match map {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::PerCpuArray(data)
        | Map::PerCpuHashMap(data)
        | Map::RingBuf(data)
        // A task storage map: aya 0.14 has no type for it.
        | Map::Unsupported(data) => data,
        _ => {
            return Err(Error::Map(MapError::InvalidName {
                name: format!("{name} (a map type loopswap does not expect)"),
            }));
        }
    };
    data.fd().as_fd().try_clone_to_owned().map_err(|cause| Error::Io {
        path: format!("map {name} (dup of its descriptor)").into(),
        cause,
    })
}

fn malformed(why: String) -> Error {
    Error::Io {
        path: "the embedded eBPF object".into(),
        cause: std::io::Error::other(why),
    }
}

/// Every program of the object, its map references and calls resolved,
/// and the maps they refer to, held open.
#[derive(Debug)]
pub struct Programs {
    object: aya_obj::Object,
    _maps: Vec<OwnedFd>,
}

impl Programs {
    /// Loads `program` as `how` says.
    pub fn load(&self, program: &str, how: LoadAs) -> Result<OwnedFd, Error> {
        let key = self
            .object
            .programs
            .get(program)
            .ok_or_else(|| malformed(format!("no program {program}")))?
            .function_key();
        let instructions = &self.object.functions[&key].instructions;
        match how {
            LoadAs::KprobeSession(kfuncs) => load(&with_kfunc_calls(instructions, kfuncs), program, how),
            _ => load(instructions, program, how),
        }
    }
}

/// `BPF_TRACE_KPROBE_SESSION` (Linux 6.10), past aya-obj 0.3's bindings.
const BPF_TRACE_KPROBE_SESSION: u32 = 56;

/// The kernel BTF ids of the kfuncs a kprobe.session program calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionKfuncs {
    /// `bpf_session_is_return`.
    pub is_return: u32,
}

/// `instructions` with each call of a placeholder helper (`KFUNC_*`) made
/// a call of its kfunc by kernel BTF id (`BPF_PSEUDO_KFUNC_CALL`, offset 0:
/// the kernel's own BTF), as libbpf resolves an extern kfunc.
fn with_kfunc_calls(instructions: &[bpf_insn], kfuncs: SessionKfuncs) -> Vec<bpf_insn> {
    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    let mut patched = instructions.to_vec();
    for insn in &mut patched {
        if insn.code != CALL || insn.src_reg() != 0 {
            continue;
        }
        let btf_id = match insn.imm as u32 {
            loopswap_common::KFUNC_SESSION_IS_RETURN => kfuncs.is_return,
            _ => continue,
        };
        insn.set_src_reg(aya_obj::generated::BPF_PSEUDO_KFUNC_CALL as u8);
        insn.off = 0;
        insn.imm = btf_id as i32;
    }
    patched
}

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
        programs: &Programs,
        program: &str,
        addresses: &[u64],
        returns: bool,
    ) -> Result<Self, Error> {
        let program = programs.load(program, LoadAs::KprobeMulti)?;
        let flags = if returns { BPF_F_KPROBE_MULTI_RETURN } else { 0 };
        Self::link(
            program,
            bpf_attach_type::BPF_TRACE_KPROBE_MULTI as u32,
            flags,
            addresses,
        )
    }

    /// Loads `program` from `object` for kprobe.session (Linux 6.10+),
    /// its kfunc calls resolved by `kfuncs`, and attaches it to every
    /// address: it runs at the entry, and again at the return when the
    /// entry returned 0.
    pub fn attach_session(
        programs: &Programs,
        program: &str,
        addresses: &[u64],
        kfuncs: SessionKfuncs,
    ) -> Result<Self, Error> {
        let program = programs.load(program, LoadAs::KprobeSession(kfuncs))?;
        Self::link(program, BPF_TRACE_KPROBE_SESSION, 0, addresses)
    }

    fn link(program: OwnedFd, attach_type: u32, flags: u32, addresses: &[u64]) -> Result<Self, Error> {
        // SAFETY: bpf_attr is plain old data; zero is valid for every field.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the link_create member of a zeroed union.
        let create = unsafe { &mut attr.link_create };
        create.__bindgen_anon_1.prog_fd = program.as_raw_fd() as u32;
        create.attach_type = attach_type;
        create.__bindgen_anon_3.kprobe_multi.flags = flags;
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
        object_info(self.link.as_fd(), &mut info)?;
        // SAFETY: a kprobe.multi link fills the kprobe_multi member.
        let link_missed = unsafe { info.__bindgen_anon_1.kprobe_multi.missed };
        Ok((link_missed, recursion_misses(self.program.as_fd())?))
    }
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
    pub fn load(programs: &Programs, program: &str, btf_id: u32) -> Result<Self, Error> {
        let program = programs.load(program, LoadAs::TaskIterator { btf_id })?;
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

/// A program loaded as a kprobe on one function, by the perf kprobe PMU
/// (no tracefs event to create or remove); detached on drop.
#[derive(Debug)]
pub struct KprobeLink {
    // Field order is drop order: the event goes before its program.
    _event: OwnedFd,
    _program: OwnedFd,
}

impl KprobeLink {
    /// Loads `program` and runs it at every entry of the kernel function
    /// `symbol`.
    pub fn attach(programs: &Programs, program: &str, symbol: &str) -> Result<Self, Error> {
        const PMU_TYPE: &str = "/sys/bus/event_source/devices/kprobe/type";
        let loaded = programs.load(program, LoadAs::Kprobe)?;
        let io = |path: &str, cause| Error::Io {
            path: path.into(),
            cause,
        };
        let pmu: u32 = std::fs::read_to_string(PMU_TYPE)
            .map_err(|cause| io(PMU_TYPE, cause))?
            .trim()
            .parse()
            .map_err(|_| io(PMU_TYPE, std::io::Error::other("not a number")))?;
        let symbol_c = std::ffi::CString::new(symbol).map_err(|_| malformed(format!("symbol {symbol:?}")))?;
        let mut attr = perf::bindings::perf_event_attr {
            type_: pmu,
            size: std::mem::size_of::<perf::bindings::perf_event_attr>() as u32,
            ..Default::default()
        };
        attr.__bindgen_anon_3.kprobe_func = symbol_c.as_ptr() as u64;
        attr.__bindgen_anon_4.kprobe_addr = 0;
        let event = perf_attach(attr, loaded.as_fd())
            .map_err(|cause| io(&format!("perf_event_open (kprobe on {symbol})"), cause))?;
        Ok(Self {
            _event: event,
            _program: loaded,
        })
    }
}

/// A program loaded for a raw tracepoint and attached to it; detached on
/// drop.
#[derive(Debug)]
pub struct RawTracepointLink {
    // Field order is drop order: the link goes before its program.
    _link: OwnedFd,
    program: OwnedFd,
}

impl RawTracepointLink {
    /// Loads `program` and runs it at every hit of `tracepoint`.
    pub fn attach(programs: &Programs, program: &str, tracepoint: &std::ffi::CStr) -> Result<Self, Error> {
        let program = programs.load(program, LoadAs::RawTracepoint)?;
        // SAFETY: plain old data; zero is valid for every field.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.raw_tracepoint.name = tracepoint.as_ptr() as u64;
        attr.raw_tracepoint.prog_fd = program.as_raw_fd() as u32;
        let link = bpf_new_fd(
            bpf_cmd::BPF_RAW_TRACEPOINT_OPEN,
            &mut attr,
            "BPF_RAW_TRACEPOINT_OPEN",
        )?;
        Ok(Self { _link: link, program })
    }

    /// Runs the kernel skipped (see [`recursion_misses`]).
    pub fn misses(&self) -> Result<u64, Error> {
        recursion_misses(self.program.as_fd())
    }
}

/// Opens the perf event `attr` describes (one event on CPU 0 is enough: a
/// BPF program attached to a kprobe runs on every CPU) and attaches
/// `program` to it.
pub fn perf_attach(
    mut attr: perf::bindings::perf_event_attr,
    program: BorrowedFd<'_>,
) -> std::io::Result<OwnedFd> {
    attr.__bindgen_anon_1.sample_period = 1;
    attr.__bindgen_anon_2.wakeup_events = 1;
    // SAFETY: attr is a valid, fully initialised perf_event_attr, and any
    // string it points at outlives the call.
    let fd =
        unsafe { perf::perf_event_open(&mut attr, -1, 0, -1, perf::bindings::PERF_FLAG_FD_CLOEXEC as _) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: perf_event_open returned a new descriptor that we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: both descriptors are open for the duration of the calls.
    unsafe {
        if perf::ioctls::SET_BPF(fd.as_raw_fd(), program.as_raw_fd() as u32) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if perf::ioctls::ENABLE(fd.as_raw_fd(), 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(fd)
}

/// `bpf_prog_info.recursion_misses` (Linux 5.12+), which aya 0.14's
/// `ProgramInfo` does not expose: runs of the program the kernel skipped
/// because another BPF program (or a BPF syscall) held the CPU.
pub fn recursion_misses(program: BorrowedFd<'_>) -> Result<u64, Error> {
    // SAFETY: plain old data; zero is valid.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    object_info(program, &mut info)?;
    Ok(info.recursion_misses)
}

/// An array map of `u64` created with `BPF_F_MMAPABLE`, mapped read-only:
/// its counts are read from memory, with no syscall (a map syscall holds
/// the CPU's `bpf_prog_active`, so probes that fire on that CPU meanwhile
/// are skipped and counted as misses).
#[derive(Debug)]
pub struct MappedCounts {
    counts: std::ptr::NonNull<u64>,
    len: usize,
    bytes: std::num::NonZeroUsize,
}

// SAFETY: a read-only shared mapping; reads are volatile.
unsafe impl Send for MappedCounts {}
// SAFETY: as above.
unsafe impl Sync for MappedCounts {}

impl MappedCounts {
    /// Maps the array `map` (named `name`, of `len` entries).
    pub fn new(name: &str, map: &Map, len: usize) -> Result<Self, Error> {
        let fd = map_fd(name, map)?;
        let io = |cause| Error::Io {
            path: format!("map {name} (mmap)").into(),
            cause,
        };
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as usize;
        let bytes = (len * 8).div_ceil(page) * page;
        let bytes = std::num::NonZeroUsize::new(bytes).ok_or_else(|| io(std::io::Error::other("empty")))?;
        // SAFETY: a new shared read-only mapping of the whole map; the
        // kernel keeps the map alive as long as the mapping.
        let counts = unsafe {
            nix::sys::mman::mmap(
                None,
                bytes,
                nix::sys::mman::ProtFlags::PROT_READ,
                nix::sys::mman::MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .map_err(|errno| io(errno.into()))?;
        Ok(Self {
            counts: counts.cast(),
            len,
            bytes,
        })
    }

    /// The count at `index` now (0 past the end). An acquire load: a
    /// count read after another sees every change made before the one
    /// that other read saw (the programs' atomic adds are ordered).
    pub fn get(&self, index: usize) -> u64 {
        if index >= self.len {
            return 0;
        }
        // SAFETY: an aligned u64 within the mapping, which lives as long
        // as self; the programs change it only with atomic adds.
        unsafe { std::sync::atomic::AtomicU64::from_ptr(self.counts.as_ptr().add(index)) }
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Every count now.
    pub fn all(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len).map(|index| self.get(index))
    }
}

impl Drop for MappedCounts {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        let _ = unsafe { nix::sys::mman::munmap(self.counts.cast(), self.bytes.get()) };
    }
}

/// A descriptor for the thread `tid` (of this pid namespace) itself, not
/// its thread group's leader (`PIDFD_THREAD`, Linux 6.9+; before it only a
/// thread group's leader has one); `None` if it is gone.
fn thread_pidfd(tid: i32) -> Result<Option<OwnedFd>, Error> {
    const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;
    // SAFETY: pidfd_open takes a pid and flags, and returns a new
    // descriptor or -1.
    let mut pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid, PIDFD_THREAD) };
    if pidfd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above.
        pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid, 0) };
    }
    if pidfd < 0 {
        let cause = std::io::Error::last_os_error();
        return match cause.raw_os_error() {
            Some(libc::ESRCH) => Ok(None),
            _ => Err(Error::Io {
                path: format!("pidfd_open({tid})").into(),
                cause,
            }),
        };
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) }))
}

/// The value of the task storage map `map` for the thread `tid` (of this
/// pid namespace): `None` if it has none, or is gone.
pub fn task_storage_lookup<T: aya::Pod>(map: BorrowedFd<'_>, tid: i32) -> Result<Option<T>, Error> {
    let mut value = std::mem::MaybeUninit::<T>::zeroed();
    let found = task_storage_element(
        map,
        tid,
        bpf_cmd::BPF_MAP_LOOKUP_ELEM,
        value.as_mut_ptr() as u64,
        0,
        &[libc::ENOENT, libc::ESRCH],
    )?;
    // SAFETY: the kernel wrote a whole value; T is Pod.
    Ok(found.then(|| unsafe { value.assume_init() }))
}

/// Gives the thread `tid` (of this pid namespace) the value `value` in the
/// task storage map `map`, unless it has one.
pub fn task_storage_insert<T: aya::Pod>(map: BorrowedFd<'_>, tid: i32, value: &T) -> Result<(), Error> {
    task_storage_element(
        map,
        tid,
        bpf_cmd::BPF_MAP_UPDATE_ELEM,
        std::ptr::from_ref(value) as u64,
        u64::from(aya_obj::generated::BPF_NOEXIST),
        &[libc::EEXIST],
    )
    .map(drop)
}

/// Runs `command` (a map element command) on the element of the task
/// storage map `map` for the thread `tid`, keyed by its pidfd, with
/// `value` and `flags`. False when the thread is gone or the kernel
/// answered one of the `expected` errors.
fn task_storage_element(
    map: BorrowedFd<'_>,
    tid: i32,
    command: bpf_cmd,
    value: u64,
    flags: u64,
    expected: &[i32],
) -> Result<bool, Error> {
    let Some(pidfd) = thread_pidfd(tid)? else {
        return Ok(false);
    };
    let key: i32 = pidfd.as_raw_fd();
    // SAFETY: plain old data; zero is valid for every field.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the element member of a zeroed union.
    let element = unsafe { &mut attr.__bindgen_anon_2 };
    element.map_fd = map.as_raw_fd() as u32;
    element.key = std::ptr::from_ref(&key) as u64;
    element.__bindgen_anon_1.value = value;
    element.flags = flags;
    match bpf(command, &mut attr, "a task storage element") {
        Ok(_) => Ok(true),
        Err(Error::Io { cause, .. })
            if cause
                .raw_os_error()
                .is_some_and(|errno| expected.contains(&errno)) =>
        {
            Ok(false)
        }
        Err(err) => Err(err),
    }
}

/// Tests only: a one-element array map whose element is rewritten whole by
/// each [`BusyMap::rewrite`], a BPF map syscall that holds the CPU's
/// `bpf_prog_active` while the kernel copies the value in, so that the
/// kernel skips kprobe-type BPF programs that fire on that CPU meanwhile
/// (in an interrupt).
#[derive(Debug)]
pub struct BusyMap {
    map: OwnedFd,
    value: Vec<u8>,
}

impl BusyMap {
    pub fn new(value_size: u32) -> Result<Self, Error> {
        // SAFETY: plain old data; zero is valid for every field.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the map-creation member of a zeroed union.
        let create = unsafe { &mut attr.__bindgen_anon_1 };
        create.map_type = aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32;
        create.key_size = 4;
        create.value_size = value_size;
        create.max_entries = 1;
        let map = bpf_new_fd(bpf_cmd::BPF_MAP_CREATE, &mut attr, "a busy map")?;
        Ok(Self {
            map,
            value: vec![0x5a; value_size as usize],
        })
    }

    pub fn rewrite(&self) -> Result<(), Error> {
        let key: u32 = 0;
        // SAFETY: plain old data; zero is valid for every field.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the element member of a zeroed union.
        let element = unsafe { &mut attr.__bindgen_anon_2 };
        element.map_fd = self.map.as_raw_fd() as u32;
        element.key = std::ptr::from_ref(&key) as u64;
        element.__bindgen_anon_1.value = self.value.as_ptr() as u64;
        bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr, "a busy map's element").map(drop)
    }
}

/// How to load a program.
#[derive(Clone, Copy, Debug)]
pub enum LoadAs {
    /// For a kprobe.multi link.
    KprobeMulti,
    /// For a kprobe.session link, calling these kfuncs.
    KprobeSession(SessionKfuncs),
    /// For a perf event: a kprobe or kretprobe.
    Kprobe,
    /// For [`RawTracepointLink`].
    RawTracepoint,
    /// For [`TaskIterator`], against `bpf_iter_task` (BTF id `btf_id`).
    TaskIterator { btf_id: u32 },
}

/// Loads `instructions` (of the program `program`) as `how` says.
fn load(instructions: &[bpf_insn], program: &str, how: LoadAs) -> Result<OwnedFd, Error> {
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
        LoadAs::KprobeSession(_) => {
            load.prog_type = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32;
            load.expected_attach_type = BPF_TRACE_KPROBE_SESSION;
        }
        LoadAs::Kprobe => load.prog_type = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32,
        LoadAs::RawTracepoint => load.prog_type = bpf_prog_type::BPF_PROG_TYPE_RAW_TRACEPOINT as u32,
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
        LoadAs::KprobeSession(_) => "BPF_PROG_LOAD (kprobe.session)",
        LoadAs::Kprobe => "BPF_PROG_LOAD (kprobe)",
        LoadAs::RawTracepoint => "BPF_PROG_LOAD (raw tracepoint)",
        LoadAs::TaskIterator { .. } => "BPF_PROG_LOAD (iter/task)",
    };
    if let Ok(fd) = bpf_new_fd(bpf_cmd::BPF_PROG_LOAD, &mut attr, what) {
        return Ok(fd);
    }
    let mut log = vec![0u8; 1 << 16];
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

fn object_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> Result<(), Error> {
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

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSection as _};

    use crate::counters::OBJECT;

    #[test]
    fn the_embedded_object_has_every_program_and_map_and_no_dwarf() {
        let file = object::File::parse(OBJECT).expect("the embedded object is ELF");
        let dwarf: Vec<&str> = file
            .sections()
            .filter_map(|section| section.name().ok())
            .filter(|name| name.starts_with(".debug") || name.starts_with(".rel.debug"))
            .collect();
        assert!(dwarf.is_empty(), "DWARF left in the embedded object: {dwarf:?}");
        let parsed = aya_obj::Object::parse(OBJECT).expect("aya-obj parses the embedded object");
        for program in [
            "lsw_enter",
            "lsw_exit",
            "lsw_session",
            "lsw_tick",
            "lsw_switch",
            "lsw_scan_tasks",
            "lsw_list_frames",
            "lsw_noop_enter",
            "lsw_noop_exit",
        ] {
            assert!(parsed.programs.contains_key(program), "no program {program}");
        }
        assert_eq!(parsed.maps.len(), 18, "maps: {:?}", parsed.maps.keys());
        assert!(parsed.maps.values().all(|map| map.data().is_empty()));
    }
}
