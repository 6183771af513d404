//! Benchmarks (`cargo xtask bench`): figures measured from outside the guest where possible.

use std::time::{Duration, Instant};

use crate::kernel::{self, Variant};
use crate::qemu::{Guest, Machine, QemuConfig};

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// Wall time from spawning QEMU until `marker` appears on the serial console, in ms.
fn time_to_marker(config: &QemuConfig, marker: &str) -> Result<(f64, String), String> {
    let started = Instant::now();
    let mut guest = Guest::spawn(config)?;
    let text = guest.expect(marker, Duration::from_secs(60))?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    Ok((elapsed, text))
}

/// Boot-to-prompt: median of 5 wall-clock runs, minus QEMU's own start-up (a kernel that
/// prints one line at entry and halts), on q35 and microvm.
pub fn boot_time(runs: usize) -> Result<Vec<String>, String> {
    let shell = kernel::build(&Variant::shell(true))?;
    let baseline = kernel::build(&Variant {
        features: vec!["boot-baseline"],
        release: true,
    })?;
    let mut rows = Vec::new();
    for machine in [Machine::Q35, Machine::Microvm] {
        let mut prompt = Vec::new();
        let mut base = Vec::new();
        let mut claimed = Vec::new();
        for _ in 0..runs {
            let mut config = QemuConfig::new(&shell);
            config.machine = machine;
            let (ms, text) = time_to_marker(&config, "lull> ")?;
            prompt.push(ms);
            if let Some(us) = text
                .lines()
                .find_map(|l| l.split("kernel ready in ").nth(1))
                .and_then(|rest| rest.trim_end_matches(" us").trim().parse::<f64>().ok())
            {
                claimed.push(us / 1000.0);
            }
            let mut config = QemuConfig::new(&baseline);
            config.machine = machine;
            base.push(time_to_marker(&config, "lull-baseline")?.0);
        }
        let prompt_ms = median(&mut prompt);
        let base_ms = median(&mut base);
        let claimed_ms = if claimed.is_empty() {
            f64::NAN
        } else {
            median(&mut claimed)
        };
        let row = format!(
            "boot-to-prompt {machine:?}: prompt {prompt_ms:.1} ms, QEMU+firmware baseline {base_ms:.1} ms, \
             kernel {:.1} ms (median of {runs}); kernel's own claim {claimed_ms:.1} ms",
            prompt_ms - base_ms
        );
        println!("{row}");
        rows.push(row);
    }
    Ok(rows)
}
