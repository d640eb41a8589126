//! Shared helpers for the netns tests.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fustian::lab::Topology;

/// The fustian binary under test.
pub(crate) const EXE: &str = env!("CARGO_BIN_EXE_fustian");

/// Returns a namespace prefix unique to this test process and call (at most 8 characters).
pub(crate) fn prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}x{}",
        std::process::id() % 10_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Returns true (after saying so) when the environment asks to skip netns tests.
pub(crate) fn skip(test: &str) -> bool {
    if std::env::var_os("FUSTIAN_SKIP_NETNS").is_some() {
        eprintln!("SKIPPED {test}: FUSTIAN_SKIP_NETNS is set");
        return true;
    }
    false
}

/// Builds a topology or fails naming the missing prerequisite.
pub(crate) fn topology() -> Topology {
    match Topology::build(&prefix()) {
        Ok(t) => t,
        Err(e) => panic!("netns test prerequisite missing or setup failed: {e}"),
    }
}

/// Starts fustian on both nodes with `extra` flags.
pub(crate) fn start_both(topo: &mut Topology, extra: &[&str]) {
    for i in 0..2 {
        let args = topo.node_args(i, extra);
        if let Err(e) = topo.start_node(i, EXE, &args) {
            panic!("{e}");
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub(crate) fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}
