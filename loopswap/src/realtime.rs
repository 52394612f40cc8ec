//! The calling thread at real-time priority while a swap's gate is closed.
//!
//! Every call to the instance waits at the gate until the controller opens
//! it, and the controller's own steps there take well under a millisecond
//! each. Under load, though, an ordinary (`SCHED_OTHER`) controller is
//! preempted by the very workload it holds up: the blocked callers' own
//! siblings, kernel workers, other processes. On the 2-vCPU test VM under
//! fio single steps (closing the gate, the commit) were seen to take 8–14 ms
//! instead of 0.4 ms. `SCHED_FIFO` at the lowest real-time priority is
//! preempted by no ordinary task and by every real-time kernel thread
//! (interrupt threads run at 50, the watchdog and migration threads at 99).
//!
//! Nothing in the section spins: every wait in it sleeps (the drain in the
//! kernel, the wait for the counters between looks), and the kernel's own
//! real-time throttling bounds any section that did not.

use std::io;

/// The lowest real-time priority: above every ordinary task, below every
/// real-time kernel thread.
const PRIORITY: libc::c_int = 1;

/// The kernel's `struct sched_param`. musl's `sched_*` wrappers of these
/// calls return ENOSYS (POSIX means the process, Linux the thread), and
/// its `sched_param` is larger, so the system calls are made directly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct SchedParam {
    priority: libc::c_int,
}

/// The calling thread's policy (with `SCHED_RESET_ON_FORK` if set) and
/// parameters.
fn current() -> io::Result<(libc::c_int, SchedParam)> {
    let mut param = SchedParam::default();
    // SAFETY: queries of the calling thread (pid 0); the parameter is the
    // kernel's layout and outlives the call.
    let policy = unsafe { libc::syscall(libc::SYS_sched_getscheduler, 0) };
    if policy < 0 || unsafe { libc::syscall(libc::SYS_sched_getparam, 0, &raw mut param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((policy as libc::c_int, param))
}

/// Sets the calling thread's policy and parameters.
fn set(policy: libc::c_int, param: SchedParam) -> io::Result<()> {
    // SAFETY: the calling thread (pid 0); the parameter is the kernel's
    // layout and outlives the call.
    if unsafe { libc::syscall(libc::SYS_sched_setscheduler, 0, policy, &raw const param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// While it lives, the calling thread runs `SCHED_FIFO` at [`PRIORITY`]
/// (children it forks do not inherit it); dropped, its policy and priority
/// are what they were.
#[derive(Debug)]
pub struct RealtimeSection {
    /// The policy and parameters to restore; `None` when nothing was
    /// changed (already real-time, or the control).
    previous: Option<(libc::c_int, SchedParam)>,
    /// The thread runs at real-time priority (raised here, or already).
    realtime: bool,
}

impl RealtimeSection {
    /// Raises the calling thread to real-time priority. Not allowed (no
    /// `CAP_SYS_NICE`, or a cgroup without real-time runtime), it says
    /// why; the caller goes on at the thread's own priority, as correct,
    /// only more exposed to preemption. A thread already real-time is left
    /// as it is.
    pub fn enter() -> io::Result<Self> {
        let (policy, param) = current()?;
        let base = policy & !libc::SCHED_RESET_ON_FORK;
        if base == libc::SCHED_FIFO || base == libc::SCHED_RR {
            return Ok(Self {
                previous: None,
                realtime: true,
            });
        }
        set(
            libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK,
            SchedParam { priority: PRIORITY },
        )?;
        Ok(Self {
            previous: Some((policy, param)),
            realtime: true,
        })
    }

    /// A section that changes nothing (the control in benchmarks).
    pub fn ordinary() -> Self {
        Self {
            previous: None,
            realtime: false,
        }
    }

    /// Whether the thread runs at real-time priority in this section.
    pub fn is_realtime(&self) -> bool {
        self.realtime
    }
}

impl Drop for RealtimeSection {
    fn drop(&mut self) {
        if let Some((policy, param)) = self.previous.take() {
            // A real-time thread may always lower its own priority.
            let _ = set(policy, param);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_before_the_section_is_the_policy_after_it() {
        let before = current().expect("the thread's policy").0;
        match RealtimeSection::enter() {
            Ok(section) => {
                if section.is_realtime() {
                    let inside = current().expect("the thread's policy").0 & !libc::SCHED_RESET_ON_FORK;
                    assert_eq!(inside, libc::SCHED_FIFO);
                }
            }
            // Unprivileged test runs are not allowed real-time priority.
            Err(err) => assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}"),
        }
        assert_eq!(current().expect("the thread's policy").0, before);
    }
}
