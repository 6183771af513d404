//! Lull's kernel command line: unbounded, tokenized without allocation, typed by a registry.
//!
//! Linux 2.6.21 made the kernel command line dynamically sized; Lull has no fixed-size buffer
//! for it anywhere. A line of any length is handled in one forward pass, and every token borrows
//! from the line.
//!
//! Two layers, for two moments of boot:
//!
//! * **Before the heap exists**, [`tokens`] and [`lookup`] read the raw line without allocating
//!   (for `earlyprintk=`, `mem=` and the like).
//! * **Once the heap exists**, each subsystem declares its parameters ([`ParamSpec`], with a
//!   [`Kind`] and a default) into a [`Registry`]; [`Registry::parse`] then yields a [`Parsed`]
//!   with typed getters, the parameters nobody declared, the refused values with the defaults
//!   used instead, the arguments for init, and ready-to-print [`warnings`](Parsed::warnings).
//!
//! The syntax is Linux's (`name`, `name=value`, `name="quoted value"`, `"name=quoted value"`,
//! `--` before init's arguments, `-` and `_` equal in names). Bad input — unterminated quotes,
//! non-UTF-8 bytes, absurd lengths — never panics: it becomes a typed error or a warning.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod kind;
mod parsed;
mod registry;
mod render;
mod tokenize;

pub use kind::{Kind, Problem};
pub use parsed::{Fallback, ParamError, Parsed};
pub use registry::{DeclareError, ParamSpec, Registry};
pub use tokenize::{lookup, names_match, tokens, Token, Tokens};
