//! A gdb connection over stdin/stdout, for `target remote | fx86 gdbserver --stdio -- PROG`.

use gdbstub::conn::{Connection, ConnectionExt};
use std::io::{Read, Write};

/// stdin/stdout as a gdb connection (`peek` never blocks, so Ctrl-C is seen mid-run).
pub struct StdioConnection {
    peeked: Option<u8>,
    out: Vec<u8>,
}

impl StdioConnection {
    pub fn new() -> StdioConnection {
        StdioConnection {
            peeked: None,
            out: Vec::new(),
        }
    }
}

impl Default for StdioConnection {
    fn default() -> Self {
        Self::new()
    }
}

fn read_byte() -> std::io::Result<u8> {
    let mut b = [0u8; 1];
    match std::io::stdin().lock().read(&mut b)? {
        0 => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "gdb closed the connection",
        )),
        _ => Ok(b[0]),
    }
}

/// Whether stdin has a byte ready, without blocking.
fn stdin_ready() -> bool {
    let mut pfd = PollFd {
        fd: 0,
        events: 1,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd with a zero timeout.
    let n = unsafe { poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents != 0
}

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

extern "C" {
    fn poll(fds: *mut PollFd, nfds: u64, timeout: i32) -> i32;
}

impl Connection for StdioConnection {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.out.push(byte);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        let mut o = std::io::stdout().lock();
        o.write_all(&self.out)?;
        self.out.clear();
        o.flush()
    }
}

impl ConnectionExt for StdioConnection {
    fn read(&mut self) -> Result<u8, Self::Error> {
        if let Some(b) = self.peeked.take() {
            return Ok(b);
        }
        self.flush()?;
        read_byte()
    }

    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
        if self.peeked.is_none() && stdin_ready() {
            self.peeked = Some(read_byte()?);
        }
        Ok(self.peeked)
    }
}
