//! The per-process slot table that lives in shared memory: each process that uses a shared
//! object (a simulated device, a vGPU region) claims a slot by pid and start time, keeps its own
//! counters there, and a slot whose process has died is reclaimed by whoever notices — with what
//! it held handed to the reclaimer, so totals can be corrected.
//!
//! Lock-free: claiming is one compare-and-swap on the pid. Invariants:
//! - a live process has at most one slot in a table (several threads registering at once all
//!   end up with the same, lowest, slot);
//! - a slot's pid is `0` (free), `RECLAIMING` (being emptied by one reclaimer) or a pid whose
//!   start time is written just after the claim (0 until then: "being registered");
//! - a pid reused by a new process never inherits the old one's slot (start times differ).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::shm::ShmSafe;

const FREE: u32 = 0;
const RECLAIMING: u32 = u32::MAX;

/// What a process keeps in its slot: counters, all atomics.
pub trait SlotData: Sync + Send {
    /// Set every counter to zero (a new process claims the slot).
    fn clear(&self);
}

/// One process's slot: pid, start time, and its data.
#[repr(C)]
pub struct ProcSlot<D> {
    pid: AtomicU32,
    _pad: u32,
    /// Start time of the process (clock ticks since boot), to tell a reused pid apart.
    start_time: AtomicU64,
    pub data: D,
}

/// A table of `N` process slots, `#[repr(C)]`, valid when zero-filled.
#[repr(C)]
pub struct ProcTable<D, const N: usize> {
    slots: [ProcSlot<D>; N],
}

// SAFETY: pids and start times are atomics, and `D: ShmSafe` is valid for any bit pattern.
unsafe impl<D: ShmSafe, const N: usize> ShmSafe for ProcTable<D, N> {}

/// A live (or registering) process's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupant {
    pub slot: usize,
    pub pid: u32,
}

impl<D: SlotData, const N: usize> ProcTable<D, N> {
    /// How many slots there are.
    pub const CAPACITY: usize = N;

    /// The data of slot `i`.
    pub fn data(&self, i: usize) -> &D {
        &self.slots[i].data
    }

    /// The pid in slot `i` (0 when free).
    pub fn pid(&self, i: usize) -> u32 {
        match self.slots[i].pid.load(Ordering::Acquire) {
            RECLAIMING => FREE,
            p => p,
        }
    }

    /// Empty every slot (a fresh table; nobody may be using it).
    pub fn reset(&self) {
        for s in &self.slots {
            s.pid.store(FREE, Ordering::Relaxed);
            s.start_time.store(0, Ordering::Relaxed);
            s.data.clear();
        }
    }

    /// Wait for a slot being claimed right now to get its start time (the claimer stores it just
    /// after winning the slot).
    fn settled_start(&self, i: usize) -> u64 {
        let s = &self.slots[i];
        for spin in 0..10_000u32 {
            let st = s.start_time.load(Ordering::Acquire);
            if st != 0 || s.pid.load(Ordering::Acquire) == FREE {
                return st;
            }
            if spin > 64 {
                std::thread::yield_now();
            }
        }
        s.start_time.load(Ordering::Acquire)
    }

    /// The lowest slot that holds process `pid` started at `start`.
    fn find(&self, pid: u32, start: u64) -> Option<usize> {
        (0..N).find(|&i| {
            self.slots[i].pid.load(Ordering::Acquire) == pid && self.settled_start(i) == start
        })
    }

    /// Find or claim the slot of process `pid`; `None` when every slot holds a live process.
    /// Slots of dead processes (and of an earlier process with the same pid) are reclaimed on the
    /// way, and `on_reclaim` sees each one (its index and what it held) before it is cleared.
    pub fn register(&self, pid: u32, mut on_reclaim: impl FnMut(usize, &D)) -> Option<usize> {
        let start = crate::process_start_time(pid).unwrap_or(1);
        for attempt in 0..2 {
            if let Some(i) = self.find(pid, start) {
                return Some(i);
            }
            // An entry of an earlier process with the same pid: what it held is gone.
            for i in 0..N {
                if self.slots[i].pid.load(Ordering::Acquire) == pid {
                    let st = self.settled_start(i);
                    if st != 0 && st != start {
                        self.reclaim(i, pid, &mut on_reclaim);
                    }
                }
            }
            for (i, s) in self.slots.iter().enumerate() {
                if s.pid
                    .compare_exchange(FREE, pid, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    s.data.clear();
                    s.start_time.store(start, Ordering::Release);
                    // Another thread of this process may have claimed a slot at the same time:
                    // everyone keeps the lowest one.
                    match self.find(pid, start) {
                        Some(j) if j < i => {
                            s.start_time.store(0, Ordering::Relaxed);
                            s.pid.store(FREE, Ordering::Release);
                            return Some(j);
                        }
                        _ => return Some(i),
                    }
                }
            }
            if attempt == 0 {
                self.reclaim_dead(&mut on_reclaim);
            }
        }
        None
    }

