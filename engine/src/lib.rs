//! fx86-engine: the deterministic x86-64 interpreter at the heart of fx86.
//!
//! * [`machine::Machine`] — one guest: registers ([`cpu`]), memory ([`mem`], a copy-on-write
//!   page tree with a software TLB), kernel-side state ([`linux`]) and the decoded-block cache.
//!   `Machine::run(limit)` retires instructions, counting each exactly (one per `rep`
//!   iteration), until the guest ends or the count reaches `limit`.
//! * [`elf`] loads static executables and builds the initial stack; [`cpuid`] is the one
//!   honest CPU model; [`host`] is everything from outside the guest, supplied by the front end.
//!
//! The engine does no terminal or network I/O: front ends drive it through `run` and read its
//! state; guest output goes to the `Host` they supply.

pub mod cpu;
pub mod cpuid;
pub mod elf;
mod exec;
pub mod host;
pub mod kvm;
pub mod linux;
pub mod machine;
pub mod mem;
pub mod record;
pub mod timeline;

pub use exec::jit::{set_checking as set_jit_checking, set_enabled as set_jit};
pub use exec::Ex;
pub use host::{EventKind, GuestEvent};
pub use machine::{Config, Machine, Snapshot, StopReason};
pub use timeline::{ReverseStop, Timeline};
