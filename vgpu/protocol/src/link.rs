//! Transports: a [`Link`] carries frames between one client and the worker.
//!
//! - [`SocketLink`]: a Unix or TCP stream. A frame is written with one `writev` (header and
//!   message from a small buffer, bulk data straight from the caller's memory) and read with
//!   bulk data going straight into its destination.
//! - [`RingLink`]: two single-producer single-consumer byte rings in one shared memory file
//!   (a `memfd`, so nothing is left in any folder when either side dies), created by the worker
//!   after the handshake and passed to the client over the Unix socket the handshake ran on
//!   (`SCM_RIGHTS`). Frames are written in place and read in place; a waiting side spins
//!   briefly, then sleeps on a futex the other side wakes. The socket stays open for liveness:
//!   a side that waits also watches it, so a dead peer is noticed within [`LIVENESS`].

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use tf_os::shm::{Shm, ShmSafe};

use crate::wire::{HEADER_LEN, Header, MAX_DATA, MAX_MSG, Msg, ProtocolError};

/// How often a side waiting on a ring checks that its peer is still there.
pub const LIVENESS: Duration = Duration::from_millis(100);

/// What can go wrong on a link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
}

/// One connection's frames, both directions. Bulk data of a received frame is pending until
/// it is consumed with [`recv_data_into`](Link::recv_data_into) or
/// [`recv_data_with`](Link::recv_data_with); the next [`recv`](Link::recv) skips what was not.
pub trait Link: Send {
    /// Send a frame: `msg`, then `data` as its bulk data.
    fn send(&mut self, msg: &Msg<'_>, data: &[u8]) -> Result<(), LinkError>;

    /// Send a frame whose `data_len` bytes of bulk data `fill` writes in place, piece by piece
    /// (`fill(offset, piece)`). Returns `Ok(false)` when `fill` failed on a piece; the frame is
    /// still complete (the rest is zeros), so the connection stays usable.
    fn send_filled(
        &mut self,
        msg: &Msg<'_>,
        data_len: usize,
        fill: &mut dyn FnMut(usize, &mut [u8]) -> bool,
    ) -> Result<bool, LinkError>;

    /// Receive the next frame: its header, and its message bytes into `msg`.
    fn recv(&mut self, msg: &mut Vec<u8>) -> Result<Header, LinkError>;

    /// Copy the next `dst.len()` bytes of the pending bulk data into `dst` (at most what is
    /// pending; the rest stays pending).
    fn recv_data_into(&mut self, dst: &mut [u8]) -> Result<(), LinkError>;

    /// Hand the pending bulk data to `f` piece by piece (`f(offset, piece)`), without copying
    /// it first where the transport allows.
    fn recv_data_with(&mut self, f: &mut dyn FnMut(usize, &[u8])) -> Result<(), LinkError>;

    /// The most bulk data worth putting in one frame on this transport.
    fn max_data(&self) -> usize {
        MAX_DATA
    }
}

/// Encode `msg`'s frame header and message into `buf`.
fn frame_head(msg: &Msg<'_>, data_len: usize, buf: &mut Vec<u8>) -> Result<(), LinkError> {
    if data_len > MAX_DATA {
        return Err(ProtocolError::DataTooLong(data_len as u32).into());
    }
    msg.frame(data_len, buf);
    if buf.len() - HEADER_LEN > MAX_MSG {
        return Err(ProtocolError::MessageTooLong((buf.len() - HEADER_LEN) as u32).into());
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Sockets
// ------------------------------------------------------------------------------------------

/// A stream socket that a [`SocketLink`] can use.
pub trait Stream: Read + Write + AsRawFd + Send {}
impl Stream for UnixStream {}
impl Stream for std::net::TcpStream {}

/// Frames over a Unix or TCP stream.
pub struct SocketLink<S: Stream> {
    s: S,
    head: Vec<u8>,
    scratch: Vec<u8>,
    pending: usize,
}

/// Pieces of bulk data read or written through a scratch buffer (small enough to stay in cache).
const PIECE: usize = 256 * 1024;

impl<S: Stream> SocketLink<S> {
    pub fn new(s: S) -> Self {
        SocketLink {
            s,
            head: Vec::with_capacity(256),
            scratch: Vec::new(),
            pending: 0,
        }
    }

    pub fn stream(&self) -> &S {
        &self.s
    }

    pub fn into_stream(self) -> S {
        self.s
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), LinkError> {
        read_full(&mut self.s, buf)
    }

    fn skip_pending(&mut self) -> Result<(), LinkError> {
        while self.pending > 0 {
            let n = self.pending.min(PIECE);
            let mut tmp = std::mem::take(&mut self.scratch);
            tmp.resize(n, 0);
            let r = self.read_exact(&mut tmp[..n]);
            self.scratch = tmp;
            r?;
            self.pending -= n;
        }
        Ok(())
    }
}

fn read_full(s: &mut impl Read, buf: &mut [u8]) -> Result<(), LinkError> {
    let mut done = 0;
    while done < buf.len() {
        match s.read(&mut buf[done..]) {
            Ok(0) => return Err(LinkError::Closed),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(LinkError::Closed),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn write_all_vectored(s: &mut impl Write, mut a: &[u8], mut b: &[u8]) -> Result<(), LinkError> {
    while !a.is_empty() || !b.is_empty() {
        let n = match s.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]) {
            Ok(0) => return Err(LinkError::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                return Err(LinkError::Closed);
            }
            Err(e) => return Err(e.into()),
        };
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}

impl<S: Stream> Link for SocketLink<S> {
    fn send(&mut self, msg: &Msg<'_>, data: &[u8]) -> Result<(), LinkError> {
        frame_head(msg, data.len(), &mut self.head)?;
        write_all_vectored(&mut self.s, &self.head, data)
    }

    fn send_filled(
        &mut self,
        msg: &Msg<'_>,
        data_len: usize,
        fill: &mut dyn FnMut(usize, &mut [u8]) -> bool,
    ) -> Result<bool, LinkError> {
        frame_head(msg, data_len, &mut self.head)?;
        write_all_vectored(&mut self.s, &self.head, &[])?;
        let mut ok = true;
        let mut tmp = std::mem::take(&mut self.scratch);
        let mut off = 0;
        let r = (|| {
            while off < data_len {
                let n = (data_len - off).min(PIECE);
                tmp.resize(n, 0);
                if ok && !fill(off, &mut tmp[..n]) {
                    ok = false;
                }
                if !ok {
                    tmp[..n].fill(0);
                }
                write_all_vectored(&mut self.s, &tmp[..n], &[])?;
                off += n;
            }
            Ok::<(), LinkError>(())
        })();
        self.scratch = tmp;
        r.map(|()| ok)
    }

    fn recv(&mut self, msg: &mut Vec<u8>) -> Result<Header, LinkError> {
        self.skip_pending()?;
        let mut h = [0u8; HEADER_LEN];
        self.read_exact(&mut h)?;
        let header = Header::decode(&h)?;
        msg.resize(header.msg_len as usize, 0);
        self.read_exact(msg)?;
        self.pending = header.data_len as usize;
        Ok(header)
    }

    fn recv_data_into(&mut self, dst: &mut [u8]) -> Result<(), LinkError> {
        if dst.len() > self.pending {
            return Err(ProtocolError::Invalid {
                what: "Data",
                why: format!("{} bytes of data, {} expected", self.pending, dst.len()),
            }
            .into());
        }
        self.pending -= dst.len();
        read_full(&mut self.s, dst)
    }

    fn recv_data_with(&mut self, f: &mut dyn FnMut(usize, &[u8])) -> Result<(), LinkError> {
        let mut tmp = std::mem::take(&mut self.scratch);
        let mut off = 0;
        let r = (|| {
            while self.pending > 0 {
                let n = self.pending.min(PIECE);
                tmp.resize(n, 0);
                read_full(&mut self.s, &mut tmp[..n])?;
                self.pending -= n;
                f(off, &tmp[..n]);
                off += n;
            }
            Ok(())
        })();
        self.scratch = tmp;
        r
    }
}

// ------------------------------------------------------------------------------------------
// Shared-memory rings
// ------------------------------------------------------------------------------------------

/// Bytes of one direction's ring.
pub const RING_BYTES: usize = 8 << 20;
/// Bulk data per frame on a ring: small enough that several frames are in flight at once.
pub const RING_DATA: usize = 1 << 20;
const RING_MAGIC: u64 = u64::from_le_bytes(*b"TFRING01");
/// Records in a ring are aligned to this.
const ALIGN: usize = 8;
/// The tag of a record that only pads to the end of the ring.
const PAD_TAG: u16 = 0xffff;

/// One direction's indices (monotonic byte counts) and sleep flags, each on its own line.
#[repr(C, align(64))]
struct Cursor {
    value: AtomicU64,
    _pad: [u64; 7],
}

#[repr(C)]
struct RingCtl {
    /// Bytes published by the writer.
    head: Cursor,
    /// Bytes consumed by the reader.
    tail: Cursor,
    /// 1 while the reader sleeps waiting for data (a futex word).
    reader_sleeping: AtomicU32,
    /// 1 while the writer sleeps waiting for room (a futex word).
    writer_sleeping: AtomicU32,
    _pad: [u32; 14],
}

/// The shared file: a header, two rings' control blocks, and their bytes. `up` carries the
/// client's frames to the worker, `down` the worker's to the client.
#[repr(C)]
pub struct Rings {
    magic: AtomicU64,
    _pad: [u64; 7],
    up: RingCtl,
    down: RingCtl,
    up_bytes: [AtomicU64; RING_BYTES / 8],
    down_bytes: [AtomicU64; RING_BYTES / 8],
}

// SAFETY: Rings is made of atomics and padding only; any bit pattern is a valid value, and the
// ring bytes are only touched through raw pointers inside the ranges the protocol of head and
// tail hands each side (and values read there are validated before use).
unsafe impl ShmSafe for Rings {}

/// Which end of the rings a process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Worker,
}

/// Frames over a pair of shared-memory rings, with the Unix socket kept for liveness.
pub struct RingLink {
    rings: Shm<Rings>,
    side: Side,
    sock: UnixStream,
    /// Where the pending bulk data starts in the receive ring, and its length; and the tail
    /// value to publish once it is consumed.
    pending: Option<(usize, usize, u64)>,
    head: Vec<u8>,
}

/// Wait on a futex word while it holds `expected`, for at most `timeout`.
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT on a live, aligned u32 inside our mapping, with a valid timeout; the
    // kernel only compares and sleeps.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        )
    };
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a live, aligned u32 inside our mapping.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
}

/// Whether the peer has closed the socket (EOF or error) — nothing else is sent on it.
fn peer_gone(sock: &UnixStream) -> bool {
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: poll on one valid descriptor with a zero timeout.
    let rc = unsafe { libc::poll(&mut p, 1, 0) };
    rc > 0 && p.revents & (libc::POLLIN | libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// How long a waiting side spins before it sleeps.
const SPIN: Duration = Duration::from_micros(20);

impl RingLink {
    /// Worker side: create the rings in a new memory file, send it over `sock` (after the
    /// handshake), and keep `sock` for liveness.
    pub fn create(sock: UnixStream) -> io::Result<RingLink> {
        let fd = memfd("tf-remote-rings")?;
        let file = std::fs::File::from(fd);
        let rings = Shm::<Rings>::map_file(&file)?;
        rings.magic.store(RING_MAGIC, Ordering::Release);
        send_fd(&sock, file.as_raw_fd())?;
        Ok(RingLink {
            rings,
            side: Side::Worker,
            sock,
            pending: None,
            head: Vec::with_capacity(256),
        })
    }

    /// Client side: receive the rings' file over `sock` and map it.
    pub fn open(sock: UnixStream) -> io::Result<RingLink> {
        let fd = recv_fd(&sock)?;
        let file = std::fs::File::from(fd);
        let len = file.metadata()?.len();
        if len < size_of::<Rings>() as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the worker's ring file is {len} bytes, not {}",
                    size_of::<Rings>()
                ),
            ));
        }
        let rings = Shm::<Rings>::map_file(&file)?;
        if rings.magic.load(Ordering::Acquire) != RING_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the worker's ring file has another layout (a different tensor-fusion release?)",
            ));
        }
        Ok(RingLink {
            rings,
            side: Side::Client,
            sock,
            pending: None,
            head: Vec::with_capacity(256),
        })
    }

    fn tx(&self) -> (&RingCtl, *mut u8) {
        match self.side {
            Side::Client => (&self.rings.up, self.rings.up_bytes.as_ptr() as *mut u8),
            Side::Worker => (&self.rings.down, self.rings.down_bytes.as_ptr() as *mut u8),
        }
    }

    fn rx(&self) -> (&RingCtl, *const u8) {
        match self.side {
            Side::Client => (
                &self.rings.down,
                self.rings.down_bytes.as_ptr() as *const u8,
            ),
            Side::Worker => (&self.rings.up, self.rings.up_bytes.as_ptr() as *const u8),
        }
    }

    /// Wait until `ready()` holds, spinning briefly then sleeping on `flag`; checks the peer.
    fn wait(&self, flag: &AtomicU32, ready: &dyn Fn() -> bool) -> Result<(), LinkError> {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if ready() {
                return Ok(());
            }
            if start.elapsed() < SPIN {
                spins += 1;
                if spins.is_multiple_of(64) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            flag.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if ready() {
                flag.store(0, Ordering::Relaxed);
                return Ok(());
            }
            futex_wait(flag, 1, LIVENESS);
            flag.store(0, Ordering::Relaxed);
            if !ready() && peer_gone(&self.sock) {
                return Err(LinkError::Closed);
            }
        }
    }

    /// Publish a new head (writer) and wake the reader if it sleeps.
    fn publish(ctl: &RingCtl, head: u64) {
        ctl.head.value.store(head, Ordering::Release);
        fence(Ordering::SeqCst);
        if ctl.reader_sleeping.load(Ordering::Relaxed) != 0 {
            ctl.reader_sleeping.store(0, Ordering::Relaxed);
            futex_wake(&ctl.reader_sleeping);
        }
    }

    fn consume(ctl: &RingCtl, tail: u64) {
        ctl.tail.value.store(tail, Ordering::Release);
        fence(Ordering::SeqCst);
        if ctl.writer_sleeping.load(Ordering::Relaxed) != 0 {
            ctl.writer_sleeping.store(0, Ordering::Relaxed);
            futex_wake(&ctl.writer_sleeping);
        }
    }

    /// Reserve a contiguous record of `len` bytes (aligned) in the send ring; returns its
    /// start offset and the head after it (padding written if the record wraps).
    fn reserve(&mut self, len: usize) -> Result<(usize, u64), LinkError> {
        let rec = len.next_multiple_of(ALIGN);
        let (ctl, base) = self.tx();
        let head = ctl.head.value.load(Ordering::Relaxed);
        let pos = (head % RING_BYTES as u64) as usize;
        let to_end = RING_BYTES - pos;
        let (start, skip) = if to_end >= rec { (pos, 0) } else { (0, to_end) };
        let need = (skip + rec) as u64;
        let room = || {
            let tail = ctl.tail.value.load(Ordering::Acquire);
            RING_BYTES as u64 - head.wrapping_sub(tail).min(RING_BYTES as u64) >= need
        };
        self.wait(&ctl.writer_sleeping, &room)?;
        if skip >= 16 {
            let pad = Header {
                tag: PAD_TAG,
                msg_len: 0,
                data_len: 0,
            }
            .encode();
            // SAFETY: [pos, pos + 12) lies in the send ring, in the free part we just waited
            // for (the reader does not read past the published head).
            unsafe { std::ptr::copy_nonoverlapping(pad.as_ptr(), base.add(pos), HEADER_LEN) };
        }
        Ok((start, head + need))
    }
}

