//! Entry/exit counters for every probed function of one kernel module.
//!
//! `lsw_enter` runs on a kprobe at a function's entry and `lsw_exit` on a
//! kretprobe at its return; both find the function from the probed address
//! (`bpf_get_func_ip`), so one program pair serves every function.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_probe_read_kernel},
    macros::{kprobe, kretprobe, map},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
};
use loopswap_common::{
    FUNCTION_INSTANCE_ENTRY, FunctionInfo, IDLE_TID_FLAG, InflightKey, InflightValue, MAX_FUNCTIONS,
    MAX_INFLIGHT_ENTRIES, MAX_UNREAD_THREADS, MIXED_INSTANCES, NO_INSTANCE, event,
};

/// Function entry address (and entry+4 past an ENDBR) → function index.
#[map]
static FUNC_BY_ADDR: HashMap<u64, FunctionInfo> = HashMap::with_max_entries(2 * MAX_FUNCTIONS, 0);

/// (thread, function) → frames of that function the thread is inside now.
#[map]
static INFLIGHT: HashMap<InflightKey, InflightValue> = HashMap::with_max_entries(MAX_INFLIGHT_ENTRIES, 0);

/// One record (the instance id) each time a thread leaves a function
/// entirely: wakes a controller waiting for quiescence without polling.
#[map]
static LEFT: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Calls per function since attach.
#[map]
static CALLS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_FUNCTIONS, 0);

/// Special events, see `loopswap_common::event`.
#[map]
static EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(event::COUNT, 0);

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; BPF programs do not nest on one CPU.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn current_key(ctx_ip: u64) -> Option<(InflightKey, u32)> {
    // SAFETY: a plain map lookup of a u64 key.
    let info = match unsafe { FUNC_BY_ADDR.get(ctx_ip) } {
        Some(info) => *info,
        None => {
            bump(&EVENTS, event::UNKNOWN_ADDRESS);
            return None;
        }
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    let tid = if tid == 0 {
        // SAFETY: helper without arguments.
        IDLE_TID_FLAG | unsafe { bpf_get_smp_processor_id() }
    } else {
        tid
    };
    Some((
        InflightKey {
            tid,
            func: info.index,
        },
        info.flags,
    ))
}

#[kprobe]
pub fn lsw_enter(ctx: ProbeContext) -> u32 {
    // SAFETY: the helper is valid in kprobe programs (Linux 5.15+).
    let ip = unsafe { aya_ebpf::helpers::generated::bpf_get_func_ip(ctx.as_ptr()) };
    let Some((key, flags)) = current_key(ip) else {
        return 0;
    };
    bump(&CALLS, key.func);
    let instance = if flags & FUNCTION_INSTANCE_ENTRY != 0 {
        // The first argument points at a struct lsw_instance; its first
        // field is the id.
        match ctx.arg::<*const u32>(0) {
            // SAFETY: bpf_probe_read_kernel checks the address.
            Some(ptr) => unsafe { bpf_probe_read_kernel(ptr) }.unwrap_or(NO_INSTANCE),
            None => NO_INSTANCE,
        }
    } else {
        NO_INSTANCE
    };
    match INFLIGHT.get_ptr_mut(key) {
        // SAFETY: only this thread writes its own key (see InflightKey).
        Some(value) => unsafe {
            (*value).depth += 1;
            if (*value).instance != instance {
                (*value).instance = MIXED_INSTANCES;
            }
        },
        None => {
            let value = InflightValue { depth: 1, instance };
            if INFLIGHT.insert(key, value, BPF_NOEXIST as u64).is_err() {
                bump(&EVENTS, event::INFLIGHT_MAP_FULL);
            }
        }
    }
    0
}

#[kretprobe]
pub fn lsw_exit(ctx: RetProbeContext) -> u32 {
    // SAFETY: in a kretprobe the helper returns the probed function's entry.
    let ip = unsafe { aya_ebpf::helpers::generated::bpf_get_func_ip(ctx.as_ptr()) };
    let Some((key, _)) = current_key(ip) else { return 0 };
    match INFLIGHT.get_ptr_mut(key) {
        Some(value) => {
            // SAFETY: only this thread writes its own key (see InflightKey).
            let (depth, instance) = unsafe { ((*value).depth, (*value).instance) };
            if depth <= 1 {
                let _ = INFLIGHT.remove(key);
                // A full ring only delays the waiter until its next poll.
                let _ = LEFT.output::<u32>(instance, 0);
            } else {
                unsafe { (*value).depth -= 1 };
            }
        }
        None => bump(&EVENTS, event::UNMATCHED_RETURN),
    }
    0
}

/// Threads whose kernel stacks could not be read (they were on a CPU),
/// added by userspace with 0; set to 1 once a timer tick finds the thread
/// in user mode, where it holds no kernel frame at all.
#[map]
static USER_TICKS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_UNREAD_THREADS, 0);

/// On `account_process_tick(p, user_tick)`, run by every timer tick in the
/// interrupted thread's context.
#[kprobe]
pub fn lsw_tick(ctx: ProbeContext) -> u32 {
    if ctx.arg::<i32>(1).unwrap_or(0) == 0 {
        return 0;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(seen) = USER_TICKS.get_ptr_mut(tid) {
        // SAFETY: a u32 slot of our own map; racing writers all write 1.
        unsafe { *seen = 1 };
    }
    0
}

/// The probe benchmark's baseline: the cost of a kprobe/kretprobe pair
/// running programs that do nothing (`loopswap bench-probe`).
#[kprobe]
pub fn lsw_noop_enter(_ctx: ProbeContext) -> u32 {
    0
}

#[kretprobe]
pub fn lsw_noop_exit(_ctx: RetProbeContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
