//! The application side: charging through a client, pacing, and what each region-loss policy
//! does when the shared region is corrupted under a running process.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use tf_vgpu_limiter::{Client, LossPolicy, Region};

const UUID: &str = "GPU-client-0001";
const QUOTA: u64 = 1000;

/// A region owned by "the runner" (`f.region`) and the application's own mapping of it, with a
/// client on the latter (which owns it; the address is returned to tell it apart).
fn setup(policy: LossPolicy) -> (RegionFile, *const Region, Client) {
    let f = region_file(UUID, &limits(Some(QUOTA), Some(0.3)));
    let mapped = Region::open(&f.path).unwrap();
    let address: *const Region = &*mapped;
    let client = Client::with_region(mapped, policy);
    (f, address, client)
}

#[test]
fn charge_and_uncharge_through_the_client() {
    let (f, mapped, c) = setup(LossPolicy::Keep);
    assert_eq!(c.device_uuid(), UUID);
    assert_eq!(c.vram_quota(), Some(QUOTA));
    assert!(std::ptr::eq(c.region(), mapped));

    assert!(c.charge(600));
    assert!(c.charge(400));
    assert!(!c.charge(1), "one byte past the quota");
    c.uncharge(500);
    assert_eq!(c.vram_used(), 500);
    assert!(c.charge(500));
    c.uncharge(200);

    // The runner's mapping sees the process and its usage.
    let s = f.region.stats();
    assert_eq!(s.vram_used, 800);
    assert_eq!(s.oom_events, 1);
    assert_eq!(s.processes, vec![(std::process::id(), 800, 0)]);
    // The client registered this process once, in the slot the region gives it.
    assert_eq!(f.region.register(std::process::id()), c.slot());
    assert_eq!(c.slot(), c.slot());

    // Freeing more than was charged returns only what this process holds.
    c.uncharge(10_000);
    assert_eq!(f.region.vram_used(), 0);
}

#[test]
fn limits_changed_by_the_runner_apply_at_once() {
    let (f, _, c) = setup(LossPolicy::Keep);
    assert!(c.charge(QUOTA));
    f.region.set_limits(&limits(Some(2 * QUOTA), Some(0.3)));
    assert_eq!(c.vram_quota(), Some(2 * QUOTA));
    assert!(c.charge(QUOTA));
    assert!(!c.charge(1));
}

#[test]
fn before_launch_waits_when_paced() {
    let (f, _, c) = setup(LossPolicy::Keep);
    // Not paced: launches go at once and are not counted.
    let start = Instant::now();
    for _ in 0..1000 {
        c.before_launch();
    }
    assert!(start.elapsed() < Duration::from_millis(500));
    assert_eq!(f.region.launch_counters(), (0, 0));

    // One launch per 2 ms, no burst: 11 launches take at least 20 ms.
    f.region.set_pacing(2_000_000, 0, 600_000, 0.3);
    let start = Instant::now();
    for _ in 0..11 {
        c.before_launch();
    }
    assert!(
        start.elapsed() >= Duration::from_millis(19),
        "{:?}",
        start.elapsed()
    );
    let s = f.region.stats();
    assert_eq!(s.launches, 11);
    // (Most launches wait; one whose previous sleep overran by an interval does not.)
    assert!(s.throttled_launches >= 1, "{s:?}");
    assert_eq!(s.processes, vec![(std::process::id(), 0, 11)]);
}

#[test]
fn loss_policy_parses() {
    assert_eq!(LossPolicy::parse(""), Some(LossPolicy::Keep));
    assert_eq!(LossPolicy::parse("keep"), Some(LossPolicy::Keep));
    assert_eq!(LossPolicy::parse(" OPEN "), Some(LossPolicy::Open));
    assert_eq!(LossPolicy::parse("Closed"), Some(LossPolicy::Closed));
    assert_eq!(LossPolicy::parse("close"), None);
    assert_eq!(LossPolicy::parse("fail-open"), None);
}

// ----- region loss -----

#[test]
fn keep_enforces_the_quota_after_the_region_is_corrupted() {
    let (f, mapped, c) = setup(LossPolicy::Keep);
    assert!(c.charge(300));
    c.uncharge(300);
    corrupt_magic(&f.path);
    // SAFETY: the client owns this mapping and is alive, so it is still mapped.
    let mapped = unsafe { &*mapped };
    assert!(
        !mapped.is_valid(),
        "the application's mapping sees the corruption"
    );

    assert_eq!(c.vram_quota(), Some(QUOTA));
    assert!(c.charge(QUOTA), "within the quota");
    assert!(!c.charge(1), "beyond the quota");
    c.uncharge(QUOTA / 2);
    assert!(c.charge(QUOTA / 2));
    assert!(!c.charge(1));
    // The client left the corrupt region alone.
    assert!(!std::ptr::eq(c.region(), mapped));
    assert_eq!(f.region.vram_used(), 0);
    assert_eq!(c.device_uuid(), UUID);
}

