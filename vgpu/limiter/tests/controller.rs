//! The compute-share controller against a simulated device: a vGPU whose program wants the
//! whole device runs kernels of a fixed duration, paced by the region's launch admission; the
//! controller is fed what the device measured and must bring the achieved share to the target.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

mod common;

use common::*;
use tf_vgpu_limiter::controller::{INITIAL_LAUNCH_NS, SHARE_WINDOW_NS};
use tf_vgpu_limiter::{Controller, Estimator, Region, RegionMap, Tick};

const TICK_NS: u64 = 100_000_000;
const SECOND: u64 = 1_000_000_000;
const T0: u64 = 1_000 * SECOND;

/// A program alone on a simulated device: it launches a kernel of `kernel_ns`, waits for it,
/// launches the next (as fast as the pacing lets it), and the device runs one kernel at a time.
struct Sim {
    region: RegionMap,
    slot: usize,
    ctl: Controller,
    estimator: Estimator,
    kernel_ns: u64,
    /// Sample (as the interposer does with events) one launch in `sample_every`.
    sample_every: u64,
    /// Host time between a kernel's end and the next launch (0: the program wants the whole
    /// device).
    think_ns: u64,
    now: u64,
    next_launch: u64,
    /// Start times of the kernels the device ran, in order (each runs `kernel_ns`).
    kernels: Vec<u64>,
    ticks: Vec<Tick>,
}

impl Sim {
    fn new(target: f64, kernel_ns: u64, estimator: Estimator) -> Sim {
        let region = Region::private("GPU-sim", &limits(None, Some(target)));
        let slot = region.register(std::process::id()).unwrap();
        let mut sim = Sim {
            region,
            slot,
            ctl: Controller::new(target),
            estimator,
            kernel_ns,
            sample_every: 10,
            think_ns: 0,
            now: T0,
            next_launch: T0,
            kernels: Vec::new(),
            ticks: Vec::new(),
        };
        // The controller starts before the program (as `tensor-fusion run` does).
        let t = sim.ctl.tick(&sim.region, T0, estimator, 0);
        sim.ticks.push(t);
        sim
    }

    /// Device time used before `t`.
    fn busy_until(&self, t: u64) -> u64 {
        let done = self.kernels.partition_point(|&s| s + self.kernel_ns <= t);
        let running = self
            .kernels
            .get(done)
            .map_or(0, |&s| t.saturating_sub(s).min(self.kernel_ns));
        done as u64 * self.kernel_ns + running
    }

    /// Achieved share of the device over `[to - SHARE_WINDOW_NS, to)`.
    fn share_before(&self, to: u64) -> f64 {
        let from = to - SHARE_WINDOW_NS;
        (self.busy_until(to) - self.busy_until(from)) as f64 / SHARE_WINDOW_NS as f64
    }

    /// 100 ms of the program (launching as fast as allowed when `demand`, idle otherwise), then
    /// a controller tick.
    fn step(&mut self, demand: bool) -> Tick {
        let end = self.now + TICK_NS;
        if demand {
            let mut t = self.next_launch.max(self.now);
            while t < end {
                let wait = self.region.admit_launch(self.slot, t);
                let start = t + wait;
                self.kernels.push(start);
                if (self.kernels.len() as u64).is_multiple_of(self.sample_every) {
                    self.region.add_sample(self.kernel_ns);
                }
                t = start + self.kernel_ns + self.think_ns;
            }
            self.next_launch = t;
        }
        self.now = end;
        let busy = match self.estimator {
            Estimator::Busy => self.busy_until(end),
            // Ignored with samples.
            Estimator::Samples => 0,
        };
        let tick = self.ctl.tick(&self.region, end, self.estimator, busy);
        self.ticks.push(tick);
        tick
    }

    fn run(&mut self, ns: u64, demand: bool) {
        for _ in 0..ns / TICK_NS {
            self.step(demand);
        }
    }

    fn describe(&self) -> String {
        format!(
            "target {} kernel {} µs {:?}: last ticks (measured, est µs, correction, interval µs) \
             {:?}",
            self.ctl.target(),
            self.kernel_ns / 1000,
            self.estimator,
            self.ticks[self.ticks.len().saturating_sub(40)..]
                .iter()
                .map(|t| (
                    (t.measured_share * 1000.0).round() / 1000.0,
                    (t.est_launch_ns / 100.0).round() / 10.0,
                    (t.correction * 1000.0).round() / 1000.0,
                    t.interval_ns / 1000
                ))
                .collect::<Vec<_>>()
        )
    }
}

