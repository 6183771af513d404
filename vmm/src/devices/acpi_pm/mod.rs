//! ACPI fixed hardware: PM1a status/enable/control, the PM timer, the power button and the SCI.
//!
//! Register semantics (ACPI 6.5 §4.8): PM1 status bits are write-1-to-clear; the SCI is
//! asserted (level) while any enabled status bit is set; writing SLP_EN with SLP_TYP = the
//! `\_S5` value requests soft-off. SCI_EN reads 1 because the platform has no SMI port and so
//! is always in ACPI mode.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::arch::acpi::{PM1A_CONTROL_PORT, PM1A_EVENT_PORT, PM_TIMER_PORT, S5_SLEEP_TYPE};
use crate::persist::Persist;

/// PM1 status/enable bits.
pub const TMR_STS: u16 = 1 << 0;
pub const GBL_STS: u16 = 1 << 5;
pub const PWRBTN_STS: u16 = 1 << 8;
pub const SLPBTN_STS: u16 = 1 << 9;
pub const RTC_STS: u16 = 1 << 10;
pub const WAK_STS: u16 = 1 << 15;
/// Status bits that raise the SCI when their enable bit is set.
const SCI_SOURCES: u16 = TMR_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS;
/// Status bits the platform can ever set (the others read 0 and ignore writes).
const IMPLEMENTED_STATUS: u16 = SCI_SOURCES | WAK_STS;

/// PM1 control bits.
pub const SCI_EN: u16 = 1 << 0;
pub const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0b111 << SLP_TYP_SHIFT;

/// PM timer frequency, Hz.
pub const PM_TIMER_HZ: u64 = 3_579_545;

/// An interrupt line the device can raise and lower (level-triggered).
pub trait IrqLine: Send + Sync {
    fn set_level(&self, asserted: bool);
}

/// What a register write asks of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmAction {
    PowerOff,
}

/// The PM1a register block, the PM timer, and the SCI they drive.
pub struct AcpiPm {
    status: u16,
    enable: u16,
    control: u16,
    sci: Arc<dyn IrqLine>,
    sci_asserted: bool,
    timer_base: Instant,
    timer_offset_ticks: u32,
    /// Sleep requests for states other than S5 (ignored; counted for diagnosis).
    pub ignored_sleep_requests: u64,
}

/// Saved form of [`AcpiPm`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcpiPmState {
    pub status: u16,
    pub enable: u16,
    pub control: u16,
    /// PM timer value at save time: the restored timer continues from it.
    pub timer_ticks: u32,
}

impl AcpiPm {
    pub fn new(sci: Arc<dyn IrqLine>) -> Self {
        Self {
            status: 0,
            enable: 0,
            control: SCI_EN,
            sci,
            sci_asserted: false,
            timer_base: Instant::now(),
            timer_offset_ticks: 0,
            ignored_sleep_requests: 0,
        }
    }

    /// Presses the power button: sets PWRBTN_STS; raises the SCI if the guest enabled it.
    pub fn press_power_button(&mut self) {
        self.status |= PWRBTN_STS;
        self.update_sci();
    }

    /// Whether the guest has enabled power-button events (PWRBTN_EN).
    pub fn power_button_enabled(&self) -> bool {
        self.enable & PWRBTN_STS != 0
    }

    fn timer_ticks(&self) -> u32 {
        let elapsed_ns = self.timer_base.elapsed().as_nanos();
        let ticks = elapsed_ns * u128::from(PM_TIMER_HZ) / 1_000_000_000;
        self.timer_offset_ticks.wrapping_add(ticks as u32)
    }

    fn update_sci(&mut self) {
        let asserted = self.control & SCI_EN != 0 && self.status & self.enable & SCI_SOURCES != 0;
        if asserted != self.sci_asserted {
            self.sci_asserted = asserted;
            self.sci.set_level(asserted);
        }
    }

    fn register_bytes(&self) -> [u8; 12] {
        let mut bytes = [0u8; 12];
        bytes[0..2].copy_from_slice(&self.status.to_le_bytes());
        bytes[2..4].copy_from_slice(&self.enable.to_le_bytes());
        // SLP_EN is write-only and reads as 0.
        bytes[4..6].copy_from_slice(&(self.control & !SLP_EN).to_le_bytes());
        bytes[8..12].copy_from_slice(&self.timer_ticks().to_le_bytes());
        bytes
    }

