//! Root-only end-to-end tests in network namespaces.
fn main() {}
