//! What each step of taking a one-service delta costs at 10,000 services x 10 backends:
//! the whole-config way (clone, apply, fingerprint, validate) and the indexed way
//! ([`ConfigIndex::step`] and its validation). `cargo run --release -p sockmesh-model
//! --example apply_cost`; the numbers go in docs/bench.md ("Scale").

use std::fmt::Write as _;
use std::time::Instant;

use sockmesh_model::{parse_config, ConfigDelta, ConfigIndex, MeshConfig};

const SERVICES: usize = 10_000;
const BACKENDS: usize = 10;

/// The mesh, with the middle service's first backend at `weight`.
fn mesh(weight: u32) -> MeshConfig {
    let mut y = String::from("version: 1\nservices:\n");
    for i in 0..SERVICES {
        let (hi, lo) = (100 + i / 250, i % 250 + 1);
        let _ = writeln!(
            y,
            "  - name: scale-{i}\n    vip: 127.100.{hi}.{lo}\n    port: 9100\n    backends:"
        );
        for b in 0..BACKENDS {
            let w = if i == SERVICES / 2 && b == 0 {
                weight
            } else {
                1
            };
            let port = 9000 + i % 250;
            let _ = writeln!(
                y,
                "      - {{addr: \"127.0.{}.{}:{port}\", weight: {w}}}",
                i / 250,
                b + 31
            );
        }
    }
    parse_config(&y).expect("the generated mesh is valid")
}

fn main() {
    let base = mesh(1);
    let next = mesh(2);
    let index = ConfigIndex::of(&base);
    for round in 0..3 {
        let delta = ConfigDelta::between(&base, &next).expect("same order");
        let t = Instant::now();
        let copy = base.clone();
        let clone = t.elapsed();
        let t = Instant::now();
        let after = delta.apply(copy).expect("the delta fits");
        let apply = t.elapsed();
        let t = Instant::now();
        let fingerprint = after.fingerprint();
        let whole_fp = t.elapsed();
        let t = Instant::now();
        after.validate().expect("valid");
        let whole_check = t.elapsed();
        let t = Instant::now();
        let step = index.step(&base, &delta, &after);
        let step_fp = t.elapsed();
        let t = Instant::now();
        index.validate(&step, &after).expect("valid");
        let step_check = t.elapsed();
        assert_eq!(step.fingerprint(), fingerprint);
        println!(
            "round {round}: clone {clone:?}, apply {apply:?}; whole: fingerprint {whole_fp:?}, \
             validate {whole_check:?}; indexed: step {step_fp:?}, validate {step_check:?}"
        );
    }
}
