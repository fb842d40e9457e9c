//! The clock conntrack and affinity entries are stamped with, for tests that write entries
//! last used some time ago.
use std::time::Duration;

use lb::dataplane::conntrack::monotonic_ns;

/// CLOCK_MONOTONIC in nanoseconds, once it reads at least `past`, so that `now - past` is a
/// time this machine has seen. The clock starts at boot: a freshly booted VM (`cargo xtask
/// vm-test`) has not been up for the minutes such entries go back, so this waits until it has.
pub fn monotonic_ns_after(past: Duration) -> u64 {
    let past_ns = past.as_nanos() as u64;
    let now = monotonic_ns();
    if now < past_ns {
        let wait = Duration::from_nanos(past_ns - now);
        eprintln!("waiting {wait:.0?}: entries from {past:?} ago need the machine up that long");
        std::thread::sleep(wait);
    }
    monotonic_ns()
}
