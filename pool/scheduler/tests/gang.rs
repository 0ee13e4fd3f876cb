//! Gang placement: all or nothing, with no reservation left behind by a gang that waits or
//! fails, including under concurrent requests from several threads.

// Test targets share the package's dev-dependencies.
#![allow(unused_crate_dependencies)]

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tf_scheduler::gang::parse_go_duration;
use tf_scheduler::{
    AllocationId, GangEvent, GangInfo, GangSpec, GangStatus, GpuSpec, NodeSpec, Policy, PoolConfig,
    Qos, Request, SchedError, Scheduler, Vendor,
};

const GIB: u64 = 1 << 30;

fn cluster(gpus_per_node: &[usize]) -> (Scheduler, Vec<String>) {
    let mut s = Scheduler::new(Policy::default());
    s.add_pool(PoolConfig::new("p")).unwrap();
    let mut names = Vec::new();
    for (i, &n) in gpus_per_node.iter().enumerate() {
        let name = format!("n{i}");
        s.add_node(NodeSpec {
            name: name.clone(),
            pool: "p".into(),
            cpu_milli: 64_000,
            memory_bytes: 256 * GIB,
            gpus: vec![GpuSpec::new("A100", Vendor::Nvidia, 100, 40); n],
        })
        .unwrap();
        names.push(name);
    }
    (s, names)
}

fn gpus(n: u32) -> Request {
    Request::new("p", "ns", n)
        .with_share(1000)
        .with_host(1000, GIB)
}

/// Every GPU's and node's used amounts equal the sum of the live grants, and nothing is over
/// capacity.
fn check_accounting(s: &Scheduler, nodes: &[String]) {
    let mut gpu_used: HashMap<(String, u32), (u64, u64)> = HashMap::new();
    let mut cpu_used: HashMap<String, u64> = HashMap::new();
    for id in s.allocation_ids() {
        let a = s.allocation(id).unwrap();
        *cpu_used.entry(a.node.clone()).or_default() += a.cpu_milli;
        for g in &a.gpus {
            let e = gpu_used.entry((a.node.clone(), g.gpu)).or_default();
            e.0 += g.tflops_milli;
            e.1 += g.vram_bytes;
        }
    }
    for name in nodes {
        let st = s.node_status(name).unwrap();
        assert!(st.cpu_free <= st.cpu_capacity);
        assert_eq!(
            st.cpu_capacity - st.cpu_free,
            cpu_used.get(name).copied().unwrap_or(0)
        );
        for (i, g) in st.gpus.iter().enumerate() {
            let (t, v) = gpu_used
                .get(&(name.clone(), i as u32))
                .copied()
                .unwrap_or((0, 0));
            assert!(g.tflops_free <= g.tflops_capacity && g.vram_free <= g.vram_capacity);
            assert!(
                t <= g.tflops_capacity && v <= g.vram_capacity,
                "{name}/{i} over"
            );
            assert_eq!(g.tflops_capacity - g.tflops_free, t, "{name}/{i} tflops");
            assert_eq!(g.vram_capacity - g.vram_free, v, "{name}/{i} vram");
        }
    }
}

#[test]
fn a_gang_that_does_not_fit_holds_nothing_waits_and_times_out() {
    let (mut s, nodes) = cluster(&[4, 4]);
    let t0 = Instant::now();
    let spec = GangSpec::new("ns/train", 3).with_timeout(Duration::from_secs(60));
    // Three 4-GPU members on two 4-GPU nodes: never all at once.
    for (i, member) in ["w0", "w1"].iter().enumerate() {
        let st = s.gang_submit(&spec, member, gpus(4), t0).unwrap();
        assert_eq!(
            st,
            GangStatus::Waiting {
                members: i as u32 + 1,
                min_members: 3,
                blocked: None
            }
        );
        assert_eq!(s.allocation_count(), 0, "waiting members reserve nothing");
    }
    let st = s.gang_submit(&spec, "w2", gpus(4), t0).unwrap();
    assert!(
        matches!(
            st,
            GangStatus::Waiting {
                members: 3,
                blocked: Some(_),
                ..
            }
        ),
        "{st:?}"
    );
    assert_eq!(
        s.allocation_count(),
        0,
        "a failed attempt leaves nothing behind"
    );
    check_accounting(&s, &nodes);
    // Others can use the cluster meanwhile.
    let other = s.reserve(&gpus(2)).unwrap();
    assert!(s.gang_poll(t0 + Duration::from_secs(30)).is_empty());
    let events = s.gang_poll(t0 + Duration::from_secs(61));
    assert_eq!(
        events,
        vec![GangEvent::TimedOut {
            gang: "ns/train".into(),
            members: vec!["w0".into(), "w1".into(), "w2".into()]
        }]
    );
    assert_eq!(s.gang_info("ns/train"), None);
    assert_eq!(s.allocation_ids(), vec![other.id]);
    check_accounting(&s, &nodes);
}

