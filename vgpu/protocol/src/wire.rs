//! Frames and messages, and their encoder and decoder.
//!
//! A frame on every transport:
//!
//! ```text
//! magic u16 = 0x5446 ("TF", little-endian) | tag u16 | msg_len u32 | data_len u32 |
//! message (msg_len bytes) | bulk data (data_len bytes)
//! ```
//!
//! All integers are little-endian. A message is its fields in order: integers at their width,
//! `bytes`/`str` as a u32 length then the bytes, lists as a u32 count then the items. The
//! decoder checks the header against [`MAX_MSG`] and [`MAX_DATA`] before reading anything,
//! borrows byte and string fields from the frame (no copy), bounds every count by what is left
//! to read, and requires the message to end exactly where its fields do.
//!
//! The codec is written by hand rather than with serde: the hot messages (launches, copies) are
//! a few fixed fields whose encoding is a handful of stores into a reused buffer, bulk data
//! must stay out of the message (it goes straight between the caller's memory and the
//! transport), and a hand-written decoder makes every bound explicit and fuzzable. Rare,
//! descriptive replies (device lists) carry `tf-hal`'s serde types as JSON text inside a
//! message.

use std::fmt;

use tf_hal::{Error, ErrorKind};

/// First two bytes of every frame ("TF").
pub const MAGIC: u16 = 0x5446;
/// Size of a frame header.
pub const HEADER_LEN: usize = 12;
/// Largest message part of a frame (the fields, not the bulk data).
pub const MAX_MSG: usize = 64 * 1024;
/// Largest bulk-data part of a frame; larger copies are sent as several frames.
pub const MAX_DATA: usize = 4 * 1024 * 1024;
/// Largest module image (sent in pieces of at most [`MAX_DATA`]).
pub const MAX_MODULE: usize = 256 * 1024 * 1024;
/// Most kernel parameters in one launch (CUDA allows 32764 bytes of parameters).
pub const MAX_PARAMS: usize = 4096;
/// Longest token accepted in a hello.
pub const MAX_TOKEN: usize = 4096;

/// What is wrong with a frame. The connection that sent it is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error(
        "bad frame magic {0:#06x} (not a tensor-fusion remote vGPU peer, or a desynchronised stream)"
    )]
    BadMagic(u16),
    #[error("unknown message tag {0}")]
    UnknownTag(u16),
    #[error("message of {0} bytes is over the limit of {MAX_MSG}")]
    MessageTooLong(u32),
    #[error("bulk data of {0} bytes is over the limit of {MAX_DATA}")]
    DataTooLong(u32),
    #[error("message {what} ends early: needs {need} more bytes, {left} left")]
    Truncated {
        what: &'static str,
        need: usize,
        left: usize,
    },
    #[error("message {what} has {extra} bytes past its last field")]
    TrailingBytes { what: &'static str, extra: usize },
    #[error("message {what}: {why}")]
    Invalid { what: &'static str, why: String },
    #[error("message {0} carries bulk data it should not have")]
    UnexpectedData(&'static str),
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u16,
    pub msg_len: u32,
    pub data_len: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        h[2..4].copy_from_slice(&self.tag.to_le_bytes());
        h[4..8].copy_from_slice(&self.msg_len.to_le_bytes());
        h[8..12].copy_from_slice(&self.data_len.to_le_bytes());
        h
    }

    /// Check a header: magic, a known tag, lengths within the limits.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, ProtocolError> {
        let magic = u16::from_le_bytes([b[0], b[1]]);
        if magic != MAGIC {
            return Err(ProtocolError::BadMagic(magic));
        }
        let h = Header {
            tag: u16::from_le_bytes([b[2], b[3]]),
            msg_len: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            data_len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        };
        if Msg::name_of(h.tag).is_none() {
            return Err(ProtocolError::UnknownTag(h.tag));
        }
        if h.msg_len as usize > MAX_MSG {
            return Err(ProtocolError::MessageTooLong(h.msg_len));
        }
        if h.data_len as usize > MAX_DATA {
            return Err(ProtocolError::DataTooLong(h.data_len));
        }
        if h.data_len > 0 && !Msg::carries_data(h.tag) {
            return Err(ProtocolError::UnexpectedData(
                Msg::name_of(h.tag).unwrap_or("?"),
            ));
        }
        Ok(h)
    }
}

/// A cursor over a message's bytes that never reads past them.
pub struct Reader<'a> {
    what: &'static str,
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(what: &'static str, b: &'a [u8]) -> Self {
        Reader { what, b }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if n > self.b.len() {
            return Err(ProtocolError::Truncated {
                what: self.what,
                need: n,
                left: self.b.len(),
            });
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn invalid(&self, why: impl Into<String>) -> ProtocolError {
        ProtocolError::Invalid {
            what: self.what,
            why: why.into(),
        }
    }

    fn finish(self) -> Result<(), ProtocolError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes {
                what: self.what,
                extra: self.b.len(),
            })
        }
    }
}

