//! lull-vmm: the microVM monitor that hosts Lull on /dev/kvm.

fn main() {
    eprintln!("lull-vmm: not implemented yet");
    std::process::exit(2);
}