#[test]
fn a_gang_is_placed_by_its_last_member_or_by_a_poll_after_room_is_freed() {
    let (mut s, nodes) = cluster(&[4, 4]);
    let t0 = Instant::now();
    let blocker = s.reserve(&gpus(4)).unwrap();
    let spec = GangSpec::new("ns/job", 2);
    s.gang_submit(&spec, "a", gpus(4), t0).unwrap();
    let st = s.gang_submit(&spec, "b", gpus(4), t0).unwrap();
    assert!(matches!(
        st,
        GangStatus::Waiting {
            blocked: Some(_),
            ..
        }
    ));
    assert_eq!(s.allocation_count(), 1);
    s.release(blocker.id).unwrap();
    let events = s.gang_poll(t0 + Duration::from_secs(1));
    let [GangEvent::Placed { gang, allocations }] = events.as_slice() else {
        panic!("{events:?}");
    };
    assert_eq!(gang, "ns/job");
    let names: Vec<&str> = allocations.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_ne!(allocations[0].1.node, allocations[1].1.node);
    // A resubmitted member gets its allocation back; a later member is placed alone.
    let again = s.gang_submit(&spec, "a", gpus(4), t0).unwrap();
    assert_eq!(again, GangStatus::Placed(vec![allocations[0].clone()]));
    let late = s.gang_submit(&spec, "c", gpus(1), t0);
    assert!(
        matches!(late, Err(SchedError::Unschedulable { .. })),
        "{late:?}"
    );
    let Some(GangInfo::Placed { members }) = s.gang_info("ns/job") else {
        panic!()
    };
    assert_eq!(members.len(), 2);
    assert_eq!(s.gang_cancel("ns/job").unwrap().len(), 2);
    assert_eq!(s.allocation_count(), 0);
    check_accounting(&s, &nodes);
}

#[test]
fn reserve_all_undoes_preemption_when_the_group_fails() {
    let (mut s, nodes) = cluster(&[2, 2]);
    let low: Vec<AllocationId> = (0..4)
        .map(|_| s.reserve(&gpus(1).with_qos(Qos::Low)).unwrap().id)
        .collect();
    let before: Vec<_> = nodes.iter().map(|n| s.node_status(n).unwrap()).collect();
    // Two 2-GPU members could preempt everything, but the third member cannot fit at all.
    let group = [
        gpus(2).with_qos(Qos::High),
        gpus(2).with_qos(Qos::High),
        gpus(2).with_qos(Qos::High),
    ];
    assert!(s.reserve_all(&group).is_err());
    let mut live = s.allocation_ids();
    live.sort();
    assert_eq!(live, low, "preempted allocations are back, with their ids");
    let after: Vec<_> = nodes.iter().map(|n| s.node_status(n).unwrap()).collect();
    assert_eq!(before, after, "exactly the same GPUs and amounts");
    // The same group without the impossible member preempts and succeeds.
    let placed = s.reserve_all(&group[..2]).unwrap();
    assert_eq!(placed.len(), 2);
    let preempted: BTreeSet<_> = placed.iter().flat_map(|a| a.preempted.clone()).collect();
    assert_eq!(preempted, low.iter().copied().collect());
    check_accounting(&s, &nodes);
}