/// A field of a message: how it is written and read.
pub trait Field<'a>: Sized {
    fn put(&self, out: &mut Vec<u8>);
    fn get(r: &mut Reader<'a>) -> Result<Self, ProtocolError>;
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl<'a> Field<'a> for $t {
            fn put(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(r: &mut Reader<'a>) -> Result<Self, ProtocolError> {
                Ok(<$t>::from_le_bytes(r.array()?))
            }
        }
    )*};
}
int_field!(u8, u16, u32, u64, i64);

impl<'a> Field<'a> for bool {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(*self as u8);
    }
    fn get(r: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        match u8::get(r)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(r.invalid(format!("boolean {v}"))),
        }
    }
}

impl<'a> Field<'a> for [u32; 3] {
    fn put(&self, out: &mut Vec<u8>) {
        for v in self {
            v.put(out);
        }
    }
    fn get(r: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        Ok([u32::get(r)?, u32::get(r)?, u32::get(r)?])
    }
}

impl<'a> Field<'a> for &'a [u8] {
    fn put(&self, out: &mut Vec<u8>) {
        (self.len() as u32).put(out);
        out.extend_from_slice(self);
    }
    fn get(r: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        let n = u32::get(r)? as usize;
        r.take(n)
    }
}

impl<'a> Field<'a> for &'a str {
    fn put(&self, out: &mut Vec<u8>) {
        self.as_bytes().put(out);
    }
    fn get(r: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        let b = <&'a [u8]>::get(r)?;
        std::str::from_utf8(b).map_err(|_| r.invalid("a string is not UTF-8"))
    }
}

/// A list of u32 (kernel parameter sizes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct U32List(pub Vec<u32>);

impl<'a> Field<'a> for U32List {
    fn put(&self, out: &mut Vec<u8>) {
        (self.0.len() as u32).put(out);
        for v in &self.0 {
            v.put(out);
        }
    }
    fn get(r: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        let n = u32::get(r)? as usize;
        if n > MAX_PARAMS || n * 4 > r.b.len() {
            return Err(r.invalid(format!("list of {n} numbers")));
        }
        (0..n)
            .map(|_| u32::get(r))
            .collect::<Result<_, _>>()
            .map(U32List)
    }
}

/// Kernel arguments: one byte string per parameter, borrowed from the frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Args<'a>(pub Vec<&'a [u8]>);

impl<'a> Field<'a> for Args<'a> {
    fn put(&self, out: &mut Vec<u8>) {
        (self.0.len() as u32).put(out);
        for p in &self.0 {
            p.put(out);
        }
    }
    fn get(r: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        let n = u32::get(r)? as usize;
        // Each parameter takes at least its 4-byte length: the count is bounded by the bytes.
        if n > MAX_PARAMS || n * 4 > r.b.len() {
            return Err(r.invalid(format!("{n} kernel parameters")));
        }
        (0..n)
            .map(|_| <&'a [u8]>::get(r))
            .collect::<Result<_, _>>()
            .map(Args)
    }
}

/// The vendor-neutral error kinds in wire order (the index is the code).
const KINDS: [ErrorKind; 16] = [
    ErrorKind::NotInitialized,
    ErrorKind::LibraryNotFound,
    ErrorKind::InvalidDevice,
    ErrorKind::NoDevice,
    ErrorKind::InvalidValue,
    ErrorKind::InvalidHandle,
    ErrorKind::OutOfMemory,
    ErrorKind::NotSupported,
    ErrorKind::NotFound,
    ErrorKind::InvalidImage,
    ErrorKind::LaunchFailed,
    ErrorKind::IllegalAddress,
    ErrorKind::NotReady,
    ErrorKind::DeviceLost,
    ErrorKind::Config,
    ErrorKind::Other,
];

impl<'a> Field<'a> for ErrorKind {
    fn put(&self, out: &mut Vec<u8>) {
        let i = KINDS
            .iter()
            .position(|k| k == self)
            .unwrap_or(KINDS.len() - 1);
        (i as u8).put(out);
    }
    fn get(r: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        let i = u8::get(r)? as usize;
        KINDS
            .get(i)
            .copied()
            .ok_or_else(|| r.invalid(format!("error kind {i}")))
    }
}

/// Module image formats.
pub const FORMAT_PTX: u8 = 0;
pub const FORMAT_BINARY: u8 = 1;
pub const FORMAT_SPIRV: u8 = 2;

