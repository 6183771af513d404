//! Build script: links with our linker script and generates the 256 interrupt entry stubs.
use std::fmt::Write as _;
use std::path::PathBuf;

/// Vectors for which the CPU pushes an error code itself.
const ERROR_CODE_VECTORS: [u32; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    println!(
        "cargo:rustc-link-arg=-T{}",
        manifest_dir.join("linker.ld").display()
    );
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=build.rs");
    let git = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=LULL_GIT_REVISION={git}");
    println!(
        "cargo:rustc-env=LULL_PROFILE={}",
        std::env::var("PROFILE").unwrap_or_default()
    );
    // Rebuild the banner when HEAD moves (a new commit or a checkout).
    if let Some(git_dir) = std::process::Command::new("git")
        .args(["rev-parse", "--absolute-git-dir"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    {
        // Only paths that exist: cargo counts a missing one as changed on every build (a
        // repository whose refs were never packed has no packed-refs), which rebuilt the
        // whole kernel each time.
        for watched in ["HEAD", "refs/heads", "packed-refs"] {
            let path = format!("{git_dir}/{watched}");
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }

    // One stub per vector: push a dummy error code where the CPU does not, push the vector
    // number, and jump to the common entry in arch/x86_64/interrupts.rs.
    let mut asm = String::from(".section .text\n");
    for vector in 0..256u32 {
        writeln!(asm, ".global isr_stub_{vector}\nisr_stub_{vector}:").unwrap();
        if !ERROR_CODE_VECTORS.contains(&vector) {
            asm.push_str("    pushq $0\n");
        }
        writeln!(asm, "    pushq ${vector}\n    jmp isr_common").unwrap();
    }
    asm.push_str(".section .rodata\n.balign 8\n.global isr_stub_table\nisr_stub_table:\n");
    for vector in 0..256u32 {
        writeln!(asm, "    .quad isr_stub_{vector}").unwrap();
    }
    std::fs::write(out_dir.join("isr_stubs.s"), asm).expect("write isr_stubs.s");
}
