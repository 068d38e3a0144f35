//! TCP and TLS connections to the TURN server (RFC 8656 section 3.1):
//! nonblocking after connect, with STUN/ChannelData framing on reads.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use turnd::stun::stream_frame_len;

/// A TLS client configuration that trusts any certificate: the benchmark
/// talks to a server it started itself on loopback, with a throwaway
/// self-signed certificate. Never use this outside a benchmark.
pub fn insecure_tls_config() -> io::Result<Arc<ClientConfig>> {
    turnd::probe::tls_config(None, true).map_err(io::Error::other)
}

/// One TCP or TLS connection with its read and write buffers.
pub struct StreamConn {
    tcp: TcpStream,
    tls: Option<Box<ClientConnection>>,
    /// Received bytes are `inbuf[head..tail]`.
    inbuf: Vec<u8>,
    head: usize,
    tail: usize,
    /// Bytes not yet written (TCP; TLS keeps them inside rustls).
    out: Vec<u8>,
    /// EPOLLOUT is being watched.
    pub watching_out: bool,
}

const READ_CHUNK: usize = 64 * 1024;

impl StreamConn {
    /// Connects (blocking), finishes the TLS handshake when `tls` is given,
    /// then switches to nonblocking.
    pub fn connect(server: SocketAddr, tls: Option<&Arc<ClientConfig>>) -> io::Result<Self> {
        let mut tcp = TcpStream::connect(server)?;
        tcp.set_nodelay(true)?;
        let tls = match tls {
            Some(cfg) => {
                let name = ServerName::IpAddress(server.ip().into());
                let mut c = ClientConnection::new(cfg.clone(), name).map_err(io::Error::other)?;
                while c.is_handshaking() {
                    c.complete_io(&mut tcp)?;
                }
                Some(Box::new(c))
            }
            None => None,
        };
        tcp.set_nonblocking(true)?;
        Ok(StreamConn {
            tcp,
            tls,
            inbuf: vec![0u8; 2 * READ_CHUNK],
            head: 0,
            tail: 0,
            out: Vec::new(),
            watching_out: false,
        })
    }

    /// The socket's descriptor, for epoll.
    pub fn fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }

    /// Queues `bytes` and writes what the socket takes now.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            Some(t) => {
                t.writer().write_all(bytes)?;
            }
            None => {
                if self.out.is_empty() {
                    match self.tcp.write(bytes) {
                        Ok(n) if n == bytes.len() => return Ok(()),
                        Ok(n) => self.out.extend_from_slice(&bytes[n..]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            self.out.extend_from_slice(bytes)
                        }
                        Err(e) => return Err(e),
                    }
                    return Ok(());
                }
                self.out.extend_from_slice(bytes);
            }
        }
        self.flush()
    }

    /// Writes queued bytes until the socket would block.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.tls {
            Some(t) => {
                while t.wants_write() {
                    match t.write_tls(&mut self.tcp) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            None => {
                while !self.out.is_empty() {
                    match self.tcp.write(&self.out) {
                        Ok(0) => break,
                        Ok(n) => {
                            self.out.drain(..n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    /// Bytes are waiting for the socket to become writable.
    pub fn pending(&self) -> bool {
        match &self.tls {
            Some(t) => t.wants_write(),
            None => !self.out.is_empty(),
        }
    }

    /// Makes room after `tail` (compacting, growing when a frame needs more).
    fn room(&mut self) {
        if self.tail == self.inbuf.len() {
            if self.head > 0 {
                self.inbuf.copy_within(self.head..self.tail, 0);
                self.tail -= self.head;
                self.head = 0;
            } else {
                let n = self.inbuf.len();
                self.inbuf.resize(n * 2, 0);
            }
        }
    }

    /// Reads what is available. Returns false when the server closed.
    pub fn read_available(&mut self) -> io::Result<bool> {
        if self.head == self.tail {
            self.head = 0;
            self.tail = 0;
        }
        match &mut self.tls {
            None => loop {
                self.room();
                match self.tcp.read(&mut self.inbuf[self.tail..]) {
                    Ok(0) => return Ok(false),
                    Ok(n) => self.tail += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                    Err(e) => return Err(e),
                }
            },
            Some(_) => loop {
                let t = self.tls.as_mut().expect("tls");
                match t.read_tls(&mut self.tcp) {
                    Ok(0) => return Ok(false),
                    Ok(_) => {
                        t.process_new_packets().map_err(io::Error::other)?;
                        loop {
                            self.room();
                            let t = self.tls.as_mut().expect("tls");
                            match t.reader().read(&mut self.inbuf[self.tail..]) {
                                Ok(0) => return Ok(false),
                                Ok(n) => self.tail += n,
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(e) => return Err(e),
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                    Err(e) => return Err(e),
                }
            },
        }
    }

    /// Moves every complete frame into `frames` (concatenated) with their
    /// `(start, end)` in `bounds`, and keeps the partial tail.
    pub fn take_frames(
        &mut self,
        frames: &mut Vec<u8>,
        bounds: &mut Vec<(usize, usize)>,
    ) -> io::Result<()> {
        frames.clear();
        bounds.clear();
        loop {
            let rest = &self.inbuf[self.head..self.tail];
            match stream_frame_len(rest) {
                Ok(Some(n)) => {
                    let s = frames.len();
                    frames.extend_from_slice(&rest[..n]);
                    bounds.push((s, s + n));
                    self.head += n;
                }
                Ok(None) => break,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
        Ok(())
    }
}
