//! Opening a connection: listening, connecting, and the handshake both sides run.
//!
//! The handshake always runs on the stream socket (Unix or TCP): the client sends `Hello`
//! (version, token), the worker answers `Welcome` or `Refused` and closes. Only then, on a
//! `shm://` address, does the worker create the connection's rings and pass them over the same
//! socket — so nothing is mapped for a peer that has not proved it knows the token.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use crate::addr::Address;
use crate::auth::tokens_match;
use crate::link::{Link, LinkError, RingLink, SocketLink};
use crate::wire::{Msg, refusal};

/// How long a peer has to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection could not be opened, in words that say what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "cannot reach the worker at {addr}: {source} (is `tensor-fusion worker --listen {addr}` running?)"
    )]
    Unreachable { addr: Address, source: io::Error },
    #[error(
        "the worker at {addr} refused the token: check that --token-file names the worker's token file"
    )]
    BadToken { addr: Address },
    #[error("the worker at {addr} speaks another protocol version: {message}")]
    Version { addr: Address, message: String },
    #[error("the worker at {addr} refused the connection: {message}")]
    Refused { addr: Address, message: String },
    #[error("the handshake with the worker at {addr} failed: {source}")]
    Handshake { addr: Address, source: LinkError },
}

/// What the worker said about itself when it accepted us.
#[derive(Debug, Clone)]
pub struct Welcome {
    pub worker: String,
    pub vram_quota: Option<u64>,
}

/// Connect to a worker and authenticate with `token`.
pub fn connect(addr: &Address, token: &[u8]) -> Result<(Box<dyn Link>, Welcome), ConnectError> {
    let unreachable = |source| ConnectError::Unreachable {
        addr: addr.clone(),
        source,
    };
    let handshake = |source| ConnectError::Handshake {
        addr: addr.clone(),
        source,
    };
    match addr {
        Address::Tcp(hp) => {
            let s = TcpStream::connect(hp.as_str()).map_err(unreachable)?;
            s.set_nodelay(true).map_err(unreachable)?;
            let mut link = SocketLink::new(s);
            let w = hello(&mut link, addr, token)?;
            Ok((Box::new(link), w))
        }
        Address::Unix(path) => {
            let s = UnixStream::connect(path).map_err(unreachable)?;
            let mut link = SocketLink::new(s);
            let w = hello(&mut link, addr, token)?;
            Ok((Box::new(link), w))
        }
        Address::Shm(name) => {
            let path = Address::shm_socket(name).map_err(unreachable)?;
            let s = UnixStream::connect(&path).map_err(unreachable)?;
            let mut link = SocketLink::new(s);
            let w = hello(&mut link, addr, token)?;
            let ring =
                RingLink::open(link.into_stream()).map_err(|e| handshake(LinkError::Io(e)))?;
            Ok((Box::new(ring), w))
        }
    }
}

fn hello<L: Link>(link: &mut L, addr: &Address, token: &[u8]) -> Result<Welcome, ConnectError> {
    let handshake = |source| ConnectError::Handshake {
        addr: addr.clone(),
        source,
    };
    link.send(
        &Msg::Hello {
            version: crate::VERSION,
            token,
        },
        &[],
    )
    .map_err(handshake)?;
    let mut buf = Vec::new();
    let h = link.recv(&mut buf).map_err(handshake)?;
    match Msg::decode(h.tag, &buf).map_err(|e| handshake(e.into()))? {
        Msg::Welcome {
            worker, vram_quota, ..
        } => Ok(Welcome {
            worker: worker.to_string(),
            vram_quota: (vram_quota > 0).then_some(vram_quota),
        }),
        Msg::Refused { reason, message } => Err(match reason {
            refusal::TOKEN => ConnectError::BadToken { addr: addr.clone() },
            refusal::VERSION => ConnectError::Version {
                addr: addr.clone(),
                message: message.to_string(),
            },
            _ => ConnectError::Refused {
                addr: addr.clone(),
                message: message.to_string(),
            },
        }),
        other => Err(ConnectError::Refused {
            addr: addr.clone(),
            message: format!("it answered the hello with {}", other.name()),
        }),
    }
}

/// A worker's listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
    Shm(UnixListener, PathBuf),
}

/// A connection accepted but not yet authenticated.
pub enum Pending {
    Tcp(TcpStream),
    Unix(UnixStream),
    Shm(UnixStream),
}

impl Listener {
    /// Listen on `addr`. A Unix socket file left by a worker that is gone is replaced; one a
    /// live worker listens on is an error.
    pub fn bind(addr: &Address) -> io::Result<Listener> {
        match addr {
            Address::Tcp(hp) => Ok(Listener::Tcp(TcpListener::bind(hp.as_str())?)),
            Address::Unix(path) => Ok(Listener::Unix(bind_unix(path)?, path.clone())),
            Address::Shm(name) => {
                let path = Address::shm_socket(name)?;
                Ok(Listener::Shm(bind_unix(&path)?, path))
            }
        }
    }

