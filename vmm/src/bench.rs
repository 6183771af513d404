//! Benchmarks of the VMM's own costs (placeholder until written).
use crate::cli::BenchOptions;

pub fn main(_options: &BenchOptions) -> i32 {
    eprintln!("lull-vmm bench: not implemented yet");
    2
}
