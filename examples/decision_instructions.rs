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
//!
//! With a second argument `mix`, the workload is criterion's instead (`cargo bench --bench
//! decision`): its 10,000-registry policy and its 41 images, 20,000 rounds, so
//! (total − none total) / 820,000 per image.

use std::hint::black_box;

use registry_gate::image::Reference;
use registry_gate::policy::{Namespace, Policy};

#[path = "../benches/decision/mix.rs"]
mod mix;

const ROUNDS: usize = 100_000;
const IMAGES: [&str; 4] =
    ["nginx", "ghcr.io/acme/api:1.2.3", "quay.io/unknown/app:1", "acme.azurecr.io/api:v2"];
const MIX_SIZE: usize = 10_000;
const MIX_ROUNDS: usize = 20_000;

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let (text, images, rounds) = match std::env::args().nth(2).as_deref() {
        Some("mix") => (mix::policy_text(MIX_SIZE), mix::images(MIX_SIZE), MIX_ROUNDS),
        _ => (
            std::fs::read_to_string("policy/example-all-types.yaml").expect("run from the repository root"),
            IMAGES.map(str::to_owned).to_vec(),
            ROUNDS,
        ),
    };
    let policy = Policy::parse(&text).expect("the policy is valid");
    let references: Vec<Reference<'_>> =
        images.iter().map(|image| Reference::parse(image).expect("valid image")).collect();
    let namespace = Namespace::named("default");
    for _ in 0..rounds {
        for (image, reference) in images.iter().zip(&references) {
            match mode.as_str() {
                "parse" => {
                    black_box(Reference::parse(black_box(image)).is_ok());
                }
                "decide" => {
                    black_box(policy.decide(black_box(reference), &namespace));
                }
                _ => {}
            }
        }
    }
}
