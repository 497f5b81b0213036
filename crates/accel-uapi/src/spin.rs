//! How long a thread polls for an event before it blocks: one policy for every thread of
//! accel that waits on another (the scheduler's idle slots, the cuda driver's replies, the
//! vulkan driver's completions, a client's ring in its default wait mode). As CUDA's `CU_CTX_SCHED_AUTO` chooses between spinning and
//! blocking by the machine's size: a wake-up from a blocked wait costs tens of microseconds,
//! a poll only the core it runs on — which small machines cannot spare.

use std::time::Duration;

/// CPUs from which a machine has cores to spare for polling.
pub const SPARE_CPUS: usize = 8;

/// Whether this machine has cores to spare for polling (at least [`SPARE_CPUS`]).
pub fn cores_to_spare() -> bool {
    std::thread::available_parallelism().map_or(1, |n| n.get()) >= SPARE_CPUS
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
}