fn memfd(name: &str) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: memfd_create with a valid C string; the descriptor is owned below.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Send one descriptor over a Unix socket.
fn send_fd(sock: &UnixStream, fd: RawFd) -> io::Result<()> {
    let byte = [b'R'];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: a zeroed msghdr is a valid empty one; its pointers are set to live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer is large enough for one descriptor (CMSG_SPACE), so
    // CMSG_FIRSTHDR is non-null and CMSG_DATA points at room for one RawFd.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut RawFd, fd);
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    let rc = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receive one descriptor sent with [`send_fd`].
fn recv_fd(sock: &UnixStream) -> io::Result<OwnedFd> {
    let mut byte = [0u8];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: a zeroed msghdr is a valid empty one; its pointers are set to live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: msg points at live buffers for the duration of the call.
    let rc = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if rc == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the worker closed the connection before sending its rings",
        ));
    }
    // SAFETY: the kernel filled msg; CMSG_FIRSTHDR is null or points inside our buffer.
    let c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: `c` checked non-null; the header lies inside the control buffer.
    if c.is_null() || unsafe { (*c).cmsg_type } != libc::SCM_RIGHTS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the worker sent no ring file",
        ));
    }
    // SAFETY: an SCM_RIGHTS message carries at least one descriptor at CMSG_DATA.
    let fd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const RawFd) };
    // SAFETY: the kernel installed this descriptor for us; we own it now.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Link for RingLink {
    fn send(&mut self, msg: &Msg<'_>, data: &[u8]) -> Result<(), LinkError> {
        let mut head = std::mem::take(&mut self.head);
        let r = frame_head(msg, data.len(), &mut head).and_then(|()| {
            let (start, new_head) = self.reserve(head.len() + data.len())?;
            let (ctl, base) = self.tx();
            // SAFETY: [start, start + frame length) is a contiguous free range of the send
            // ring that `reserve` waited for; only this side writes there until publish.
            unsafe {
                std::ptr::copy_nonoverlapping(head.as_ptr(), base.add(start), head.len());
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    base.add(start + head.len()),
                    data.len(),
                );
            }
            Self::publish(ctl, new_head);
            Ok(())
        });
        self.head = head;
        r
    }

    fn send_filled(
        &mut self,
        msg: &Msg<'_>,
        data_len: usize,
        fill: &mut dyn FnMut(usize, &mut [u8]) -> bool,
    ) -> Result<bool, LinkError> {
        let mut head = std::mem::take(&mut self.head);
        let r = frame_head(msg, data_len, &mut head).and_then(|()| {
            let (start, new_head) = self.reserve(head.len() + data_len)?;
            let (ctl, base) = self.tx();
            // SAFETY: as in `send`: a free contiguous range of the send ring, ours until
            // publish; `fill` gets exactly the data part of it.
            let ok = unsafe {
                std::ptr::copy_nonoverlapping(head.as_ptr(), base.add(start), head.len());
                let piece = std::slice::from_raw_parts_mut(base.add(start + head.len()), data_len);
                let ok = fill(0, piece);
                if !ok {
                    piece.fill(0);
                }
                ok
            };
            Self::publish(ctl, new_head);
            Ok(ok)
        });
        self.head = head;
        r
    }

    fn recv(&mut self, msg: &mut Vec<u8>) -> Result<Header, LinkError> {
        if let Some((_, _, tail)) = self.pending.take() {
            Self::consume(self.rx().0, tail);
        }
        loop {
            let (ctl, base) = self.rx();
            let tail = ctl.tail.value.load(Ordering::Relaxed);
            let avail = || ctl.head.value.load(Ordering::Acquire) != tail;
            self.wait(&ctl.reader_sleeping, &avail)?;
            let head = ctl.head.value.load(Ordering::Acquire);
            let published = head.wrapping_sub(tail);
            if published > RING_BYTES as u64 {
                return Err(ProtocolError::Invalid {
                    what: "ring",
                    why: format!("the peer published {published} bytes in a ring of {RING_BYTES}"),
                }
                .into());
            }
            let pos = (tail % RING_BYTES as u64) as usize;
            let to_end = RING_BYTES - pos;
            let truncated = |need: usize| ProtocolError::Truncated {
                what: "ring record",
                need,
                left: published as usize,
            };
            if to_end < 16 {
                // Too little room for a record: the writer wrapped.
                if published < to_end as u64 {
                    return Err(truncated(to_end).into());
                }
                Self::consume(ctl, tail + to_end as u64);
                continue;
            }
            if published < HEADER_LEN as u64 {
                return Err(truncated(HEADER_LEN).into());
            }
            let mut h = [0u8; HEADER_LEN];
            // SAFETY: [pos, pos + 12) lies in the receive ring inside the published range;
            // copied out before it is interpreted.
            unsafe { std::ptr::copy_nonoverlapping(base.add(pos), h.as_mut_ptr(), HEADER_LEN) };
            if u16::from_le_bytes([h[2], h[3]]) == PAD_TAG {
                if published < to_end as u64 {
                    return Err(truncated(to_end).into());
                }
                Self::consume(ctl, tail + to_end as u64);
                continue;
            }
            let header = Header::decode(&h)?;
            let (m, d) = (header.msg_len as usize, header.data_len as usize);
            let rec = (HEADER_LEN + m + d).next_multiple_of(ALIGN);
            if rec > to_end || rec as u64 > published {
                return Err(truncated(rec).into());
            }
            msg.resize(m, 0);
            // SAFETY: the message lies in the published record (checked above); copied out so
            // the peer cannot change it while it is decoded.
            unsafe {
                std::ptr::copy_nonoverlapping(base.add(pos + HEADER_LEN), msg.as_mut_ptr(), m)
            };
            self.pending = Some((pos + HEADER_LEN + m, d, tail + rec as u64));
            return Ok(header);
        }
    }

    fn recv_data_into(&mut self, dst: &mut [u8]) -> Result<(), LinkError> {
        let Some((at, len, tail)) = self.pending else {
            return if dst.is_empty() {
                Ok(())
            } else {
                Err(ProtocolError::Invalid {
                    what: "Data",
                    why: format!("no data pending, {} bytes expected", dst.len()),
                }
                .into())
            };
        };
        let n = dst.len();
        if n > len {
            return Err(ProtocolError::Invalid {
                what: "Data",
                why: format!("{len} bytes of data, {n} expected"),
            }
            .into());
        }
        let (ctl, base) = self.rx();
        // SAFETY: [at, at + n) lies in the pending record's data, inside the published range
        // (checked in recv) and not yet handed back to the writer.
        unsafe { std::ptr::copy_nonoverlapping(base.add(at), dst.as_mut_ptr(), n) };
        if n == len {
            Self::consume(ctl, tail);
            self.pending = None;
        } else {
            self.pending = Some((at + n, len - n, tail));
        }
        Ok(())
    }

    fn recv_data_with(&mut self, f: &mut dyn FnMut(usize, &[u8])) -> Result<(), LinkError> {
        let Some((at, len, tail)) = self.pending.take() else {
            return Ok(());
        };
        let (ctl, base) = self.rx();
        // SAFETY: as in recv_data_into. The bytes stay ours until `consume` below; the peer
        // may only scribble over its own data (not ours), which changes values, not safety.
        let piece = unsafe { std::slice::from_raw_parts(base.add(at), len) };
        f(0, piece);
        Self::consume(ctl, tail);
        Ok(())
    }

    fn max_data(&self) -> usize {
        RING_DATA
    }
}