    /// Handles an IN of `data.len()` bytes at `port` (byte, word or dword; any alignment).
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        let registers = self.register_bytes();
        for (index, byte) in data.iter_mut().enumerate() {
            let offset = usize::from(port.wrapping_sub(PM1A_EVENT_PORT)) + index;
            *byte = registers.get(offset).copied().unwrap_or(0xff);
        }
    }

    /// Handles an OUT at `port`; returns a machine request (soft-off) if the write made one.
    pub fn write(&mut self, port: u16, data: &[u8]) -> Option<PmAction> {
        let mut status_clear = [0u8; 2];
        let mut enable = self.enable.to_le_bytes();
        let mut control = self.control.to_le_bytes();
        let mut control_written = false;
        for (index, &value) in data.iter().enumerate() {
            let Some(port) = port.checked_add(index as u16) else {
                break;
            };
            match port.wrapping_sub(PM1A_EVENT_PORT) {
                offset @ 0..=1 => status_clear[offset as usize] = value,
                offset @ 2..=3 => enable[offset as usize - 2] = value,
                offset @ 4..=5 => {
                    control[offset as usize - 4] = value;
                    control_written = true;
                }
                _ => {} // PM timer and beyond: read-only.
            }
        }
        self.status &= !(u16::from_le_bytes(status_clear) & IMPLEMENTED_STATUS);
        self.enable = u16::from_le_bytes(enable) & SCI_SOURCES;
        let mut action = None;
        if control_written {
            let written = u16::from_le_bytes(control);
            if written & SLP_EN != 0 {
                if (written & SLP_TYP_MASK) >> SLP_TYP_SHIFT == S5_SLEEP_TYPE {
                    action = Some(PmAction::PowerOff);
                } else {
                    self.ignored_sleep_requests += 1;
                }
            }
            // SCI_EN stays set (always ACPI mode); SLP_EN is write-only.
            self.control = (written & !SLP_EN) | SCI_EN;
        }
        self.update_sci();
        action
    }
}

/// Saving and restoring the PM1 registers; the SCI line level is re-derived from them.
impl Persist for AcpiPm {
    type State = AcpiPmState;
    type RestoreArgs = Arc<dyn IrqLine>;
    type Error = std::convert::Infallible;

    fn save(&self) -> Result<AcpiPmState, Self::Error> {
        Ok(AcpiPmState {
            status: self.status,
            enable: self.enable,
            control: self.control,
            timer_ticks: self.timer_ticks(),
        })
    }

    fn restore(sci: Arc<dyn IrqLine>, state: &AcpiPmState) -> Result<Self, Self::Error> {
        let mut device = Self::new(sci);
        device.status = state.status & IMPLEMENTED_STATUS;
        device.enable = state.enable & SCI_SOURCES;
        device.control = (state.control & !SLP_EN) | SCI_EN;
        device.timer_offset_ticks = state.timer_ticks;
        // The irqchip state restored with the VM holds the line's old level; set it to match.
        device.sci_asserted = !device.status_wants_sci();
        device.update_sci();
        Ok(device)
    }
}

impl AcpiPm {
    fn status_wants_sci(&self) -> bool {
        self.control & SCI_EN != 0 && self.status & self.enable & SCI_SOURCES != 0
    }
}