const TARGETS: [f64; 4] = [0.1, 0.3, 0.5, 0.75];
const KERNELS_NS: [u64; 2] = [50_000, 2_000_000];
const TOLERANCE: f64 = 0.02;

fn converges(estimator: Estimator) {
    let mut failures = Vec::new();
    for target in TARGETS {
        for kernel_ns in KERNELS_NS {
            let mut sim = Sim::new(target, kernel_ns, estimator);
            sim.run(2 * SECOND, true);
            // From 2 s on, every 1 s window is on target (checked at each tick up to 5 s).
            let mut shares = vec![sim.share_before(sim.now)];
            for _ in 0..30 {
                sim.step(true);
                shares.push(sim.share_before(sim.now));
            }
            let worst = shares
                .iter()
                .copied()
                .max_by(|a, b| (a - target).abs().total_cmp(&(b - target).abs()))
                .unwrap();
            if (worst - target).abs() > TOLERANCE {
                failures.push(format!(
                    "share {worst:.4} (windows {shares:.3?})\n  {}",
                    sim.describe()
                ));
            }
            // What the controller measured agrees with the device.
            let last = sim.ticks.last().unwrap();
            let truth = sim.share_before(sim.now);
            if (last.measured_share - truth).abs() > 0.01 {
                failures.push(format!(
                    "controller measured {} but the device ran {truth}\n  {}",
                    last.measured_share,
                    sim.describe()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn busy_estimator_converges_on_the_target_within_two_seconds() {
    converges(Estimator::Busy);
}

#[test]
fn samples_estimator_converges_on_the_target_within_two_seconds() {
    converges(Estimator::Samples);
}

/// Demand for 3 s, then idle for 3 s (checking that idling leaves the pacing alone: the
/// correction exactly; the interval may follow the last launches' estimate a little), then
/// returns the simulation at the moment demand resumes.
fn demand_then_idle(target: f64, kernel_ns: u64, estimator: Estimator) -> Result<Sim, String> {
    let mut sim = Sim::new(target, kernel_ns, estimator);
    sim.run(3 * SECOND, true);
    let before = *sim.ticks.last().unwrap();
    sim.run(3 * SECOND, false);
    let idle = *sim.ticks.last().unwrap();
    let drift = idle.interval_ns as f64 / before.interval_ns as f64 - 1.0;
    if idle.correction != before.correction || drift.abs() > 0.2 {
        return Err(format!(
            "idling moved the pacing: {before:?} -> {idle:?}\n  {}",
            sim.describe()
        ));
    }
    Ok(sim)
}

fn for_each_case(estimator: Estimator, check: impl Fn(Sim) -> Result<(), String>) {
    let mut failures = Vec::new();
    for target in TARGETS {
        for kernel_ns in KERNELS_NS {
            if let Err(e) = demand_then_idle(target, kernel_ns, estimator).and_then(&check) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn leaves_pacing_alone_while_idle(estimator: Estimator) {
    for_each_case(estimator, |_| Ok(()));
}

/// When demand comes back, no 1 s window runs more than 3 points over the target.
fn no_overshoot_after_idle(estimator: Estimator) {
    for_each_case(estimator, |mut sim| {
        let target = sim.ctl.target();
        let resumed = sim.now;
        let mut windows = Vec::new();
        for _ in 0..30 {
            sim.step(true);
            if sim.now >= resumed + SECOND {
                windows.push(sim.share_before(sim.now));
            }
        }
        let worst = windows.iter().copied().fold(0.0, f64::max);
        if worst > target + 0.03 {
            return Err(format!(
                "after idling the share reached {worst:.3} (1 s windows {windows:.3?})\n  {}",
                sim.describe()
            ));
        }
        Ok(())
    });
}

/// When demand comes back, the share is back on target (±2 points) 2 s later, and stays there.
fn back_on_target_after_idle(estimator: Estimator) {
    for_each_case(estimator, |mut sim| {
        let target = sim.ctl.target();
        sim.run(2 * SECOND, true);
        let mut windows = vec![sim.share_before(sim.now)];
        for _ in 0..20 {
            sim.step(true);
            windows.push(sim.share_before(sim.now));
        }
        if windows.iter().any(|s| (s - target).abs() > TOLERANCE) {
            return Err(format!(
                "2 to 4 s after idling the 1 s windows are {windows:.3?}\n  {}",
                sim.describe()
            ));
        }
        Ok(())
    });
}

#[test]
fn busy_estimator_idle_phase_leaves_the_pacing_alone() {
    leaves_pacing_alone_while_idle(Estimator::Busy);
}

#[test]
fn samples_estimator_idle_phase_leaves_the_pacing_alone() {
    leaves_pacing_alone_while_idle(Estimator::Samples);
}

#[test]
fn busy_estimator_demand_after_idle_does_not_overshoot_the_target() {
    no_overshoot_after_idle(Estimator::Busy);
}

#[test]
fn samples_estimator_demand_after_idle_does_not_overshoot_the_target() {
    no_overshoot_after_idle(Estimator::Samples);
}

#[test]
fn busy_estimator_demand_after_idle_settles_back_on_the_target() {
    back_on_target_after_idle(Estimator::Busy);
}

#[test]
fn samples_estimator_demand_after_idle_settles_back_on_the_target() {
    back_on_target_after_idle(Estimator::Samples);
}

/// A program that wants less than its share is never held back, and the correction does not
/// move (no wind-up from under-use).
#[test]
fn a_program_under_its_share_is_not_paced_and_does_not_wind_up() {
    for estimator in [Estimator::Busy, Estimator::Samples] {
        let mut sim = Sim::new(0.5, 50_000, estimator);
        // 50 µs of kernel every 500 µs: 10 % of the device.
        sim.think_ns = 450_000;
        sim.run(5 * SECOND, true);
        let share = sim.share_before(sim.now);
        assert!((share - 0.1).abs() < 0.005, "{share}\n  {}", sim.describe());
        assert!(
            sim.ticks.iter().all(|t| t.correction == 1.0),
            "{}",
            sim.describe()
        );
        let (launches, throttled) = sim.region.launch_counters();
        assert!(launches > 9_000);
        assert_eq!(throttled, 0, "{estimator:?}");
    }
}

#[test]
fn the_first_tick_paces_from_the_initial_estimate() {
    let region = Region::private("GPU-sim", &limits(None, Some(0.25)));
    let mut ctl = Controller::new(0.25);
    let t = ctl.tick(&region, T0, Estimator::Busy, 0);
    let interval = (INITIAL_LAUNCH_NS / 0.25) as u64;
    assert_eq!(t.interval_ns, interval);
    assert_eq!(t.correction, 1.0);
    assert_eq!(t.measured_share, 0.0);
    let s = region.stats();
    assert!(region.pacing());
    assert_eq!(s.launch_interval_ns, interval);
    assert_eq!(s.est_launch_ns, INITIAL_LAUNCH_NS as u64);
    // The burst is a few launches' worth: at a fixed time, 4 launches go at once, the 5th waits.
    let waits: Vec<u64> = (0..6).map(|_| region.admit_launch(0, T0)).collect();
    assert_eq!(waits, [0, 0, 0, 0, 0, interval]);
}

#[test]
fn the_measured_share_is_published_in_the_region() {
    let mut sim = Sim::new(0.3, 50_000, Estimator::Busy);
    sim.run(3 * SECOND, true);
    let t = *sim.ticks.last().unwrap();
    let s = sim.region.stats();
    assert_eq!(s.launch_interval_ns, t.interval_ns);
    assert_eq!(s.est_launch_ns, t.est_launch_ns as u64);
    assert!((s.measured_share - t.measured_share).abs() < 1e-6);
    assert!((s.measured_share - 0.3).abs() < TOLERANCE);
}

#[test]
fn target_is_clamped_into_its_range() {
    assert_eq!(Controller::new(2.0).target(), 1.0);
    assert_eq!(Controller::new(0.0).target(), 1e-4);
    assert_eq!(Controller::new(-1.0).target(), 1e-4);
    assert_eq!(Controller::new(0.42).target(), 0.42);
}

#[test]
fn estimator_parses() {
    assert_eq!(Estimator::parse("busy"), Some(Estimator::Busy));
    assert_eq!(Estimator::parse(" Samples\n"), Some(Estimator::Samples));
    assert_eq!(Estimator::parse("nvml"), None);
    assert_eq!(Estimator::parse(""), None);
}
