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
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id},
    macros::{kprobe, kretprobe, map},
    maps::{HashMap, PerCpuArray},
    programs::{ProbeContext, RetProbeContext},
};
use loopswap_common::{IDLE_TID_FLAG, InflightKey, MAX_FUNCTIONS, MAX_INFLIGHT_ENTRIES, event};

/// Function entry address (and entry+4 past an ENDBR) → function index.
#[map]
static FUNC_BY_ADDR: HashMap<u64, u32> = HashMap::with_max_entries(2 * MAX_FUNCTIONS, 0);

/// (thread, function) → frames of that function the thread is inside now.
#[map]
static INFLIGHT: HashMap<InflightKey, u64> = HashMap::with_max_entries(MAX_INFLIGHT_ENTRIES, 0);

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
fn current_key(ctx_ip: u64) -> Option<InflightKey> {
    // SAFETY: a plain map lookup of a u64 key.
    let func = match unsafe { FUNC_BY_ADDR.get(ctx_ip) } {
        Some(func) => *func,
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
    Some(InflightKey { tid, func })
}

#[kprobe]
pub fn lsw_enter(ctx: ProbeContext) -> u32 {
    // SAFETY: the helper is valid in kprobe programs (Linux 5.15+).
    let ip = unsafe { aya_ebpf::helpers::generated::bpf_get_func_ip(ctx.as_ptr()) };
    let Some(key) = current_key(ip) else { return 0 };
    bump(&CALLS, key.func);
    match INFLIGHT.get_ptr_mut(key) {
        // SAFETY: only this thread writes its own key (see InflightKey).
        Some(depth) => unsafe { *depth += 1 },
        None => {
            if INFLIGHT.insert(key, 1, BPF_NOEXIST as u64).is_err() {
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
    let Some(key) = current_key(ip) else { return 0 };
    match INFLIGHT.get_ptr_mut(key) {
        Some(depth) => {
            // SAFETY: only this thread writes its own key (see InflightKey).
            if unsafe { *depth } <= 1 {
                let _ = INFLIGHT.remove(key);
            } else {
                unsafe { *depth -= 1 };
            }
        }
        None => bump(&EVENTS, event::UNMATCHED_RETURN),
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
