//! fx86-gdbserver: the GDB remote protocol (on `gdbstub`) over an fx86 engine timeline.
//!
//! This crate will serve real `gdb` (`target remote`) with forward and reverse execution
//! (issue 4). It owns the protocol side only: sockets are handed to it by the CLI, and it drives
//! the engine, never the other way round. Nothing is implemented here yet.
#![forbid(unsafe_code)]
