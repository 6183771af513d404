//! lull-vmm command line: see `lull-vmm help`.
fn main() {
    std::process::exit(lull_vmm::cli::main());
}