/// What this process held when the region was lost still counts against the quota it keeps.
#[test]
fn keep_counts_what_the_process_held_before_the_loss() {
    let (f, _, c) = setup(LossPolicy::Keep);
    assert!(c.charge(600));
    corrupt_magic(&f.path);
    assert!(!c.charge(401), "600 held + 401 > quota {QUOTA}");
    assert!(c.charge(400));
    assert!(!c.charge(1));
}

/// `keep` enforces the last known limits: those in force when the region was lost, not those
/// the process started with.
#[test]
fn keep_keeps_the_last_known_quota() {
    let (f, _, c) = setup(LossPolicy::Keep);
    f.region.set_limits(&limits(Some(2 * QUOTA), Some(0.3)));
    assert_eq!(c.vram_quota(), Some(2 * QUOTA));
    corrupt_magic(&f.path);
    assert_eq!(
        c.vram_quota(),
        Some(2 * QUOTA),
        "the application was shown {} bytes",
        2 * QUOTA
    );
    assert!(c.charge(2 * QUOTA));
    assert!(!c.charge(1));
}

/// `keep` keeps enforcing the compute share too: launches stay paced as they last were.
#[test]
fn keep_keeps_pacing_launches_after_the_loss() {
    let (f, _, c) = setup(LossPolicy::Keep);
    let interval = 2_000_000;
    f.region.set_pacing(interval, 0, 600_000, 0.3);
    assert!(c.region().pacing());
    corrupt_magic(&f.path);
    let r = c.region();
    assert_eq!(r.compute_share(), Some(0.3));
    assert!(r.pacing(), "launches are no longer paced after the loss");
    assert_eq!(r.stats().launch_interval_ns, interval);
}

#[test]
fn open_stops_enforcing_after_the_region_is_corrupted() {
    let (f, _, c) = setup(LossPolicy::Open);
    f.region.set_pacing(2_000_000, 0, 600_000, 0.3);
    assert!(c.charge(QUOTA));
    corrupt_magic(&f.path);
    assert_eq!(c.vram_quota(), None);
    assert!(c.charge(100 * QUOTA));
    assert!(c.charge(u64::MAX / 2));
    assert!(!c.region().pacing());
    assert_eq!(c.region().compute_share(), None);
    let start = Instant::now();
    for _ in 0..100 {
        c.before_launch();
    }
    assert!(start.elapsed() < Duration::from_millis(100));
    assert_eq!(
        f.region.vram_used(),
        QUOTA,
        "nothing more went to the corrupt region"
    );
}

#[test]
fn closed_refuses_every_allocation_after_the_region_is_corrupted() {
    let (f, _, c) = setup(LossPolicy::Closed);
    assert!(c.charge(100));
    corrupt_magic(&f.path);
    assert!(!c.charge(1));
    assert!(!c.charge(0));
    c.uncharge(100);
    assert!(!c.charge(1), "freeing does not reopen");
    assert_eq!(c.vram_quota(), Some(QUOTA));
    assert_eq!(
        f.region.vram_used(),
        100,
        "the corrupt region is left alone"
    );
}

#[test]
fn loss_is_noticed_by_any_call() {
    for policy in [LossPolicy::Keep, LossPolicy::Open, LossPolicy::Closed] {
        let (f, mapped, c) = setup(policy);
        assert!(c.charge(10));
        corrupt_magic(&f.path);
        // A free is the first call after the corruption: it must not touch the corrupt region.
        c.uncharge(10);
        assert_eq!(f.region.vram_used(), 10, "{policy:?}");
        assert!(!std::ptr::eq(c.region(), mapped), "{policy:?}");
        assert_eq!(c.vram_used(), 0, "{policy:?}");
    }
}

/// Several threads make a process's first allocations at once: each frees what it allocated,
/// so nothing may stay charged.
#[test]
fn concurrent_first_use_of_a_client_leaks_nothing() {
    for round in 0..2000 {
        let region = Region::private(UUID, &limits(Some(1 << 40), None));
        let c = Arc::new(Client::with_region(region, LossPolicy::Keep));
        let threads = 4;
        let start = Arc::new(Barrier::new(threads));
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let c = c.clone();
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    assert!(c.charge(100));
                    c.uncharge(100);
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(
            c.region().vram_used(),
            0,
            "round {round}: frees went to another entry than their allocations; entries {:?}",
            c.region().processes()
        );
    }
}
