//! The vGPU region: the file and its header, VRAM accounting, dead-process reclaim and GCRA
//! launch admission.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

mod common;

use std::time::Duration;

use common::*;
use tf_vgpu_limiter::region::{MAX_PROCS, UUID_LEN};
use tf_vgpu_limiter::{OverQuota, Region, RegionError};

const UUID: &str = "GPU-8d2f6a4e-1c3b-4f7a-9e21-0b5c6d7e8f90";

fn region_size() -> u64 {
    std::mem::size_of::<Region>() as u64
}

/// `Region::open` must fail with `Invalid`; returns the reason.
fn open_invalid(path: &std::path::Path) -> String {
    match Region::open(path) {
        Ok(_) => panic!(
            "{} opened although it is not a valid region",
            path.display()
        ),
        Err(RegionError::Invalid { path: p, why }) => {
            assert_eq!(p, path, "the error names the file");
            why
        }
        Err(e) => panic!("expected RegionError::Invalid, got {e:?}"),
    }
}

// ----- the file -----

#[test]
fn create_then_open_is_a_second_mapping_of_the_same_region() {
    let lim = limits(Some(3 * GIB), Some(0.3));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vgpu");
    let a = Region::create(&path, UUID, 3, &lim).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), region_size());

    let b = Region::open(&path).unwrap();
    assert!(!std::ptr::eq(&*a, &*b), "open maps the file again");
    assert_eq!(b.validate(), Ok(()));
    assert!(b.is_valid());
    assert_eq!(b.limits(), lim);
    assert_eq!(b.device_uuid(), UUID);
    assert_eq!(b.owner_pid(), std::process::id());
    assert_eq!(b.vram_quota(), Some(3 * GIB));
    assert_eq!(b.compute_share(), Some(0.3));

    // What one mapping writes, the other sees (as two processes would).
    let slot = a.register(std::process::id()).unwrap();
    assert_eq!(b.register(std::process::id()), Some(slot));
    a.charge(slot, GIB).unwrap();
    assert_eq!(b.vram_used(), GIB);
    assert_eq!(b.processes(), vec![(std::process::id(), GIB, 0)]);
    b.uncharge(slot, GIB / 2);
    assert_eq!(a.vram_used(), GIB / 2);

    let new = limits(Some(GIB), None);
    b.set_limits(&new);
    assert_eq!(a.limits(), new);
    assert_eq!(a.compute_share(), None);
    let s = a.stats();
    assert_eq!(s.device_uuid, UUID);
    assert_eq!(s.vram_quota, Some(GIB));
    assert_eq!(s.vram_used, GIB / 2);
    assert_eq!(s.vram_peak, GIB);
    assert_eq!(s.compute_share, None);
}

#[test]
fn create_refuses_an_existing_region() {
    // A region that processes may have mapped is never truncated under them.
    let f = region_file(UUID, &limits(Some(1000), None));
    f.region.charge(0, 700).unwrap();
    let err = Region::create(&f.path, "GPU-other", 1, &limits(Some(2000), Some(0.5)))
        .expect_err("creating over an existing region must fail");
    assert!(matches!(err, RegionError::Io { .. }), "{err}");
    assert_eq!(f.region.vram_used(), 700);
    assert_eq!(f.region.device_uuid(), UUID);
}

#[test]
fn limits_round_trip() {
    for lim in [
        limits(None, None),
        limits(Some(1), None),
        limits(Some(80 * GIB), Some(0.25)),
        limits(None, Some(0.000_001)),
        limits(Some(u64::MAX), Some(0.999_999)),
    ] {
        let r = Region::private(UUID, &lim);
        assert_eq!(r.limits(), lim);
        let f = region_file(UUID, &lim);
        assert_eq!(Region::open(&f.path).unwrap().limits(), lim);
    }
    // The whole device is no limit at all.
    let r = Region::private(UUID, &limits(None, Some(1.0)));
    assert_eq!(r.compute_share(), None);
    // Shares are stored in parts per million.
    let r = Region::private(UUID, &limits(None, Some(0.123_456_7)));
    assert_eq!(r.compute_share(), Some(0.123_457));
}

#[test]
fn uuid_round_trips_and_a_long_one_is_truncated() {
    assert_eq!(Region::private("", &limits(None, None)).device_uuid(), "");
    let long: String = std::iter::repeat_n("0123456789", 20).collect();
    let r = Region::private(&long, &limits(None, None));
    // The field keeps a terminating NUL.
    assert_eq!(r.device_uuid(), long[..UUID_LEN - 1]);
}