    /// Empty slot `i` if it still holds `pid`; `on_reclaim` sees it first (index and data).
    /// Whether this call emptied it.
    pub fn reclaim(&self, i: usize, pid: u32, on_reclaim: &mut impl FnMut(usize, &D)) -> bool {
        let s = &self.slots[i];
        if s.pid
            .compare_exchange(pid, RECLAIMING, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        on_reclaim(i, &s.data);
        s.data.clear();
        s.start_time.store(0, Ordering::Relaxed);
        s.pid.store(FREE, Ordering::Release);
        true
    }

    /// Empty the slots of processes that have exited or were killed; returns how many.
    pub fn reclaim_dead(&self, mut on_reclaim: impl FnMut(usize, &D)) -> usize {
        let mut n = 0;
        for (i, s) in self.slots.iter().enumerate() {
            let pid = s.pid.load(Ordering::Acquire);
            let start = s.start_time.load(Ordering::Acquire);
            if pid == FREE || pid == RECLAIMING || start == 0 {
                continue; // free, or being registered or reclaimed right now
            }
            if crate::process_start_time(pid) != Some(start)
                && self.reclaim(i, pid, &mut on_reclaim)
            {
                n += 1;
            }
        }
        n
    }

    /// The occupied slots (live processes, and any not yet reclaimed).
    pub fn occupants(&self) -> Vec<Occupant> {
        (0..N)
            .filter_map(|slot| {
                let pid = self.pid(slot);
                (pid != FREE).then_some(Occupant { slot, pid })
            })
            .collect()
    }

    /// Whether slot `i` holds a process that is still alive.
    pub fn alive(&self, i: usize) -> bool {
        let s = &self.slots[i];
        let pid = s.pid.load(Ordering::Acquire);
        pid != FREE
            && pid != RECLAIMING
            && crate::process_start_time(pid) == Some(s.start_time.load(Ordering::Acquire))
    }

    /// Whether any occupied slot's process is still alive.
    pub fn any_alive(&self) -> bool {
        (0..N).any(|i| self.alive(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Default)]
    #[repr(C)]
    struct Held {
        bytes: AtomicU64,
    }
    // SAFETY: atomics only.
    unsafe impl ShmSafe for Held {}
    impl SlotData for Held {
        fn clear(&self) {
            self.bytes.store(0, Ordering::Relaxed);
        }
    }

    fn table<const N: usize>() -> crate::shm::Shm<ProcTable<Held, N>> {
        crate::shm::Shm::anonymous().unwrap()
    }

    #[test]
    fn a_dead_process_slot_is_reclaimed_with_what_it_held() {
        let t = table::<4>();
        let me = std::process::id();
        let mine = t.register(me, |_, _| {}).unwrap();
        assert_eq!(
            t.register(me, |_, _| {}),
            Some(mine),
            "one slot per process"
        );
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let theirs = t.register(pid, |_, _| {}).unwrap();
        t.data(theirs).bytes.store(300, Ordering::Relaxed);
        child.wait().unwrap();
        let mut returned = 0;
        assert_eq!(
            t.reclaim_dead(|_, d| returned += d.bytes.load(Ordering::Relaxed)),
            1
        );
        assert_eq!(returned, 300);
        assert_eq!(t.pid(theirs), 0);
        assert_eq!(
            t.occupants(),
            vec![Occupant {
                slot: mine,
                pid: me
            }]
        );
        assert!(t.any_alive());
    }

    #[test]
    fn a_full_table_refuses_the_next_live_process() {
        let t = table::<2>();
        let mut kids: Vec<_> = (0..3)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .unwrap()
            })
            .collect();
        assert!(t.register(kids[0].id(), |_, _| {}).is_some());
        assert!(t.register(kids[1].id(), |_, _| {}).is_some());
        assert_eq!(t.register(kids[2].id(), |_, _| {}), None);
        for k in &mut kids {
            let _ = k.kill();
            let _ = k.wait();
        }
        assert!(
            t.register(kids[2].id(), |_, _| {}).is_some(),
            "dead ones make room"
        );
    }

    #[test]
    fn threads_registering_at_once_share_the_lowest_slot() {
        for _ in 0..50 {
            let t = Arc::new(table::<8>());
            let me = std::process::id();
            let got: Vec<usize> = (0..6)
                .map(|_| {
                    let t = t.clone();
                    std::thread::spawn(move || t.register(me, |_, _| {}).unwrap())
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect();
            assert!(got.iter().all(|&s| s == got[0]), "{got:?}");
            assert_eq!(t.occupants().len(), 1);
        }
    }
}
