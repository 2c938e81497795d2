//! A guard in front of gdbstub: only well-formed packets reach it. A packet with a bad
//! checksum is answered with `-` (gdb then resends it) and logged; stray bytes outside packets
//! are dropped and logged. gdbstub itself treats such input as fatal to the session.

use gdbstub::conn::{Connection, ConnectionExt};
use std::collections::VecDeque;

/// Longest packet accepted (gdb's default packet size is far smaller).
const MAX_PACKET: usize = 1 << 20;

/// What answering `qGetTLSAddr` needs: the current thread pointer (kept up to date by the
/// target) and the size of the executable's static TLS block (x86-64 TLS variant II: the
/// block ends at the thread pointer).
pub struct TlsInfo {
    pub fs_base: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub block: u64,
}

pub struct Sanitized<C> {
    inner: C,
    tls: Option<TlsInfo>,
    no_ack: bool,
    ready: VecDeque<u8>,
    packet: Vec<u8>,
    in_packet: bool,
    /// How many bytes of checksum follow '#' so far (0 = not after '#').
    after_hash: u8,
    warned_stray: bool,
}

impl<C: ConnectionExt> Sanitized<C> {
    pub fn new(inner: C, tls: Option<TlsInfo>) -> Self {
        Sanitized {
            inner,
            tls,
            no_ack: false,
            ready: VecDeque::new(),
            packet: Vec::new(),
            in_packet: false,
            after_hash: 0,
            warned_stray: false,
        }
    }

    /// gdbstub has no `qGetTLSAddr`; for a static executable the answer follows from the
    /// thread pointer, so it is answered here. Returns true if the packet was handled.
    fn answer_tls(&mut self, body: &[u8]) -> Result<bool, C::Error> {
        let Some(rest) = body.strip_prefix(b"qGetTLSAddr:") else {
            return Ok(false);
        };
        let text = String::from_utf8_lossy(rest).into_owned();
        let offset = text
            .split(',')
            .nth(1)
            .and_then(|o| u64::from_str_radix(o, 16).ok());
        let reply = match (&self.tls, offset) {
            (Some(t), Some(off)) => {
                let tp = t.fs_base.load(std::sync::atomic::Ordering::Relaxed);
                format!("{:x}", tp.wrapping_sub(t.block).wrapping_add(off))
            }
            _ => "E01".to_string(),
        };
        if !self.no_ack {
            self.inner.write(b'+')?;
        }
        let sum = reply.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        self.inner
            .write_all(format!("${reply}#{sum:02x}").as_bytes())?;
        self.inner.flush()?;
        Ok(true)
    }

    /// Feeds one byte from the wire; complete, valid units land in `ready`.
    fn feed(&mut self, b: u8) -> Result<(), C::Error> {
        if !self.in_packet {
            match b {
                b'$' => {
                    self.in_packet = true;
                    self.packet.clear();
                    self.packet.push(b);
                    self.after_hash = 0;
                }
                b'+' | b'-' | 0x03 => self.ready.push_back(b),
                _ => {
                    if !self.warned_stray {
                        eprintln!(
                            "fx86 gdbserver: ignoring bytes outside a packet from the client"
                        );
                        self.warned_stray = true;
                    }
                }
            }
            return Ok(());
        }
        self.packet.push(b);
        if self.after_hash > 0 {
            self.after_hash += 1;
            if self.after_hash == 3 {
                self.in_packet = false;
                let n = self.packet.len();
                let body = &self.packet[1..n - 3];
                let sum = body.iter().fold(0u8, |a, &x| a.wrapping_add(x));
                let given = std::str::from_utf8(&self.packet[n - 2..])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if given == Some(sum) {
                    let body = body.to_vec();
                    if body == b"QStartNoAckMode" {
                        self.no_ack = true;
                    }
                    if !self.answer_tls(&body)? {
                        self.ready.extend(self.packet.iter().copied());
                    }
                } else {
                    eprintln!(
                        "fx86 gdbserver: malformed packet from the client (bad checksum), asked for a resend: {:?}",
                        String::from_utf8_lossy(&self.packet[..n.min(64)])
                    );
                    self.inner.write(b'-')?;
                    self.inner.flush()?;
                }
            }
        } else if b == b'#' {
            self.after_hash = 1;
        } else if self.packet.len() > MAX_PACKET {
            eprintln!("fx86 gdbserver: dropped an oversized packet from the client");
            self.in_packet = false;
            self.packet.clear();
        }
        Ok(())
    }
}

impl<C: ConnectionExt> Connection for Sanitized<C> {
    type Error = C::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.inner.write(byte)
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.inner.write_all(buf)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        self.inner.flush()
    }

    fn on_session_start(&mut self) -> Result<(), Self::Error> {
        self.inner.on_session_start()
    }
}

impl<C: ConnectionExt> ConnectionExt for Sanitized<C> {
    fn read(&mut self) -> Result<u8, Self::Error> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Ok(b);
            }
            let b = self.inner.read()?;
            self.feed(b)?;
        }
    }

    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
        if let Some(&b) = self.ready.front() {
            return Ok(Some(b));
        }
        // Consume whatever has arrived without blocking; report a byte only once a valid
        // unit is ready, so garbage cannot stop a running guest.
        while self.inner.peek()?.is_some() {
            let b = self.inner.read()?;
            self.feed(b)?;
            if let Some(&r) = self.ready.front() {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }
}
