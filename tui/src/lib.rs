//! fx86-tui: the terminal UI (ratatui + crossterm) for exploring a run in time.
//!
//! This crate will hold the app state, its update on events and its rendering (issue 5), driving
//! the engine's timeline from a worker thread. Nothing is implemented here yet.
#![forbid(unsafe_code)]
