//! Measures how fast a 1 MiB command line is tokenized, looked up and parsed (host only).
//!
//! Run with `cargo run --release -p lull-cmdline --example throughput`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use lull_cmdline::{lookup, tokens, Kind, ParamSpec, Registry};

const MIB: usize = 1024 * 1024;

/// Best of `rounds` runs of `work`, so a busy shared machine inflates the figure less.
fn best_of(rounds: usize, mut work: impl FnMut()) -> Duration {
    (0..rounds)
        .map(|_| {
            let start = Instant::now();
            work();
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn report(what: &str, bytes: usize, time: Duration) {
    let mib_per_second = bytes as f64 / MIB as f64 / time.as_secs_f64();
    println!(
        "{what:<44} {:>9.3} ms  {mib_per_second:>8.1} MiB/s",
        time.as_secs_f64() * 1e3
    );
}

fn main() {
    // Many short parameters, the worst case for per-token overhead.
    let mut many = String::new();
    let mut count = 0;
    while many.len() < MIB {
        many.push_str(&format!("p{count}=v{count} "));
        count += 1;
    }
    many.push_str("hz=500");
    // One huge quoted value, the worst case for a single token.
    let quoted = format!("root=\"{}\" hz=500", "lull tickless ".repeat(MIB / 14));

    let specs: Vec<ParamSpec> = (0..200)
        .map(|index| ParamSpec {
            name: Box::leak(format!("declared-{index}").into_boxed_str()),
            kind: Kind::Str,
            default: "",
            help: "",
        })
        .chain([
            ParamSpec {
                name: "hz",
                kind: Kind::U64 {
                    min: 100,
                    max: 1000,
                },
                default: "250",
                help: "",
            },
            ParamSpec {
                name: "root",
                kind: Kind::Str,
                default: "",
                help: "",
            },
        ])
        .collect();
    let mut registry = Registry::new();
    registry.declare_all(&specs).expect("valid specs");

    for (label, line) in [("many short params", &many), ("one quoted value", &quoted)] {
        let bytes = line.len();
        println!(
            "{label}: {bytes} bytes, {} tokens",
            tokens(line.as_bytes()).count()
        );
        report(
            "  tokens() full pass",
            bytes,
            best_of(5, || {
                black_box(tokens(black_box(line.as_bytes())).count());
            }),
        );
        report(
            "  lookup(\"hz\")",
            bytes,
            best_of(5, || {
                black_box(lookup(black_box(line.as_bytes()), "hz"));
            }),
        );
        report(
            "  Registry::parse (202 declared)",
            bytes,
            best_of(5, || {
                black_box(registry.parse(black_box(line.as_bytes())));
            }),
        );
    }
}