#[test]
fn open_rejects_a_truncated_file() {
    let f = region_file(UUID, &limits(Some(GIB), None));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&f.path)
        .unwrap();
    file.set_len(region_size() - 1).unwrap();
    let why = open_invalid(&f.path);
    assert_eq!(
        why,
        format!(
            "file is {} bytes, a region is {}",
            region_size() - 1,
            region_size()
        )
    );
    file.set_len(0).unwrap();
    let why = open_invalid(&f.path);
    assert!(why.starts_with("file is 0 bytes"), "{why}");
}

#[test]
fn open_rejects_bad_magic() {
    let f = region_file(UUID, &limits(Some(GIB), None));
    overwrite(&f.path, MAGIC_OFFSET, b"NOTVGPU!");
    let why = open_invalid(&f.path);
    assert!(why.starts_with("bad magic 0x"), "{why}");
    // A zero-filled file of the right size is not a region either.
    corrupt_magic(&f.path);
    assert_eq!(open_invalid(&f.path), "bad magic 0x0");
    // The first mapping notices too.
    assert!(!f.region.is_valid());
    assert_eq!(f.region.validate(), Err("bad magic 0x0".to_string()));
}

#[test]
fn open_rejects_a_wrong_version() {
    let f = region_file(UUID, &limits(Some(GIB), None));
    overwrite(&f.path, VERSION_OFFSET, &2u32.to_le_bytes());
    assert_eq!(open_invalid(&f.path), "version 2, this build understands 1");
}

#[test]
fn open_rejects_a_wrong_size() {
    let f = region_file(UUID, &limits(Some(GIB), None));
    let wrong = region_size() as u32 + 8;
    overwrite(&f.path, SIZE_OFFSET, &wrong.to_le_bytes());
    assert_eq!(
        open_invalid(&f.path),
        format!("size {wrong}, expected {}", region_size())
    );
}

#[test]
fn invalid_error_message_names_the_file_and_the_reason() {
    let f = region_file(UUID, &limits(Some(GIB), None));
    corrupt_magic(&f.path);
    let e = Region::open(&f.path).expect_err("corrupt region opened");
    assert_eq!(
        e.to_string(),
        format!(
            "vGPU region {} is not valid: bad magic 0x0",
            f.path.display()
        )
    );
}

#[test]
fn open_of_a_missing_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing");
    match Region::open(&path) {
        Err(RegionError::Io { path: p, source }) => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        Err(e) => panic!("expected an I/O error, got {e:?}"),
        Ok(_) => panic!("opened a missing file"),
    }
    assert!(!path.exists(), "open must not create the file");
}

// ----- VRAM accounting -----

#[test]
fn charge_up_to_the_quota_exactly_then_one_byte_more_fails_and_changes_nothing() {
    let other = Sleeper::spawn();
    let r = Region::private(UUID, &limits(Some(1000), None));
    let me = r.register(std::process::id()).unwrap();
    let them = r.register(other.pid()).unwrap();
    assert_ne!(me, them);
    r.charge(me, 600).unwrap();
    r.charge(them, 400).unwrap();
    assert_eq!(r.vram_used(), 1000);

    let before = r.stats();
    assert_eq!(
        r.charge(me, 1),
        Err(OverQuota {
            requested: 1,
            used: 1000,
            quota: 1000
        })
    );
    let after = r.stats();
    assert_eq!(after.vram_used, 1000);
    assert_eq!(after.processes, before.processes);
    assert_eq!(after.vram_peak, 1000);
    assert_eq!(after.oom_events, before.oom_events + 1);

    // A charge that overflows u64 is refused, not wrapped.
    assert_eq!(
        r.charge(them, u64::MAX),
        Err(OverQuota {
            requested: u64::MAX,
            used: 1000,
            quota: 1000
        })
    );
    // A zero-byte charge at the quota is fine.
    r.charge(me, 0).unwrap();
    assert_eq!(r.vram_used(), 1000);
}

