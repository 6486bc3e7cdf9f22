//! Loads one policy file a number of times, for profiling the load (parse, validate, compile)
//! with callgrind or perf, which criterion's timing loop hides:
//!
//! ```text
//! cargo build --release --example policy_load
//! valgrind --tool=callgrind target/release/examples/policy_load POLICY_FILE [ROUNDS]
//! ```

use std::hint::black_box;

use registry_gate::policy::Policy;

// Built for the image's target, it allocates as the shipped executable does (src/main.rs).
#[cfg(all(target_env = "musl", target_arch = "x86_64"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: policy_load POLICY_FILE [ROUNDS]")?;
    let rounds: usize = args.next().map_or(Ok(1), |r| r.parse())?;
    let text = std::fs::read_to_string(&path)?;
    for _ in 0..rounds {
        let policy = Policy::parse(black_box(&text))?;
        black_box(&policy);
    }
    Ok(())
}
