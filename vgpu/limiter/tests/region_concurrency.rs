//! The region's lock-free paths under random and concurrent use: VRAM accounting never exceeds
//! the quota and always adds up; GCRA admission loses no update.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tf_vgpu_limiter::{OverQuota, Region};

const UUID: &str = "GPU-concurrency";

#[derive(Debug, Clone)]
enum Op {
    Charge(usize, u64),
    Uncharge(usize, u64),
}

const SLOTS: usize = 4;

fn ops(quota: u64) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        3 => (0..SLOTS, 0..=quota / 2).prop_map(|(s, b)| Op::Charge(s, b)),
        2 => (0..SLOTS, 0..=quota).prop_map(|(s, b)| Op::Uncharge(s, b)),
        1 => (0..SLOTS).prop_map(|s| Op::Uncharge(s, u64::MAX)),
    ];
    proptest::collection::vec(op, 0..200)
}

/// Interleaved charges and uncharges of several processes (the test process and three live
/// children, each with its own entry) against a model of what each holds.
#[test]
fn random_charges_and_uncharges_never_exceed_the_quota_and_always_add_up() {
    let kids: Vec<Sleeper> = (0..SLOTS - 1).map(|_| Sleeper::spawn()).collect();
    let pids: Vec<u32> = std::iter::once(std::process::id())
        .chain(kids.iter().map(Sleeper::pid))
        .collect();
    let strategy = (1u64..=1_000_000).prop_flat_map(|q| (Just(q), ops(q)));
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |(quota, ops)| {
        let r = leaked(Region::private(UUID, &limits(Some(quota), None)));
        let slots: Vec<usize> = pids.iter().map(|&p| r.register(p).unwrap()).collect();
        let mut held = [0u64; SLOTS];
        let mut ooms = 0;
        let mut peak = 0;
        for op in &ops {
            match *op {
                Op::Charge(i, b) => {
                    let used: u64 = held.iter().sum();
                    let got = r.charge(slots[i], b);
                    if used + b <= quota {
                        prop_assert_eq!(got, Ok(()));
                        held[i] += b;
                    } else {
                        prop_assert_eq!(
                            got,
                            Err(OverQuota {
                                requested: b,
                                used,
                                quota
                            })
                        );
                        ooms += 1;
                    }
                }
                Op::Uncharge(i, b) => {
                    r.uncharge(slots[i], b);
                    held[i] -= b.min(held[i]);
                }
            }
            let used: u64 = held.iter().sum();
            peak = peak.max(used);
            let s = r.stats();
            prop_assert!(s.vram_used <= quota);
            prop_assert_eq!(s.vram_used, used);
            let per_proc: u64 = s.processes.iter().map(|p| p.1).sum();
            prop_assert_eq!(per_proc, s.vram_used);
            for (i, &pid) in pids.iter().enumerate() {
                prop_assert!(s.processes.contains(&(pid, held[i], 0)));
            }
            prop_assert_eq!(s.vram_peak, peak);
            prop_assert_eq!(s.oom_events, ooms);
        }
        for (i, &slot) in slots.iter().enumerate() {
            r.uncharge(slot, held[i]);
        }
        prop_assert_eq!(r.vram_used(), 0);
        prop_assert!(r.processes().iter().all(|p| p.1 == 0));
        Ok::<(), TestCaseError>(())
    });
    drop(kids);
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Threads charging and uncharging concurrently (a thread per entry), with random sizes.
fn stress(threads: usize, ops_per_thread: usize, quota: u64, seed: u64) {
    let r = leaked(Region::private(UUID, &limits(Some(quota), None)));
    let done = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(threads + 2));

    // A watcher checks the invariant while the others run (it starts with them, and looks at
    // least once even when a loaded machine schedules it only after they finished).
    let watcher = {
        let done = done.clone();
        let start = start.clone();
        std::thread::spawn(move || {
            let mut looks = 0u64;
            start.wait();
            loop {
                let finished = done.load(Ordering::Relaxed);
                let used = r.vram_used();
                assert!(used <= quota, "used {used} > quota {quota}");
                looks += 1;
                if finished {
                    break;
                }
                std::thread::yield_now();
            }
            looks
        })
    };

    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let refused = refused.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                let slot = t;
                let mut rng = Rng(seed ^ (t as u64).wrapping_mul(0x1234_5678_9abc_def1));
                let mut held = 0u64;
                start.wait();
                for _ in 0..ops_per_thread {
                    if rng.below(8) < 5 {
                        let b = rng.below(quota / 8) + 1;
                        match r.charge(slot, b) {
                            Ok(()) => held += b,
                            Err(e) => {
                                assert_eq!(e.requested, b);
                                assert_eq!(e.quota, quota);
                                assert!(e.used + b > quota, "{e:?} refused within the quota");
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    } else {
                        // Sometimes more than held: only what is held comes back.
                        let b = rng.below(held + quota / 16 + 1);
                        r.uncharge(slot, b);
                        held -= b.min(held);
                    }
                }
                held
            })
        })
        .collect();
    start.wait();
    let held: Vec<u64> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    assert!(watcher.join().unwrap() > 0);

    let s = r.stats();
    assert_eq!(s.vram_used, held.iter().sum::<u64>());
    assert!(s.vram_peak <= quota);
    assert_eq!(s.oom_events, refused.load(Ordering::Relaxed));
    assert!(s.oom_events > 0, "the stress reached the quota");
    // Each entry holds exactly what its thread believes: freeing everything of one entry gives
    // back exactly that.
    for (slot, &h) in held.iter().enumerate() {
        let before = r.vram_used();
        r.uncharge(slot, u64::MAX);
        assert_eq!(before - r.vram_used(), h, "slot {slot}");
    }
    assert_eq!(r.vram_used(), 0);
}