#[test]
fn uncharge_restores_and_never_takes_more_than_the_process_holds() {
    let other = Sleeper::spawn();
    let r = Region::private(UUID, &limits(Some(1000), None));
    let me = r.register(std::process::id()).unwrap();
    let them = r.register(other.pid()).unwrap();
    r.charge(me, 300).unwrap();
    r.charge(them, 500).unwrap();

    r.uncharge(me, 100);
    assert_eq!(r.vram_used(), 700);
    // A double free (or a free of more than was charged) gives back only what `me` holds.
    r.uncharge(me, 1000);
    assert_eq!(r.vram_used(), 500);
    r.uncharge(me, 1);
    r.uncharge(me, u64::MAX);
    assert_eq!(r.vram_used(), 500);
    let procs = r.processes();
    assert!(procs.contains(&(std::process::id(), 0, 0)), "{procs:?}");
    assert!(procs.contains(&(other.pid(), 500, 0)), "{procs:?}");

    // What was freed can be charged again, up to the quota.
    r.charge(me, 500).unwrap();
    assert!(r.charge(me, 1).is_err());
    r.uncharge(me, 500);
    r.uncharge(them, 500);
    assert_eq!(r.vram_used(), 0);
}

#[test]
fn unlimited_quota_counts_but_never_refuses() {
    let r = Region::private(UUID, &limits(None, None));
    assert_eq!(r.vram_quota(), None);
    for _ in 0..1000 {
        r.charge(0, 1 << 40).unwrap();
    }
    assert_eq!(r.vram_used(), 1000 << 40);
    r.uncharge(0, 999 << 40);
    let s = r.stats();
    assert_eq!(s.vram_used, 1 << 40);
    assert_eq!(s.vram_peak, 1000 << 40);
    assert_eq!(s.oom_events, 0);
}

#[test]
fn peak_and_oom_counters() {
    let r = Region::private(UUID, &limits(Some(1000), None));
    r.charge(0, 700).unwrap();
    r.uncharge(0, 500);
    r.charge(1, 300).unwrap();
    let s = r.stats();
    assert_eq!((s.vram_used, s.vram_peak, s.oom_events), (500, 700, 0));
    assert!(r.charge(0, 501).is_err());
    assert!(r.charge(1, 600).is_err());
    let s = r.stats();
    assert_eq!((s.vram_used, s.vram_peak, s.oom_events), (500, 700, 2));
    r.charge(1, 500).unwrap();
    let s = r.stats();
    assert_eq!((s.vram_used, s.vram_peak, s.oom_events), (1000, 1000, 2));
    // Raising the quota lets more in; the peak follows.
    r.set_limits(&limits(Some(1500), None));
    r.charge(0, 500).unwrap();
    assert_eq!(r.stats().vram_peak, 1500);
}

#[test]
fn lowering_the_quota_below_usage_refuses_new_charges_only() {
    let r = Region::private(UUID, &limits(Some(1000), None));
    r.charge(0, 800).unwrap();
    r.set_limits(&limits(Some(500), None));
    assert_eq!(r.vram_used(), 800);
    assert!(r.charge(0, 1).is_err());
    r.uncharge(0, 400);
    r.charge(0, 100).unwrap();
    assert!(r.charge(0, 1).is_err());
}

// ----- processes and dead-process reclaim -----

#[test]
fn register_twice_with_the_same_live_pid_returns_the_same_slot() {
    let child = Sleeper::spawn();
    let r = Region::private(UUID, &limits(Some(GIB), None));
    let me = r.register(std::process::id()).unwrap();
    let it = r.register(child.pid()).unwrap();
    assert_ne!(me, it);
    assert_eq!(r.register(std::process::id()), Some(me));
    assert_eq!(r.register(child.pid()), Some(it));
    let mut pids: Vec<u32> = r.processes().iter().map(|p| p.0).collect();
    pids.sort_unstable();
    let mut want = vec![std::process::id(), child.pid()];
    want.sort_unstable();
    assert_eq!(pids, want);
}

#[test]
fn reclaim_dead_returns_a_killed_process_usage() {
    let mut child = Sleeper::spawn();
    let r = Region::private(UUID, &limits(Some(GIB), None));
    let me = r.register(std::process::id()).unwrap();
    let it = r.register(child.pid()).unwrap();
    r.charge(me, 200).unwrap();
    r.charge(it, 300).unwrap();

    assert_eq!(r.reclaim_dead(), 0, "nobody is dead yet");
    assert_eq!(r.vram_used(), 500);

    child.kill();
    child.reap();
    assert_eq!(r.reclaim_dead(), 300);
    assert_eq!(r.vram_used(), 200);
    assert_eq!(r.processes(), vec![(std::process::id(), 200, 0)]);
    assert_eq!(r.reclaim_dead(), 0, "reclaimed once only");
    assert_eq!(r.vram_used(), 200);
}

