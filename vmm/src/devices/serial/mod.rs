//! COM1: a 16550A UART (rust-vmm `vm-superio`) whose interrupt is an irqfd on IRQ 4.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::persist::Persist;

/// Raises the UART's interrupt by writing to an eventfd KVM listens on (irqfd).
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where guest output goes: stdout in `lull-vmm run`, a buffer in tests.
pub type SerialOutput = Box<dyn Write + Send>;

/// Why serial state could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("serial state is invalid: {0:?}")]
    InvalidState(vm_superio::serial::Error<io::Error>),
    #[error("cannot duplicate the serial interrupt eventfd: {0}")]
    EventFd(io::Error),
}

/// The guest's console UART.
pub struct SerialConsole {
    uart: Serial<EventFdTrigger, NoEvents, SerialOutput>,
    /// Bytes the guest wrote that could not be delivered (output closed).
    pub lost_output_bytes: u64,
}

/// Saved form of the UART registers and its receive FIFO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialConsoleState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for SerialConsoleState {
    fn from(state: SerialState) -> Self {
        Self {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer,
        }
    }
}

impl From<&SerialConsoleState> for SerialState {
    fn from(state: &SerialConsoleState) -> Self {
        Self {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        }
    }
}

impl SerialConsole {
    pub fn new(interrupt: EventFd, output: SerialOutput) -> Self {
        Self {
            uart: Serial::new(EventFdTrigger(interrupt), output),
            lost_output_bytes: 0,
        }
    }

    /// A console writing into `buffer`, with an unconnected interrupt (for tests).
    #[cfg(test)]
    pub(crate) fn new_for_test(buffer: Arc<Mutex<Vec<u8>>>) -> Self {
        Self::new(
            EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
            Box::new(SharedBuffer(buffer)),
        )
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    pub fn write(&mut self, offset: u8, value: u8) {
        // Errors are a closed output or a full interrupt eventfd; neither may stop the guest.
        if self.uart.write(offset, value).is_err() {
            self.lost_output_bytes += 1;
        }
    }

    /// Free room in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues host input for the guest; returns how many bytes fitted.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let fitting = &bytes[..bytes.len().min(self.input_room())];
        if fitting.is_empty() {
            return 0;
        }
        self.uart.enqueue_raw_bytes(fitting).unwrap_or(0)
    }
}

/// A `Write` into a shared buffer (tests and benchmarks read guest output from it).
pub struct SharedBuffer(pub Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        super::lock(&self.0).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Saving the UART registers and FIFO; restore needs a new interrupt eventfd and output.
impl Persist for SerialConsole {
    type State = SerialConsoleState;
    type RestoreArgs = (EventFd, SerialOutput);
    type Error = SerialError;

    fn save(&self) -> Result<SerialConsoleState, SerialError> {
        Ok(self.uart.state().into())
    }

    fn restore(
        (interrupt, output): Self::RestoreArgs,
        state: &SerialConsoleState,
    ) -> Result<Self, SerialError> {
        let uart = Serial::from_state(&state.into(), EventFdTrigger(interrupt), NoEvents, output)
            .map_err(SerialError::InvalidState)?;
        Ok(Self {
            uart,
            lost_output_bytes: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Line Control Register offset and its divisor-latch access bit.
    const LCR: u8 = 3;
    const DLAB: u8 = 0x80;

    #[test]
    fn transmitted_bytes_reach_the_output() {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let mut console = SerialConsole::new_for_test(buffer.clone());
        for byte in b"hi" {
            console.write(0, *byte);
        }
        assert_eq!(&*buffer.lock().unwrap(), b"hi");
    }

    #[test]
    fn input_is_bounded_by_the_fifo() {
        let mut console = SerialConsole::new_for_test(Arc::new(Mutex::new(Vec::new())));
        let room = console.input_room();
        assert_eq!(console.enqueue_input(&vec![b'x'; room + 10]), room);
        assert_eq!(console.enqueue_input(b"y"), 0);
        assert_eq!(console.read(0), b'x');
        assert_eq!(console.input_room(), 1);
    }

    #[test]
    fn state_round_trips_with_registers_and_pending_input() {
        let mut console = SerialConsole::new_for_test(Arc::new(Mutex::new(Vec::new())));
        console.write(LCR, DLAB);
        console.write(0, 0x0c); // divisor low: 9600 baud
        console.write(LCR, 0x03); // 8N1
        console.write(1, 0x01); // IER: received-data interrupt
        console.write(7, 0x5a); // scratch
        console.enqueue_input(b"ab");
        let state = console.save().unwrap();
        let json = serde_json::to_vec(&state).unwrap();
        let state_back: SerialConsoleState = serde_json::from_slice(&json).unwrap();
        assert_eq!(state_back, state);

        let output = Box::new(SharedBuffer(Arc::new(Mutex::new(Vec::new()))));
        let interrupt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut restored = SerialConsole::restore((interrupt, output), &state_back).unwrap();
        assert_eq!(restored.save().unwrap(), state);
        assert_eq!(restored.read(7), 0x5a);
        assert_eq!(restored.read(0), b'a');
        assert_eq!(restored.read(0), b'b');
    }

    #[test]
    fn oversized_fifo_in_state_is_an_error_not_a_panic() {
        let mut state = SerialConsole::new_for_test(Arc::new(Mutex::new(Vec::new())))
            .save()
            .unwrap();
        state.in_buffer = vec![0; 4096];
        let output = Box::new(io::sink());
        let interrupt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        assert!(matches!(
            SerialConsole::restore((interrupt, output), &state),
            Err(SerialError::InvalidState(_))
        ));
    }
}