#[test]
fn four_threads_times_100k_random_charges_and_uncharges_add_up() {
    stress(4, 100_000, 1 << 20, 0x5eed);
}

#[test]
fn concurrent_random_charges_from_proptest_seeds_add_up() {
    proptest!(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() },
    |(seed in any::<u64>(), quota in 64u64..1_000_000, threads in 2usize..5)| {
        stress(threads, 2_000, quota, seed);
    });
}

#[test]
fn concurrent_admission_loses_no_update() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 2_500;
    const N: u64 = (THREADS * PER_THREAD) as u64;
    let interval = 100_000;
    let burst = 2_000_000;
    let now = 1_000_000_000_000;
    let r = leaked(Region::private(UUID, &limits(None, Some(0.5))));
    r.set_pacing(interval, burst, 50_000, 0.5);
    let start = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                (0..PER_THREAD)
                    .map(|_| r.admit_launch(t, now))
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut waits: Vec<u64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    waits.sort_unstable();
    // Every launch got its own slot of the schedule: together they span N intervals.
    let want: Vec<u64> = (0..N)
        .map(|k| (k * interval).saturating_sub(burst))
        .collect();
    assert_eq!(waits, want);
    assert_eq!(r.admit_launch(0, now), N * interval - burst);

    let throttled = want.iter().filter(|&&w| w > 0).count() as u64 + 1;
    let s = r.stats();
    assert_eq!(s.launches, N + 1);
    assert_eq!(s.throttled_launches, throttled);
    assert_eq!(
        s.throttled_ns,
        want.iter().sum::<u64>() + N * interval - burst
    );
}

#[test]
fn concurrent_registration_of_one_process_yields_one_entry() {
    // The threads of one process register at once (a client's first call on several threads).
    for round in 0..2000 {
        let r = leaked(Region::private(UUID, &limits(Some(GIB), None)));
        let threads = 4;
        let start = Arc::new(Barrier::new(threads));
        let slots: Vec<usize> = (0..threads)
            .map(|_| {
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    r.register(std::process::id()).unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        assert!(
            slots.iter().all(|&s| s == slots[0]),
            "round {round}: one pid registered from {threads} threads got slots {slots:?}; \
             entries {:?}",
            r.processes()
        );
        assert_eq!(
            r.processes(),
            vec![(std::process::id(), 0, 0)],
            "round {round}"
        );
        assert_eq!(r.register(std::process::id()), Some(slots[0]));
    }
}