const _: () =
    assert!(PM1A_CONTROL_PORT - PM1A_EVENT_PORT == 4 && PM_TIMER_PORT - PM1A_EVENT_PORT == 8);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records every level change of the SCI.
    #[derive(Default)]
    pub(crate) struct FakeIrqLine {
        pub levels: Mutex<Vec<bool>>,
    }

    impl IrqLine for FakeIrqLine {
        fn set_level(&self, asserted: bool) {
            self.levels.lock().unwrap().push(asserted);
        }
    }

    fn device() -> (AcpiPm, Arc<FakeIrqLine>) {
        let line = Arc::new(FakeIrqLine::default());
        (AcpiPm::new(line.clone()), line)
    }

    fn read16(device: &mut AcpiPm, port: u16) -> u16 {
        let mut data = [0u8; 2];
        device.read(port, &mut data);
        u16::from_le_bytes(data)
    }

    #[test]
    fn power_button_without_enable_sets_status_but_no_sci() {
        let (mut pm, line) = device();
        pm.press_power_button();
        assert_eq!(read16(&mut pm, PM1A_EVENT_PORT) & PWRBTN_STS, PWRBTN_STS);
        assert!(line.levels.lock().unwrap().is_empty());
    }

    #[test]
    fn enabled_power_button_raises_sci_until_status_is_cleared() {
        let (mut pm, line) = device();
        pm.write(PM1A_EVENT_PORT + 2, &PWRBTN_STS.to_le_bytes());
        assert!(pm.power_button_enabled());
        pm.press_power_button();
        assert_eq!(*line.levels.lock().unwrap(), vec![true]);
        // Writing 0 to the status bit changes nothing (write-1-to-clear).
        pm.write(PM1A_EVENT_PORT, &0u16.to_le_bytes());
        assert_eq!(*line.levels.lock().unwrap(), vec![true]);
        pm.write(PM1A_EVENT_PORT, &PWRBTN_STS.to_le_bytes());
        assert_eq!(*line.levels.lock().unwrap(), vec![true, false]);
        assert_eq!(read16(&mut pm, PM1A_EVENT_PORT) & PWRBTN_STS, 0);
    }

    #[test]
    fn pending_press_fires_when_guest_enables_later() {
        let (mut pm, line) = device();
        pm.press_power_button();
        pm.write(PM1A_EVENT_PORT + 2, &PWRBTN_STS.to_le_bytes());
        assert_eq!(*line.levels.lock().unwrap(), vec![true]);
    }

    #[test]
    fn byte_wide_status_clear_works() {
        let (mut pm, _) = device();
        pm.press_power_button();
        pm.write(PM1A_EVENT_PORT + 1, &[0x01]);
        assert_eq!(read16(&mut pm, PM1A_EVENT_PORT), 0);
    }

    #[test]
    fn sci_en_reads_one_and_slp_en_reads_zero() {
        let (mut pm, _) = device();
        assert_eq!(read16(&mut pm, PM1A_CONTROL_PORT), SCI_EN);
        assert_eq!(
            pm.write(PM1A_CONTROL_PORT, &(SLP_EN | (1 << 10)).to_le_bytes()),
            None
        );
        assert_eq!(read16(&mut pm, PM1A_CONTROL_PORT) & SLP_EN, 0);
        assert_eq!(pm.ignored_sleep_requests, 1);
    }

    #[test]
    fn s5_with_slp_en_powers_off_and_s5_alone_does_not() {
        let (mut pm, _) = device();
        assert_eq!(
            pm.write(PM1A_CONTROL_PORT, &(5u16 << 10).to_le_bytes()),
            None
        );
        assert_eq!(
            pm.write(PM1A_CONTROL_PORT + 1, &[0x20 | (5 << 2)]),
            Some(PmAction::PowerOff)
        );
    }

    #[test]
    fn pm_timer_advances_at_about_3_58_mhz() {
        let (mut pm, _) = device();
        let mut data = [0u8; 4];
        pm.read(PM_TIMER_PORT, &mut data);
        let first = u32::from_le_bytes(data);
        std::thread::sleep(std::time::Duration::from_millis(20));
        pm.read(PM_TIMER_PORT, &mut data);
        let delta = u32::from_le_bytes(data).wrapping_sub(first);
        // 20 ms = 71_591 ticks; allow for a slow, shared machine.
        assert!((71_000..400_000).contains(&delta), "{delta}");
    }

    #[test]
    fn state_round_trips_and_restored_sci_matches_status() {
        let (mut pm, _) = device();
        pm.write(PM1A_EVENT_PORT + 2, &PWRBTN_STS.to_le_bytes());
        pm.press_power_button();
        let state = pm.save().unwrap();
        let json = serde_json::to_string(&state).unwrap();
        let state_back: AcpiPmState = serde_json::from_str(&json).unwrap();
        assert_eq!(state_back, state);
        let line = Arc::new(FakeIrqLine::default());
        let restored = AcpiPm::restore(line.clone(), &state_back).unwrap();
        let saved_again = restored.save().unwrap();
        assert_eq!(
            (saved_again.status, saved_again.enable, saved_again.control),
            (state.status, state.enable, state.control)
        );
        assert!(saved_again.timer_ticks >= state.timer_ticks);
        assert_eq!(
            *line.levels.lock().unwrap(),
            vec![true],
            "SCI re-asserted after restore"
        );
    }

    #[test]
    fn restore_of_idle_state_drives_the_line_low() {
        let state = AcpiPmState {
            status: 0,
            enable: 0,
            control: SCI_EN,
            timer_ticks: 7,
        };
        let line = Arc::new(FakeIrqLine::default());
        AcpiPm::restore(line.clone(), &state).unwrap();
        assert_eq!(*line.levels.lock().unwrap(), vec![false]);
    }
}
