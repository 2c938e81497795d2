//! fx86-gdbserver: the GDB remote protocol (on `gdbstub`) over an fx86 timeline.
//!
//! Real `gdb` connects with `target remote` and gets forward and reverse execution: continue,
//! step, stepi, breakpoints, watchpoints, reverse-stepi/step/next/finish/continue (gdb builds
//! the line-level reverse commands from `bs`, `bc` and breakpoints). The crate owns the
//! protocol side only: the CLI hands it a connection, and it drives the engine's timeline.
//! One file per protocol extension, as gdbstub's example target does.

mod arch;
mod breakpoints;
mod hostio;
mod monitor;
mod sanitize;
mod stdio;
mod target;
mod xfer;

pub use arch::{Regs, X86_64Linux};
pub use gdbstub::stub::DisconnectReason;
pub use stdio::StdioConnection;
pub use target::{serve, serve_tcp, Fx86Target};
