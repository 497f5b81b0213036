//! How long a thread polls for an event before it blocks: one policy for every thread of
//! accel that waits on another (the scheduler's idle slots, the cuda driver's replies, the
//! vulkan driver's completions, a client's ring in its default wait mode). As CUDA's `CU_CTX_SCHED_AUTO` chooses between spinning and
//! blocking by the machine's size: a wake-up from a blocked wait costs tens of microseconds,
//! a poll only the core it runs on — which small machines cannot spare.

use std::time::Duration;

/// CPUs from which a machine has cores to spare for polling.
pub const SPARE_CPUS: usize = 8;

/// A ring client's default wait spins this long where the machine has a CPU for it
/// ([`ring_wait`]).
pub const RING_WAIT_LONG: Duration = Duration::from_millis(5);
/// … and this long where it has not.
pub const RING_WAIT_SHORT: Duration = Duration::from_micros(50);
/// Threads a ring's job in flight keeps busy besides its client's own, where a client spins:
/// the daemon's slot thread and a driver's (the cuda worker's stream thread), the device's
/// poller among them all.
pub const RELAY_THREADS: usize = 2;

/// How long the client of a ring spins for its completions before it blocks, by default,
/// when `busy` rings (its own among them) have jobs in flight on a machine of `cpus` CPUs:
/// CUDA's `CU_CTX_SCHED_AUTO` across processes. CUDA spins while its contexts are no more
/// than the CPUs, since a blocked wait's wake-up costs tens of microseconds; here every
/// spinning client also needs the daemon's threads that relay its jobs to have a CPU, so
/// long ([`RING_WAIT_LONG`]) while each busy ring and its [`RELAY_THREADS`] fit, and only on
/// a machine with cores to spare ([`SPARE_CPUS`]); else short ([`RING_WAIT_SHORT`]).
///
/// Measured on the H200 machine (16 CPUs) with the spin fixed instead: 5 ms took one
/// client's 100 µs kernels from 20.6 % over CUDA in-process to 10.5 %, and 16 clients' 10 µs
/// kernels from 101,634 to 21,172 a second.
pub fn ring_wait(busy: usize, cpus: usize) -> Duration {
    if cpus >= SPARE_CPUS && busy.max(1).saturating_mul(1 + RELAY_THREADS) <= cpus {
        RING_WAIT_LONG
    } else {
        RING_WAIT_SHORT
    }
}

/// The CPUs this process may run on (its affinity mask and cgroup quota).
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Whether this machine has cores to spare for polling (at least [`SPARE_CPUS`]).
pub fn cores_to_spare() -> bool {
    cpus() >= SPARE_CPUS
}

/// How long to poll: `$var` microseconds (at most `max`) where it is set to a number; else
/// `large` on machines with cores to spare and `small` on smaller ones, where the polling
/// thread would take the core that the thread it waits for needs.
pub fn budget(var: &str, large: Duration, small: Duration, max: Duration) -> Duration {
    choose(std::env::var(var).ok().as_deref(), cores_to_spare(), [large, small, max])
}

/// [`budget`] for the variable's `value` on a machine with or without cores to `spare`.
fn choose(value: Option<&str>, spare: bool, [large, small, max]: [Duration; 3]) -> Duration {
    match value.and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(us) => Duration::from_micros(us).min(max),
        None if spare => large,
        None => small,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_wins_up_to_the_cap_and_else_the_machine_decides() {
        let (large, small, max) = (Duration::from_micros(50), Duration::ZERO, Duration::from_millis(10));
        let limits = [large, small, max];
        for spare in [false, true] {
            assert_eq!(choose(Some("120"), spare, limits), Duration::from_micros(120));
            assert_eq!(choose(Some(" 0 "), spare, limits), Duration::ZERO);
            assert_eq!(choose(Some("99999999"), spare, limits), max);
            let by_machine = if spare { large } else { small };
            assert_eq!(choose(Some("fast"), spare, limits), by_machine);
            assert_eq!(choose(Some(""), spare, limits), by_machine);
            assert_eq!(choose(None, spare, limits), by_machine);
        }
        let here = if cores_to_spare() { large } else { small };
        assert_eq!(budget("ACCEL_TEST_SPIN_UNSET_US", large, small, max), here);
    }

    #[test]
    fn a_ring_client_spins_long_while_it_and_its_relays_have_cpus() {
        // Small machines never: the client would take the core its daemon needs.
        for cpus in [1, 2, 4, 7] {
            assert_eq!(ring_wait(1, cpus), RING_WAIT_SHORT, "{cpus} CPUs");
        }
        // 16 CPUs: five busy rings and their relays fit (15), six do not (18).
        assert_eq!(ring_wait(0, 16), RING_WAIT_LONG);
        assert_eq!(ring_wait(1, 16), RING_WAIT_LONG);
        assert_eq!(ring_wait(5, 16), RING_WAIT_LONG);
        assert_eq!(ring_wait(6, 16), RING_WAIT_SHORT);
        assert_eq!(ring_wait(16, 16), RING_WAIT_SHORT);
        assert_eq!(ring_wait(usize::MAX, 1024), RING_WAIT_SHORT);
        // 8 CPUs: two fit (6), three do not (9).
        assert_eq!(ring_wait(2, 8), RING_WAIT_LONG);
        assert_eq!(ring_wait(3, 8), RING_WAIT_SHORT);
    }
}