#[test]
fn a_zombie_counts_as_dead() {
    let mut child = Sleeper::spawn();
    let r = Region::private(UUID, &limits(Some(GIB), None));
    let it = r.register(child.pid()).unwrap();
    r.charge(it, 4096).unwrap();

    child.kill(); // not reaped: it stays a zombie
    let pid = child.pid();
    wait_until(
        Duration::from_secs(5),
        "the child to become a zombie",
        || proc_state(pid) == Some('Z'),
    );
    assert_eq!(r.reclaim_dead(), 4096);
    assert_eq!(r.vram_used(), 0);
    assert!(r.processes().is_empty());
    child.reap();
}

#[test]
fn an_over_quota_charge_first_reclaims_dead_processes() {
    let mut child = Sleeper::spawn();
    let r = Region::private(UUID, &limits(Some(1000), None));
    let me = r.register(std::process::id()).unwrap();
    let it = r.register(child.pid()).unwrap();
    r.charge(it, 800).unwrap();
    assert!(r.charge(me, 500).is_err(), "the child is alive");
    assert_eq!(r.stats().oom_events, 1);

    child.kill();
    child.reap();
    r.charge(me, 500).unwrap();
    let s = r.stats();
    assert_eq!(s.vram_used, 500);
    assert_eq!(s.oom_events, 1, "the retried charge succeeded");
    assert_eq!(s.processes, vec![(std::process::id(), 500, 0)]);
}

#[test]
fn a_full_table_is_freed_of_dead_processes_on_register() {
    let r = Region::private(UUID, &limits(None, None));
    for i in 0..MAX_PROCS as u32 {
        let slot = r.register(NEVER_A_PID + i).expect("a free slot");
        r.charge(slot, 10).unwrap();
    }
    assert_eq!(r.processes().len(), MAX_PROCS);
    assert_eq!(r.vram_used(), 10 * MAX_PROCS as u64);
    // No free slot: registering reclaims the dead ones and takes one of them.
    let me = r
        .register(std::process::id())
        .expect("a slot after reclaim");
    assert_eq!(r.processes(), vec![(std::process::id(), 0, 0)]);
    assert_eq!(r.vram_used(), 0);
    r.charge(me, 5).unwrap();
    assert_eq!(r.vram_used(), 5);
}

#[test]
fn a_table_full_of_live_processes_refuses_to_register() {
    let r = Region::private(UUID, &limits(None, None));
    let kids: Vec<Sleeper> = (0..MAX_PROCS).map(|_| Sleeper::spawn()).collect();
    for k in &kids {
        r.register(k.pid()).expect("a free slot");
    }
    assert_eq!(r.register(std::process::id()), None);
    drop(kids);
    assert!(r.register(std::process::id()).is_some());
}

#[test]
fn a_registered_pid_that_never_existed_is_dead() {
    let r = Region::private(UUID, &limits(Some(100), None));
    let slot = r.register(NEVER_A_PID).unwrap();
    assert_eq!(r.register(NEVER_A_PID), Some(slot));
    r.charge(slot, 100).unwrap();
    assert_eq!(r.reclaim_dead(), 100);
    assert_eq!(r.vram_used(), 0);
}

// ----- GCRA launch admission -----

const T0: u64 = 1_000_000_000_000;

#[test]
fn admission_at_a_fixed_time_waits_one_interval_more_per_launch_beyond_the_burst() {
    let r = Region::private(UUID, &limits(None, Some(0.5)));
    let me = r.register(std::process::id()).unwrap();
    let interval = 1_000_000;
    let burst = 5_000_000;
    r.set_pacing(interval, burst, 500_000, 0.5);
    assert!(r.pacing());

    let waits: Vec<u64> = (0..20).map(|_| r.admit_launch(me, T0)).collect();
    let want: Vec<u64> = (0..20u64)
        .map(|k| (k * interval).saturating_sub(burst))
        .collect();
    assert_eq!(waits, want);
    // Within the burst nobody waits; beyond it each launch waits one interval more.
    assert!(waits[..=5].iter().all(|&w| w == 0));
    for k in 6..20 {
        assert_eq!(waits[k] - waits[k - 1], interval, "launch {k}");
    }

    let s = r.stats();
    assert_eq!(s.launches, 20);
    assert_eq!(s.throttled_launches, 14, "only launches that wait count");
    assert_eq!(s.throttled_ns, waits.iter().sum::<u64>());
    assert_eq!(r.launch_counters(), (20, 14));
    assert_eq!(s.processes, vec![(std::process::id(), 0, 20)]);
    assert_eq!(s.launch_interval_ns, interval);
    assert_eq!(s.est_launch_ns, 500_000);
    assert_eq!(s.measured_share, 0.5);
}

