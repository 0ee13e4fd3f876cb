//! The ledger: what this process was charged, allocation by allocation, and in which context.
//!
//! Every allocation the interposer charges is written here under its pointer (or array handle),
//! and a free gives back exactly what was charged for that pointer, once: a double free, a free
//! of an unknown pointer, or a free the driver refuses gives nothing back. Tearing a context
//! down (`cuCtxDestroy`, the last release or a reset of a primary context) gives back what the
//! context still held. So the vGPU's count can never drift from what the driver holds, whatever
//! the program does (sizes never come from the driver's answer to a later query).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard};

/// What a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A device pointer (`cuMemAlloc*`).
    Pointer,
    /// A CUDA array or mipmapped array handle.
    Array,
    /// A physical allocation of the VMM API (`cuMemCreate`): owned by the device, not by a
    /// context, and given back when its last reference goes.
    Physical,
}

/// One charged allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub bytes: u64,
    /// The context it was made in (its handle's address; 0: none was current).
    pub ctx: usize,
}

fn ledger() -> MutexGuard<'static, HashMap<(Kind, u64), Entry>> {
    static L: LazyLock<Mutex<HashMap<(Kind, u64), Entry>>> = LazyLock::new(Default::default);
    L.lock().unwrap_or_else(|p| p.into_inner())
}

/// Record a charged allocation. A key already present (the driver reused an address we never
/// saw freed) keeps its charge, which is returned so the caller can give it back.
pub fn record(kind: Kind, key: u64, entry: Entry) -> Option<Entry> {
    ledger().insert((kind, key), entry)
}

/// Take the entry of `key` out (it is being freed).
pub fn take(kind: Kind, key: u64) -> Option<Entry> {
    ledger().remove(&(kind, key))
}

/// Put an entry back (the free failed).
pub fn restore(kind: Kind, key: u64, entry: Entry) {
    ledger().insert((kind, key), entry);
}

/// Add `extra` bytes to the entry of `key` (a pitched allocation's padding).
pub fn grow(kind: Kind, key: u64, extra: u64) {
    if let Some(e) = ledger().get_mut(&(kind, key)) {
        e.bytes += extra;
    }
}

/// Take every entry of context `ctx` out (it is gone); returns their bytes.
pub fn take_context(ctx: usize) -> u64 {
    let mut l = ledger();
    let mut bytes = 0;
    l.retain(|(kind, _), e| {
        if *kind != Kind::Physical && e.ctx == ctx {
            bytes += e.bytes;
            false
        } else {
            true
        }
    });
    bytes
}
