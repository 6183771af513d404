//! Acquisition sites: where in the source a lock was taken, for reports a person can act on.

use core::fmt;
use core::panic::Location;

/// A place in the source: `file:line`, or a free-form static label.
///
/// The kernel's lock functions are `#[track_caller]` and pass [`Site::caller`], so every report
/// names the line that took the lock, not the lock implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Site {
    file: &'static str,
    /// 0 when `file` is a free-form label.
    line: u32,
}

impl Site {
    /// A site for which nothing is known.
    pub const UNKNOWN: Site = Site::new("<unknown>");

    /// A free-form static label, e.g. `"kernel/src/irq.rs:120"` or `"request_irq"`.
    pub const fn new(label: &'static str) -> Site {
        Site {
            file: label,
            line: 0,
        }
    }

    /// A file and line, as [`site!`](crate::site) builds from `file!()` and `line!()`.
    pub const fn at(file: &'static str, line: u32) -> Site {
        Site { file, line }
    }

    /// The location of the caller (through any chain of `#[track_caller]` functions).
    #[track_caller]
    pub fn caller() -> Site {
        Site::from(Location::caller())
    }

    /// The file (or the label).
    pub const fn file(&self) -> &'static str {
        self.file
    }

    /// The line; 0 for a label.
    pub const fn line(&self) -> u32 {
        self.line
    }
}

impl From<&'static Location<'static>> for Site {
    fn from(location: &'static Location<'static>) -> Site {
        Site::at(location.file(), location.line())
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(self.file)
        } else {
            write!(f, "{}:{}", self.file, self.line)
        }
    }
}

/// The [`Site`] of the line where the macro is written.
#[macro_export]
macro_rules! site {
    () => {
        $crate::Site::at(::core::file!(), ::core::line!())
    };
}