/// Copy and memset flags.
pub mod flags {
    /// Ordered on the message's stream (else: after all prior work of the context).
    pub const ASYNC: u8 = 1;
    /// The sender waits for `Done`/`Failed` after this frame (the last piece of a synchronous
    /// host-to-device copy).
    pub const ACK: u8 = 2;
    /// More pieces of the same module image follow.
    pub const MORE: u8 = 4;
}

/// Why a worker refused a connection.
pub mod refusal {
    pub const VERSION: u8 = 1;
    pub const TOKEN: u8 = 2;
    pub const PROTOCOL: u8 = 3;
}

macro_rules! messages {
    ($(
        $(#[$m:meta])*
        $tag:literal $name:ident $([$data:ident])? { $($f:ident : $t:ty),* $(,)? }
    ),* $(,)?) => {
        /// Every message of the protocol, both directions. Byte and string fields borrow from
        /// the frame they were decoded from.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Msg<'a> {
            $( $(#[$m])* $name { $($f: $t),* }, )*
            #[doc(hidden)]
            _Lifetime(std::marker::PhantomData<&'a ()>),
        }

        impl<'a> Msg<'a> {
            /// The message's tag.
            pub fn tag(&self) -> u16 {
                match self {
                    $( Msg::$name { .. } => $tag, )*
                    Msg::_Lifetime(_) => 0,
                }
            }

            /// The name of the message with `tag`, `None` for unknown tags.
            pub fn name_of(tag: u16) -> Option<&'static str> {
                match tag {
                    $( $tag => Some(stringify!($name)), )*
                    _ => None,
                }
            }

            /// Whether frames of `tag` may carry bulk data.
            pub fn carries_data(tag: u16) -> bool {
                match tag {
                    $( $tag => messages!(@data $($data)?), )*
                    _ => false,
                }
            }

            /// Append the message's fields to `out`.
            #[allow(unused_variables)]
            pub fn encode(&self, out: &mut Vec<u8>) {
                match self {
                    $( Msg::$name { $($f),* } => { $( $f.put(out); )* } )*
                    Msg::_Lifetime(_) => {}
                }
            }

            /// Decode the message of a frame with `tag`, exactly.
            pub fn decode(tag: u16, b: &'a [u8]) -> Result<Msg<'a>, ProtocolError> {
                match tag {
                    $( $tag => {
                        #[allow(unused_mut)]
                        let mut r = Reader::new(stringify!($name), b);
                        $( let $f = <$t as Field<'a>>::get(&mut r)?; )*
                        r.finish()?;
                        Ok(Msg::$name { $($f),* })
                    } )*
                    other => Err(ProtocolError::UnknownTag(other)),
                }
            }
        }
    };
    (@data data) => { true };
    (@data) => { false };
}

messages! {
    // --- handshake ---
    /// Client → worker, first frame: the protocol version and the token.
    1 Hello { version: u16, token: &'a [u8] },
    /// Worker → client: accepted. `vram_quota` is the vGPU's quota (0: none).
    2 Welcome { version: u16, worker: &'a str, vram_quota: u64 },
    /// Worker → client: refused (`refusal::*`), with a sentence saying why and what to do.
    3 Refused { reason: u8, message: &'a str },

    // --- enumeration and metrics (replies: Json, Memory, Value) ---
    10 Devices {},
    11 Topology {},
    12 DeviceMemory { device: u32 },
    13 DeviceProcesses { device: u32 },
    14 DeviceBusy { device: u32 },
    15 DeviceUtilization { device: u32, window_ns: u64 },

    // --- contexts ---
    /// Create context `ctx` (a name the client chose) on `device`. Synchronous.
    20 ContextCreate { ctx: u64, device: u32 },
    21 ContextDestroy { ctx: u64 },
    22 Synchronize { ctx: u64 },
    23 MemInfo { ctx: u64 },

    // --- memory ---
    /// Synchronous: answered with `Ptr` or `Failed` (out of memory, over the quota).
    30 MemAlloc { ctx: u64, bytes: u64 },
    31 MemFree { ctx: u64, ptr: u64 },
    /// A piece of a host-to-device copy: the bulk data goes to `dst`.
    32 CopyHtoD [data] { ctx: u64, stream: u64, dst: u64, flags: u8 },
    /// Answered with `Data` frames holding `len` bytes in order, then `Done` or `Failed`.
    33 CopyDtoH { ctx: u64, stream: u64, src: u64, len: u64, flags: u8 },
    34 CopyDtoD { ctx: u64, stream: u64, dst: u64, src: u64, bytes: u64, flags: u8 },
    /// `width` is 1, 2 or 4 bytes per element.
    35 Memset { ctx: u64, stream: u64, dst: u64, value: u32, width: u8, count: u64, flags: u8 },

    // --- modules and launches ---
    /// A piece of module `module`'s image (`flags::MORE` on every piece but the last; the last
    /// is answered with `Done` or `Failed`).
    40 ModuleLoad [data] { ctx: u64, module: u64, format: u8, flags: u8 },
    41 ModuleUnload { ctx: u64, module: u64 },
    /// Resolve entry `name` of `module` as function `function`; answered with `Params`.
    42 FunctionGet { ctx: u64, module: u64, function: u64, name: &'a str },
    43 Launch {
        ctx: u64, function: u64, stream: u64, grid: [u32; 3], block: [u32; 3],
        shared: u32, args: Args<'a>,
    },

    // --- streams and events (creation needs no answer: the client names them) ---
    50 StreamCreate { ctx: u64, stream: u64 },
    51 StreamDestroy { ctx: u64, stream: u64 },
    52 StreamSynchronize { ctx: u64, stream: u64 },
    53 StreamQuery { ctx: u64, stream: u64 },
    54 StreamWaitEvent { ctx: u64, stream: u64, event: u64 },
    60 EventCreate { ctx: u64, event: u64 },
    61 EventDestroy { ctx: u64, event: u64 },
    62 EventRecord { ctx: u64, event: u64, stream: u64 },
    63 EventSynchronize { ctx: u64, event: u64 },
    64 EventQuery { ctx: u64, event: u64 },
    65 EventElapsed { ctx: u64, start: u64, end: u64 },

    /// Answered with `Pong` (liveness, and the bench's protocol round trip).
    70 Ping { n: u64 },

    // --- answers ---
    100 Done {},
    /// An error: kind, the vendor's code and name (empty name: none), and the message.
    101 Failed { kind: ErrorKind, code: i64, vendor: &'a str, message: &'a str },
    102 Ptr { ptr: u64 },
    /// A number: a boolean (0/1), nanoseconds, or an f64's bits.
    103 Value { value: u64 },
    104 Memory { total: u64, used: u64, free: u64 },
    105 Json { text: &'a str },
    /// A function's parameter sizes (`known` false: the backend cannot tell).
    106 Params { known: bool, sizes: U32List },
    /// A piece of a device-to-host copy, in the bulk data.
    107 Data [data] {},
    108 Pong { n: u64 },
}

impl<'a> Msg<'a> {
    /// The `Failed` message of a HAL error.
    pub fn failed(e: &'a Error) -> Msg<'a> {
        Msg::Failed {
            kind: e.kind,
            code: e.vendor.as_ref().map_or(0, |v| v.code),
            vendor: e.vendor.as_ref().map_or("", |v| v.name.as_str()),
            message: &e.message,
        }
    }

    /// The HAL error a `Failed` message carries.
    pub fn to_error(&self) -> Option<Error> {
        match self {
            Msg::Failed {
                kind,
                code,
                vendor,
                message,
            } => {
                let e = Error::new(*kind, *message);
                Some(if vendor.is_empty() {
                    e
                } else {
                    e.with_vendor(*code, *vendor)
                })
            }
            _ => None,
        }
    }

    /// The message's name (for logs and errors).
    pub fn name(&self) -> &'static str {
        Msg::name_of(self.tag()).unwrap_or("?")
    }

    /// Encode a whole frame (header, message, no bulk data) into `out` (cleared first).
    pub fn frame(&self, data_len: usize, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        self.encode(out);
        let h = Header {
            tag: self.tag(),
            msg_len: (out.len() - HEADER_LEN) as u32,
            data_len: data_len as u32,
        };
        out[..HEADER_LEN].copy_from_slice(&h.encode());
    }
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} + {} bytes)",
            Msg::name_of(self.tag).unwrap_or("?"),
            self.msg_len,
            self.data_len
        )
    }
}

/// Decode a whole frame held in memory (header, message, data): the fuzzer's and the property
/// test's entry point, and what a transport does piece by piece. Returns the message and its
/// bulk data.
pub fn decode_frame(b: &[u8]) -> Result<(Msg<'_>, &[u8]), ProtocolError> {
    let head: &[u8; HEADER_LEN] =
        b.get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(ProtocolError::Truncated {
                what: "header",
                need: HEADER_LEN,
                left: b.len(),
            })?;
    let h = Header::decode(head)?;
    let rest = &b[HEADER_LEN..];
    let (m, d) = (h.msg_len as usize, h.data_len as usize);
    if rest.len() != m + d {
        return Err(ProtocolError::Truncated {
            what: Msg::name_of(h.tag).unwrap_or("?"),
            need: m + d,
            left: rest.len(),
        });
    }
    Ok((Msg::decode(h.tag, &rest[..m])?, &rest[m..]))
}
