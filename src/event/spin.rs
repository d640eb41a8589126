//! Adaptive busy-polling before a worker blocks (`--busy-poll USECS`).
//!
//! Waking a blocked thread costs an interrupt to a halted CPU and a context switch, several
//! microseconds each on a virtual machine, paid on every hop of a request-response exchange.
//! A worker that expects its next packet soon can instead look again for a short while before
//! it blocks. [`Spin`] decides how long, the way KVM's halt polling does: the window starts at
//! zero, grows (doubling from [`START`] up to the configured maximum) each time a wait (the
//! look-ahead and the blocking that followed it) ended within the maximum, so that a longer
//! look would have caught it, and shrinks (halving, down to zero) each time a wait outlasted
//! the maximum or ran into the stop-flag timeout. An idle
//! worker therefore blocks at once; only one whose traffic arrives in bursts with short gaps
//! keeps looking. While looking, the worker yields its CPU after every look
//! (`sched_yield`), so a thread with work on the same CPU (a pod, the other node) runs first.
//!
//! With a maximum of zero (the default) nothing changes: the worker blocks every time.

use std::time::Duration;

/// The first non-zero window.
pub const START: Duration = Duration::from_micros(10);

/// The busy-poll window of one worker.
#[derive(Debug, Clone, Copy)]
pub struct Spin {
    max: Duration,
    window: Duration,
}

impl Spin {
    /// A window that never exceeds `max` (zero: never look before blocking).
    pub const fn new(max: Duration) -> Self {
        Self {
            max,
            window: Duration::ZERO,
        }
    }

    /// Whether busy-polling is on at all (a maximum above zero): without it the loops read no
    /// clock for it.
    pub const fn enabled(&self) -> bool {
        !self.max.is_zero()
    }

    /// How long to keep looking for work before blocking.
    pub const fn window(&self) -> Duration {
        self.window
    }

    /// A wait that blocked took `waited` from the start of its look-ahead; `woken` says whether
    /// work ended it (not the timeout). A look-ahead that found work is not reported: the
    /// window was long enough.
    pub fn blocked(&mut self, waited: Duration, woken: bool) {
        if self.max.is_zero() {
            return;
        }
        if woken && waited <= self.max {
            self.window = (self.window * 2).clamp(START.min(self.max), self.max);
        } else {
            self.shrink();
        }
    }

    fn shrink(&mut self) {
        self.window /= 2;
        if self.window < START {
            self.window = Duration::ZERO;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(50);

    #[test]
    fn off_never_looks() {
        let mut s = Spin::new(Duration::ZERO);
        for _ in 0..10 {
            s.blocked(Duration::from_micros(1), true);
        }
        assert_eq!(s.window(), Duration::ZERO);
    }

    #[test]
    fn short_waits_grow_the_window_up_to_the_maximum() {
        let mut s = Spin::new(MAX);
        assert_eq!(s.window(), Duration::ZERO, "an idle worker blocks at once");
        s.blocked(Duration::from_micros(20), true);
        assert_eq!(s.window(), START);
        s.blocked(Duration::from_micros(20), true);
        assert_eq!(s.window(), 2 * START);
        for _ in 0..10 {
            s.blocked(Duration::from_micros(20), true);
        }
        assert_eq!(s.window(), MAX);
    }

    #[test]
    fn long_waits_and_timeouts_shrink_it_to_zero() {
        let mut s = Spin::new(MAX);
        for _ in 0..10 {
            s.blocked(Duration::from_micros(5), true);
        }
        s.blocked(Duration::from_millis(3), true);
        assert_eq!(s.window(), MAX / 2);
        s.blocked(Duration::from_micros(51), true);
        assert_eq!(s.window(), MAX / 4);
        // The stop-flag timeout is no traffic at all, however short the wait seemed.
        s.blocked(Duration::from_micros(1), false);
        assert_eq!(s.window(), Duration::ZERO, "below START it stops");
    }
}