#[test]
fn operator_annotations_map_onto_gang_specs() {
    let ann = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|(a, _)| *a == k).map(|(_, v)| *v)
    };
    assert_eq!(GangSpec::from_annotations("ns/w", ann(&[])).unwrap(), None);
    let spec = GangSpec::from_annotations(
        "ns/w",
        ann(&[
            ("tensor-fusion.ai/gang-min-members", "4"),
            ("tensor-fusion.ai/gang-timeout", "1m30s"),
        ]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        spec,
        GangSpec::new("ns/w", 4).with_timeout(Duration::from_secs(90))
    );
    let on = GangSpec::from_annotations(
        "ns/w",
        ann(&[
            ("tensor-fusion.ai/gang-enabled", "true"),
            ("tensor-fusion.ai/gang-timeout", "0"),
        ]),
    )
    .unwrap()
    .unwrap();
    assert_eq!((on.min_members, on.timeout), (1, None));
    let off = GangSpec::from_annotations(
        "ns/w",
        ann(&[
            ("tensor-fusion.ai/gang-enabled", "false"),
            ("tensor-fusion.ai/gang-min-members", "4"),
        ]),
    );
    assert_eq!(off.unwrap(), None);
    for bad in [
        &[("tensor-fusion.ai/gang-min-members", "0")][..],
        &[("tensor-fusion.ai/gang-min-members", "four")],
        &[("tensor-fusion.ai/gang-enabled", "yes")],
        &[
            ("tensor-fusion.ai/gang-min-members", "2"),
            ("tensor-fusion.ai/gang-timeout", "10 minutes"),
        ],
    ] {
        let e = GangSpec::from_annotations("ns/w", ann(bad)).unwrap_err();
        assert!(matches!(e, SchedError::InvalidRequest(_)), "{e}");
    }
    assert_eq!(
        parse_go_duration("300ms").unwrap(),
        Some(Duration::from_millis(300))
    );
    assert_eq!(
        parse_go_duration("1.5h").unwrap(),
        Some(Duration::from_secs(5400))
    );
    assert_eq!(parse_go_duration("0s").unwrap(), None);
    assert!(parse_go_duration("-1s").is_err() && parse_go_duration("5").is_err());
}

/// What the test threads know, kept beside the scheduler under one lock.
struct World {
    s: Scheduler,
    clock_ms: u64,
    /// Live allocations of plain requests (minus those preempted).
    singles: BTreeSet<AllocationId>,
    mins: HashMap<String, u32>,
}

impl World {
    fn now(&self, t0: Instant) -> Instant {
        t0 + Duration::from_millis(self.clock_ms)
    }

    fn note_preempted<'a>(
        &mut self,
        allocs: impl IntoIterator<Item = &'a tf_scheduler::Allocation>,
    ) {
        for a in allocs {
            for p in &a.preempted {
                self.singles.remove(p);
            }
        }
    }

    /// The invariant: every live allocation is a plain request's or a member of a placed gang
    /// that has at least its minimum of members; waiting or failed gangs hold nothing.
    fn check(&self, nodes: &[String]) {
        let mut expected: BTreeSet<AllocationId> = self.singles.clone();
        for name in self.s.gang_names() {
            match self.s.gang_info(&name).unwrap() {
                GangInfo::Waiting { .. } => {}
                GangInfo::Placed { members } => {
                    assert!(
                        members.len() as u32 >= self.mins[&name],
                        "{name}: {} members placed, min {}",
                        members.len(),
                        self.mins[&name]
                    );
                    for (m, id) in members {
                        assert!(self.s.allocation(id).is_some(), "{name}/{m} lost {id}");
                        expected.insert(id);
                    }
                }
            }
        }
        let live: BTreeSet<AllocationId> = self.s.allocation_ids().into_iter().collect();
        assert_eq!(
            live, expected,
            "no allocation outside singles and placed gangs"
        );
        check_accounting(&self.s, nodes);
    }
}

#[derive(Debug, Clone)]
struct GangCase {
    min: u32,
    extra: u32,
    gpus: u32,
    share: u32,
    timeout_ms: Option<u64>,
}