    /// The address peers connect to (with the port the system chose for `tcp://HOST:0`).
    pub fn local_addr(&self, asked: &Address) -> Address {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| Address::Tcp(a.to_string()))
                .unwrap_or_else(|_| asked.clone()),
            _ => asked.clone(),
        }
    }

    pub fn accept(&self) -> io::Result<(Pending, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept()?;
                s.set_nodelay(true)?;
                Ok((Pending::Tcp(s), peer.to_string()))
            }
            Listener::Unix(l, _) => l.accept().map(|(s, _)| {
                let peer = peer_of(&s);
                (Pending::Unix(s), peer)
            }),
            Listener::Shm(l, _) => l.accept().map(|(s, _)| {
                let peer = peer_of(&s);
                (Pending::Shm(s), peer)
            }),
        }
    }

    /// Stop accepting (wakes a thread blocked in `accept`).
    pub fn shutdown(&self) {
        use std::os::fd::AsRawFd;
        let fd = match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l, _) | Listener::Shm(l, _) => l.as_raw_fd(),
        };
        // SAFETY: shutdown(2) on a descriptor we own; it only changes the socket's state.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) | Listener::Shm(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn peer_of(s: &UnixStream) -> String {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of the size we pass.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    if rc == 0 {
        format!("pid {} uid {}", cred.pid, cred.uid)
    } else {
        "a local process".to_string()
    }
}

fn bind_unix(path: &std::path::Path) -> io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("a worker already listens on {}", path.display()),
                ));
            }
            // A socket file left by a worker that is gone.
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        Err(e) => Err(e),
    }
}

/// The outcome of a peer's handshake.
pub enum Accepted {
    /// Authenticated: the link to serve.
    Ok(Box<dyn Link>),
    /// Refused, with the reason already sent to the peer and to be logged.
    Refused(String),
}

impl Pending {
    /// Run the worker's side of the handshake: check the version and the token, answer, and
    /// (on `shm://`) create the connection's rings.
    pub fn authenticate(self, token: &[u8], worker: &str, vram_quota: u64) -> Accepted {
        match self {
            Pending::Tcp(s) => {
                let _ = s.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
                let mut link = SocketLink::new(s);
                match welcome(&mut link, token, worker, vram_quota) {
                    Ok(()) => {
                        let _ = link.stream().set_read_timeout(None);
                        let _ = socket_keepalive(link.stream());
                        Accepted::Ok(Box::new(link))
                    }
                    Err(why) => Accepted::Refused(why),
                }
            }
            Pending::Unix(s) => {
                let _ = s.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
                let mut link = SocketLink::new(s);
                match welcome(&mut link, token, worker, vram_quota) {
                    Ok(()) => {
                        let _ = link.stream().set_read_timeout(None);
                        Accepted::Ok(Box::new(link))
                    }
                    Err(why) => Accepted::Refused(why),
                }
            }
            Pending::Shm(s) => {
                let _ = s.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
                let mut link = SocketLink::new(s);
                if let Err(why) = welcome(&mut link, token, worker, vram_quota) {
                    return Accepted::Refused(why);
                }
                let s = link.into_stream();
                let _ = s.set_read_timeout(None);
                match RingLink::create(s) {
                    Ok(r) => Accepted::Ok(Box::new(r)),
                    Err(e) => Accepted::Refused(format!("cannot create the rings: {e}")),
                }
            }
        }
    }
}

fn socket_keepalive(s: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            &on as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn welcome<L: Link>(
    link: &mut L,
    token: &[u8],
    worker: &str,
    vram_quota: u64,
) -> Result<(), String> {
    let mut buf = Vec::new();
    let h = link.recv(&mut buf).map_err(|e| format!("no hello: {e}"))?;
    let refuse = |link: &mut L, reason, message: String| {
        let _ = link.send(
            &Msg::Refused {
                reason,
                message: &message,
            },
            &[],
        );
        message
    };
    match Msg::decode(h.tag, &buf) {
        Ok(Msg::Hello { version, token: t }) => {
            if version != crate::VERSION {
                return Err(refuse(
                    link,
                    refusal::VERSION,
                    format!(
                        "the client speaks protocol version {version}, this worker speaks {}: run the same tensor-fusion release on both sides",
                        crate::VERSION
                    ),
                ));
            }
            if !tokens_match(t, token) {
                return Err(refuse(link, refusal::TOKEN, "wrong token".to_string()));
            }
            link.send(
                &Msg::Welcome {
                    version: crate::VERSION,
                    worker,
                    vram_quota,
                },
                &[],
            )
            .map_err(|e| format!("cannot answer the hello: {e}"))
        }
        Ok(other) => Err(refuse(
            link,
            refusal::PROTOCOL,
            format!("the first message must be a hello, not {}", other.name()),
        )),
        Err(e) => Err(refuse(link, refusal::PROTOCOL, format!("bad hello: {e}"))),
    }
}
