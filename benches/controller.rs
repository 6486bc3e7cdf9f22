//! Pull-secret sync against the real API server (placeholder; filled in by the next commit).

fn main() {}