fn gang_case() -> impl Strategy<Value = GangCase> {
    (
        1u32..=4,
        0u32..=2,
        1u32..=3,
        prop_oneof![Just(1000u32), 200u32..=1000],
        prop::option::of(5u64..=60),
    )
        .prop_map(|(min, extra, gpus, share, timeout_ms)| GangCase {
            min,
            extra,
            gpus,
            share: if gpus > 1 { 1000 } else { share },
            timeout_ms,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn gangs_are_all_or_nothing_under_concurrent_requests(
        node_gpus in prop::collection::vec(1usize..=4, 2..=4),
        gangs in prop::collection::vec(gang_case(), 1..=5),
        singles in prop::collection::vec((1u32..=2, 100u32..=1000, any::<bool>()), 0..=16),
    ) {
        let (s, nodes) = cluster(&node_gpus);
        let t0 = Instant::now();
        let world = Mutex::new(World {
            s,
            clock_ms: 0,
            singles: BTreeSet::new(),
            mins: gangs
                .iter()
                .enumerate()
                .map(|(i, g)| (format!("g{i}"), g.min))
                .collect(),
        });
        std::thread::scope(|scope| {
            // One thread per gang, submitting its members one by one.
            for (i, g) in gangs.iter().enumerate() {
                let (world, nodes) = (&world, &nodes);
                scope.spawn(move || {
                    let mut spec = GangSpec::new(&format!("g{i}"), g.min);
                    if let Some(t) = g.timeout_ms {
                        spec = spec.with_timeout(Duration::from_millis(t));
                    }
                    for m in 0..g.min + g.extra {
                        let mut w = world.lock().unwrap();
                        let now = w.now(t0);
                        let req = Request::new("p", "ns", g.gpus)
                            .with_share(g.share)
                            .with_host(1000, GIB)
                            .with_qos(Qos::High);
                        if let Ok(GangStatus::Placed(allocs)) =
                            w.s.gang_submit(&spec, &format!("m{m}"), req, now)
                        {
                            let allocs: Vec<_> = allocs.into_iter().map(|(_, a)| a).collect();
                            w.note_preempted(&allocs);
                        }
                        w.check(nodes);
                        drop(w);
                        std::thread::yield_now();
                    }
                });
            }
            // Plain requests (which gang members, of higher QoS, may preempt) and releases.
            {
                let (world, nodes, singles) = (&world, &nodes, &singles);
                scope.spawn(move || {
                    for (k, &(n, share, medium)) in singles.iter().enumerate() {
                        let mut w = world.lock().unwrap();
                        let share = if n > 1 { 1000 } else { share };
                        let qos = if medium { Qos::Medium } else { Qos::Low };
                        let req = Request::new("p", "ns", n).with_share(share).with_qos(qos);
                        if let Ok(a) = w.s.reserve(&req) {
                            w.note_preempted(std::slice::from_ref(&a));
                            w.singles.insert(a.id);
                        }
                        if k % 3 == 2
                            && let Some(&id) = w.singles.iter().next()
                        {
                            w.s.release(id).unwrap();
                            w.singles.remove(&id);
                        }
                        w.check(nodes);
                        drop(w);
                        std::thread::yield_now();
                    }
                });
            }
            // The clock: time passes, waiting gangs are retried or time out.
            {
                let (world, nodes) = (&world, &nodes);
                scope.spawn(move || {
                    for _ in 0..20 {
                        let mut w = world.lock().unwrap();
                        w.clock_ms += 5;
                        let now = w.now(t0);
                        for e in w.s.gang_poll(now) {
                            if let GangEvent::Placed { allocations, .. } = e {
                                let allocs: Vec<_> =
                                    allocations.into_iter().map(|(_, a)| a).collect();
                                w.note_preempted(&allocs);
                            }
                        }
                        w.check(nodes);
                        drop(w);
                        std::thread::yield_now();
                    }
                });
            }
        });
        // Cancelling every gang and releasing the rest restores every capacity exactly.
        let mut w = world.into_inner().unwrap();
        for name in w.s.gang_names() {
            w.s.gang_cancel(&name).unwrap();
        }
        for id in std::mem::take(&mut w.singles) {
            w.s.release(id).unwrap();
        }
        prop_assert_eq!(w.s.allocation_count(), 0);
        for n in &nodes {
            let st = w.s.node_status(n).unwrap();
            prop_assert!(st.gpus.iter().all(|g| g.tflops_free == g.tflops_capacity
                && g.vram_free == g.vram_capacity));
            prop_assert_eq!(st.cpu_free, st.cpu_capacity);
        }
    }
}