#[test]
fn launches_spaced_by_the_interval_never_wait() {
    let r = Region::private(UUID, &limits(None, Some(0.3)));
    let interval = 333_333;
    r.set_pacing(interval, 0, 100_000, 0.3);
    for k in 0..1000 {
        assert_eq!(r.admit_launch(0, T0 + k * interval), 0, "launch {k}");
    }
    // One launch early by a nanosecond (and no burst) waits exactly that nanosecond.
    assert_eq!(r.admit_launch(0, T0 + 1000 * interval - 1), 1);
    assert_eq!(r.launch_counters(), (1001, 1));
    assert_eq!(r.stats().throttled_ns, 1);
}

#[test]
fn launches_faster_than_the_interval_are_paced_to_it() {
    let r = Region::private(UUID, &limits(None, Some(0.5)));
    let interval = 1_000_000;
    r.set_pacing(interval, 0, 500_000, 0.5);
    // A caller that launches every 0.5 ms and honours the wait ends up one launch per interval.
    let mut now = T0;
    let mut starts = Vec::new();
    for _ in 0..100 {
        let wait = r.admit_launch(0, now);
        now += wait;
        starts.push(now);
        now += interval / 2;
    }
    for w in starts.windows(2) {
        assert_eq!(w[1] - w[0], interval);
    }
}

#[test]
fn an_idle_gap_banks_no_credit_beyond_the_burst() {
    let r = Region::private(UUID, &limits(None, Some(0.5)));
    let interval = 1_000_000;
    let burst = 3_000_000;
    r.set_pacing(interval, burst, 500_000, 0.5);
    for k in 0..10 {
        r.admit_launch(0, T0 + k * interval);
    }
    // After a long pause, launches at one instant: only the burst goes without waiting.
    let later = T0 + 60_000_000_000;
    let waits: Vec<u64> = (0..10).map(|_| r.admit_launch(0, later)).collect();
    let free = waits.iter().filter(|&&w| w == 0).count() as u64;
    assert_eq!(free, burst / interval + 1);
    assert_eq!(waits[9], 9 * interval - burst);
}

#[test]
fn without_pacing_admission_is_free_and_counts_nothing() {
    let r = Region::private(UUID, &limits(None, None));
    assert!(!r.pacing());
    for _ in 0..100 {
        assert_eq!(r.admit_launch(0, T0), 0);
    }
    assert_eq!(r.launch_counters(), (0, 0));

    // Pacing on, then off again (interval 0).
    r.set_pacing(1_000_000, 0, 1, 0.1);
    assert!(r.pacing());
    r.admit_launch(0, T0);
    r.set_pacing(0, 0, 1, 0.1);
    assert!(!r.pacing());
    for _ in 0..100 {
        assert_eq!(r.admit_launch(0, T0), 0);
    }
    assert_eq!(r.launch_counters(), (1, 0));
    assert_eq!(r.stats().throttled_ns, 0);
}

#[test]
fn removing_the_compute_limit_stops_pacing() {
    let r = Region::private(UUID, &limits(None, Some(0.2)));
    r.set_pacing(1_000_000, 0, 1, 0.2);
    assert!(r.pacing());
    r.set_limits(&limits(None, None));
    assert!(!r.pacing());
    assert_eq!(r.admit_launch(0, T0), 0);
}

#[test]
fn samples_accumulate() {
    let r = Region::private(UUID, &limits(None, Some(0.5)));
    assert_eq!(r.sample_counters(), (0, 0));
    r.add_sample(1000);
    r.add_sample(3000);
    assert_eq!(r.sample_counters(), (4000, 2));
    let s = r.stats();
    assert_eq!((s.sampled_ns, s.samples), (4000, 2));
}
