//! A fixed workload for counting instructions per decision with callgrind, which gives the same
//! figure on a busy machine as on an idle one (criterion's wall-clock figures do not):
//!
//! ```text
//! cargo build --release --example decision_instructions
//! valgrind --tool=callgrind target/release/examples/decision_instructions parse
//! valgrind --tool=callgrind target/release/examples/decision_instructions decide
//! valgrind --tool=callgrind target/release/examples/decision_instructions none
//! ```
//! (parse total − none total) / 400,000 is the instructions per parse; likewise for decide.

use std::hint::black_box;

use registry_gate::image::Reference;
use registry_gate::policy::{Namespace, Policy};

const ROUNDS: usize = 100_000;
const IMAGES: [&str; 4] =
    ["nginx", "ghcr.io/acme/api:1.2.3", "quay.io/unknown/app:1", "acme.azurecr.io/api:v2"];

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let text =
        std::fs::read_to_string("policy/example-all-types.yaml").expect("run from the repository root");
    let policy = Policy::parse(&text).expect("the example policy is valid");
    for image in IMAGES {
        let reference = Reference::parse(image).expect("valid image");
        for _ in 0..ROUNDS {
            match mode.as_str() {
                "parse" => {
                    black_box(Reference::parse(black_box(image)).is_ok());
                }
                "decide" => {
                    black_box(policy.decide(black_box(&reference), &Namespace::named("default")));
                }
                _ => {}
            }
        }
    }
}
