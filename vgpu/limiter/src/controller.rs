//! The compute-share controller: turns measured device busy time into the launch pacing that
//! the interposers apply.
//!
//! Every tick it reads how much device time the vGPU's processes used (from the HAL: per-process
//! busy time) and how many launches the region admitted. Device time per launch is estimated
//! from those (a moving average), and each launch is given a wall-clock slot of
//! `estimate × correction / share`. Paced that way, kernels occupy `share` of the device. The
//! correction factor absorbs what the estimate misses (launch mix, queueing); it moves only while
//! the vGPU actually wants more than its share (launches were held back), so an idle phase does
//! not wind it up.
//!
//! Split in two: [`ControlLaw`] is the pure law (observations in, pacing out, no I/O, unit-tested
//! on its own), and [`Controller::tick`] reads an [`Observation`] from the region, steps the law,
//! and writes the [`Pacing`] back.

use std::collections::VecDeque;

use crate::limits::LimitsOwner;
pub use crate::limits::Pacing;
use crate::region::{DEFAULT_BURST_NS, Region};

/// Estimate of device time per launch before anything was measured.
pub const INITIAL_LAUNCH_NS: f64 = 200_000.0;
/// How far the blind step (see [`ControlLaw::step_blind`]) may move the correction.
const BLIND_CORRECTION: (f64, f64) = (0.05, 1e6);
/// How far back measured share is averaged.
pub const SHARE_WINDOW_NS: u64 = 1_000_000_000;

/// Where the device time of the vGPU's launches comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimator {
    /// Busy time reported by the backend for the vGPU's processes (exact on the simulated GPU).
    Busy,
    /// Launches timed by the interposers with events (works on any driver; under contention
    /// with other processes it also counts the wait, so it errs on the side of less).
    Samples,
}

/// Environment variable that overrides the estimator (`busy` or `samples`).
pub const ESTIMATOR_ENV: &str = "TF_VGPU_ESTIMATOR";

impl Estimator {
    /// The estimator for a backend: `TF_VGPU_ESTIMATOR` if set, else per-process busy time
    /// where the backend measures it exactly (the simulated GPU), else launches timed by the
    /// interposers (real drivers, where NVML's utilization is too coarse to pace on).
    pub fn for_backend(kind: tf_hal::BackendKind) -> Estimator {
        let default = if kind == tf_hal::BackendKind::Fake {
            Estimator::Busy
        } else {
            Estimator::Samples
        };
        match std::env::var(ESTIMATOR_ENV) {
            Ok(v) => Estimator::parse(&v).unwrap_or_else(|| {
                tracing::warn!("{ESTIMATOR_ENV}={v:?} is not busy or samples; using the default");
                default
            }),
            Err(_) => default,
        }
    }

    pub fn parse(s: &str) -> Option<Estimator> {
        match s.trim().to_ascii_lowercase().as_str() {
            "busy" => Some(Estimator::Busy),
            "samples" => Some(Estimator::Samples),
            _ => None,
        }
    }
}

/// What one tick decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tick {
    /// Share of device time over the last window, in [0, 1].
    pub measured_share: f64,
    pub est_launch_ns: f64,
    pub correction: f64,
    pub interval_ns: u64,
}

/// What the controller reads from the region (and the backend) at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observation {
    /// Monotonic time of the reading, ns.
    pub now: u64,
    /// Cumulative device time of the vGPU's processes, ns (with [`Estimator::Busy`]).
    pub busy_ns: u64,
    /// Launches admitted so far, and how many of them were held back.
    pub launches: u64,
    pub throttled: u64,
    /// Launches timed by the interposers so far, and their total device time.
    pub samples: u64,
    pub sampled_ns: u64,
}

impl Observation {
    /// Read the region's counters at time `now`, with the backend's busy time.
    pub fn read(region: &Region, now: u64, busy_ns: u64) -> Observation {
        let (launches, throttled) = region.launch_counters();
        let (sampled_ns, samples) = region.sample_counters();
        Observation {
            now,
            busy_ns,
            launches,
            throttled,
            samples,
            sampled_ns,
        }
    }
}

/// The pure control law: observations in, pacing out.
#[derive(Debug, Clone)]
pub struct ControlLaw {
    target: f64,
    /// Observations over the last share window (with the estimator's busy time).
    history: VecDeque<Observation>,
    est_launch_ns: f64,
    correction: f64,
    /// When the pacing last changed a lot (the share window must not straddle it to be
    /// trusted for correction).
    settled_since: u64,
    sampled_busy: f64,
    /// Last tick on which no launch was held back.
    unsaturated_at: u64,
}

impl ControlLaw {
    /// A law for a share in (0, 1].
    pub fn new(target: f64) -> Self {
        ControlLaw {
            target: target.clamp(1e-4, 1.0),
            history: VecDeque::new(),
            est_launch_ns: INITIAL_LAUNCH_NS,
            correction: 1.0,
            settled_since: u64::MAX,
            sampled_busy: 0.0,
            unsaturated_at: 0,
        }
    }

    pub fn target(&self) -> f64 {
        self.target
    }

    /// Change the target share at run time (the node daemon lends a vGPU idle capacity and
    /// takes it back). The pacing follows at the next step (the interval is `estimate ×
    /// correction / target`); the correction's settling window restarts, so a window measured
    /// under the old target never corrects the new one.
    pub fn set_target(&mut self, target: f64) {
        let target = target.clamp(1e-4, 1.0);
        if (target - self.target).abs() > 1e-6 {
            self.target = target;
            self.settled_since = u64::MAX;
        }
    }

    /// Step the law with one observation. With [`Estimator::Busy`], `obs.busy_ns` is the
    /// cumulative device time of the vGPU's processes; with [`Estimator::Samples`] the device
    /// time is the launches' sampled duration (and `busy_ns` is ignored).
    pub fn step(&mut self, obs: Observation, estimator: Estimator) -> (Pacing, Tick) {
        let Observation {
            now,
            busy_ns,
            launches,
            throttled,
            samples,
            sampled_ns,
        } = obs;
        if estimator == Estimator::Samples && samples > 0 {
            // Device time used so far = launches x mean sampled duration.
            let mean = sampled_ns as f64 / samples as f64;
            self.sampled_busy = launches as f64 * mean;
        }
        let busy_ns = match estimator {
            Estimator::Busy => busy_ns,
            Estimator::Samples => self.sampled_busy as u64,
        };
        let s = Observation { busy_ns, ..obs };
        let prev = self.history.back().copied();
        self.history.push_back(s);
        while self
            .history
            .front()
            .is_some_and(|f| now.saturating_sub(f.now) > SHARE_WINDOW_NS && self.history.len() > 2)
        {
            self.history.pop_front();
        }
        let first = *self.history.front().unwrap_or(&s);
        let wall = now.saturating_sub(first.now);
        let measured = if wall == 0 {
            0.0
        } else {
            (busy_ns.saturating_sub(first.busy_ns) as f64 / wall as f64).clamp(0.0, 1.0)
        };
        if let Some(p) = prev {
            // Samples: the mean sampled duration in the window (all samples so far if the
            // window has none). Busy: busy time per launch over the window, or over the last
            // tick early on.
            let (d_launch, d_busy, min_count) = if estimator == Estimator::Samples {
                if samples > first.samples {
                    (
                        samples - first.samples,
                        sampled_ns.saturating_sub(first.sampled_ns),
                        1,
                    )
                } else {
                    (samples, sampled_ns, 1)
                }
            } else if launches.saturating_sub(first.launches) >= 4 {
                (
                    launches - first.launches,
                    busy_ns.saturating_sub(first.busy_ns),
                    2,
                )
            } else {
                (
                    launches.saturating_sub(p.launches),
                    busy_ns.saturating_sub(p.busy_ns),
                    2,
                )
            };
            if d_launch >= min_count && d_busy > 0 {
                let sample = d_busy as f64 / d_launch as f64;
                let before = self.est_launch_ns;
                self.est_launch_ns = if p.launches == 0 {
                    sample
                } else {
                    0.5 * self.est_launch_ns + 0.5 * sample
                };
                // A big change of the estimate restarts the settling window.
                if (self.est_launch_ns / before - 1.0).abs() > 0.25 {
                    self.settled_since = now;
                }
            }
            if self.settled_since == u64::MAX {
                self.settled_since = now;
            }
            // Correct only on a full window measured under the current pacing, while launches
            // were being held back throughout (the vGPU wants more than its share).
            // Launches were held back on every tick of the window: the vGPU wants more than
            // its share, so a share below the target is the pacing's fault.
            if throttled == p.throttled {
                self.unsaturated_at = now;
            }
            let saturated = self.unsaturated_at < first.now;
            let settled = first.now >= self.settled_since && wall >= SHARE_WINDOW_NS * 9 / 10;
            let over = measured > self.target * 1.02;
            if settled && measured > 0.0 && (over || saturated) {
                // Over the target: stretch the interval (whether or not launches wait: a
                // program that waits for each kernel is never held back); under it, and
                // starved: shrink it. Gently, and once per full window.
                let ratio = (measured / self.target).clamp(0.5, 2.0);
                let before = self.correction;
                self.correction = (self.correction * ratio.powf(0.5)).clamp(0.5, 2.0);
                if self.correction != before {
                    self.settled_since = now;
                }
            }
        }
        self.pacing(measured)
    }

    /// Step the law without the region's counters (its header was overwritten, so launches,
    /// samples and throttling are unknown): the pacing follows the measured share alone, which
    /// comes from the driver. Over the target, the interval stretches by the whole ratio once
    /// per full window (a process launching as fast as it is let through uses `estimate / interval`
    /// of the device, so the ratio is what it takes); under it, it shrinks gently.
    pub fn step_blind(&mut self, now: u64, busy_ns: u64) -> (Pacing, Tick) {
        let last = self.history.back().copied().unwrap_or_default();
        let s = Observation {
            now,
            busy_ns,
            ..last
        };
        self.history.push_back(s);
        while self
            .history
            .front()
            .is_some_and(|f| now.saturating_sub(f.now) > SHARE_WINDOW_NS && self.history.len() > 2)
        {
            self.history.pop_front();
        }
        let first = *self.history.front().unwrap_or(&s);
        let wall = now.saturating_sub(first.now);
        let measured = if wall == 0 {
            0.0
        } else {
            (busy_ns.saturating_sub(first.busy_ns) as f64 / wall as f64).clamp(0.0, 1.0)
        };
        if self.settled_since == u64::MAX {
            self.settled_since = now;
        }
        let settled = first.now >= self.settled_since && wall >= SHARE_WINDOW_NS * 9 / 10;
        if settled && measured > 0.0 {
            let ratio = measured / self.target;
            let step = if ratio > 1.02 {
                ratio.min(4.0)
            } else if ratio < 0.9 {
                ratio.max(0.5).sqrt()
            } else {
                1.0
            };
            if step != 1.0 {
                self.correction =
                    (self.correction * step).clamp(BLIND_CORRECTION.0, BLIND_CORRECTION.1);
                self.settled_since = now;
            }
        }
        self.pacing(measured)
    }

    /// The pacing for the current estimate and correction.
    fn pacing(&self, measured: f64) -> (Pacing, Tick) {
        let interval = ((self.est_launch_ns * self.correction / self.target).max(1.0) as u64)
            .min(crate::limits::MAX_INTERVAL_NS);
        // Let launches run a little ahead of schedule (to keep the device fed), but never by
        // more than a few kernels.
        let burst = DEFAULT_BURST_NS.min(interval.saturating_mul(4));
        (
            Pacing {
                interval_ns: interval,
                burst_ns: burst,
            },
            Tick {
                measured_share: measured,
                est_launch_ns: self.est_launch_ns,
                correction: self.correction,
                interval_ns: interval,
            },
        )
    }
}

/// The controller of one vGPU: reads the region, steps the [`ControlLaw`], writes the pacing.
#[derive(Debug, Clone)]
pub struct Controller {
    law: ControlLaw,
}

impl Controller {
    /// A controller for a share in (0, 1].
    pub fn new(target: f64) -> Self {
        Controller {
            law: ControlLaw::new(target),
        }
    }

    pub fn target(&self) -> f64 {
        self.law.target()
    }

    /// Change the target share at run time (see [`ControlLaw::set_target`]).
    pub fn set_target(&mut self, target: f64) {
        self.law.set_target(target);
    }

    /// One tick at monotonic time `now`: read the region (and `busy_ns`, the backend's
    /// cumulative busy time of the vGPU's processes, used with [`Estimator::Busy`]), step the
    /// law, write the new pacing into `region`, and return what was decided.
    pub fn tick(&mut self, region: &Region, now: u64, estimator: Estimator, busy_ns: u64) -> Tick {
        self.tick_with(region, None, now, estimator, busy_ns)
    }

    /// [`Controller::tick`] for a vGPU with a limits page: the pacing goes to the page (what the
    /// processes obey; they cannot change it), with a heartbeat, and a copy to the region.
    pub fn tick_with(
        &mut self,
        region: &Region,
        page: Option<&LimitsOwner>,
        now: u64,
        estimator: Estimator,
        busy_ns: u64,
    ) -> Tick {
        let (pacing, tick) = self
            .law
            .step(Observation::read(region, now, busy_ns), estimator);
        self.publish(region, page, now, pacing, tick);
        tick
    }

    /// A tick while the region is unreadable (its header was overwritten): the law steps on the
    /// measured share alone ([`ControlLaw::step_blind`]) and the pacing goes to the page only.
    pub fn tick_blind(&mut self, page: &LimitsOwner, now: u64, busy_ns: u64) -> Tick {
        let (pacing, tick) = self.law.step_blind(now, busy_ns);
        page.set_pacing(pacing, tick.est_launch_ns as u64, tick.measured_share);
        page.heartbeat(now);
        tick
    }

    fn publish(
        &self,
        region: &Region,
        page: Option<&LimitsOwner>,
        now: u64,
        pacing: Pacing,
        tick: Tick,
    ) {
        let est = tick.est_launch_ns as u64;
        if let Some(page) = page {
            page.set_pacing(pacing, est, tick.measured_share);
            page.heartbeat(now);
        }
        region.set_pacing(
            pacing.interval_ns,
            pacing.burst_ns,
            est,
            tick.measured_share,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const TICK: u64 = 100 * MS;

    /// A program whose launches each use `launch_ns` of device time, `rate` launches per tick,
    /// all held back (`throttled`) or none.
    fn observe(
        law: &mut ControlLaw,
        ticks: u64,
        launch_ns: u64,
        rate: u64,
        throttled: bool,
    ) -> Vec<(Pacing, Tick)> {
        let mut out = Vec::new();
        for i in 1..=ticks {
            let launches = i * rate;
            let obs = Observation {
                now: i * TICK,
                busy_ns: launches * launch_ns,
                launches,
                throttled: if throttled { launches } else { 0 },
                samples: 0,
                sampled_ns: 0,
            };
            out.push(law.step(obs, Estimator::Busy));
        }
        out
    }

    #[test]
    fn before_any_measurement_the_initial_estimate_paces() {
        let mut law = ControlLaw::new(0.25);
        let (p, t) = law.step(Observation::default(), Estimator::Busy);
        assert_eq!(p.interval_ns, (INITIAL_LAUNCH_NS / 0.25) as u64);
        assert_eq!(p.burst_ns, DEFAULT_BURST_NS.min(p.interval_ns * 4));
        assert_eq!(t.correction, 1.0);
        assert_eq!(t.measured_share, 0.0);
    }

    #[test]
    fn the_estimate_follows_the_measured_device_time_per_launch() {
        let mut law = ControlLaw::new(0.5);
        // 1 ms per launch, 25 launches per 100 ms tick: 25 % of the device, under the target.
        let steps = observe(&mut law, 30, MS, 25, false);
        let (p, t) = *steps.last().unwrap();
        assert!((t.est_launch_ns - MS as f64).abs() < 1.0, "{t:?}");
        assert!((t.measured_share - 0.25).abs() < 0.01, "{t:?}");
        // Under the target and never held back: nothing to correct.
        assert_eq!(t.correction, 1.0);
        assert!(p.interval_ns.abs_diff(2 * MS) <= 1, "{p:?}");
    }

    #[test]
    fn over_the_target_the_interval_stretches_and_idle_time_does_not_wind_it_up() {
        let mut law = ControlLaw::new(0.3);
        // 60 % of the device in 1 ms launches: twice the target.
        let steps = observe(&mut law, 40, MS, 60, true);
        let (_, t) = *steps.last().unwrap();
        assert!(t.correction > 1.2, "the interval must stretch: {t:?}");
        let stretched = t.correction;
        // The program goes idle (no launches): the correction stays where it was.
        let mut idle = law.clone();
        for i in 41..=80u64 {
            let obs = Observation {
                now: i * TICK,
                busy_ns: 40 * 60 * MS,
                launches: 40 * 60,
                throttled: 40 * 60,
                samples: 0,
                sampled_ns: 0,
            };
            let (_, t) = idle.step(obs, Estimator::Busy);
            assert!(t.correction <= stretched, "{t:?}");
        }
    }

    #[test]
    fn starved_under_the_target_the_interval_shrinks() {
        let mut law = ControlLaw::new(0.5);
        // Held back on every tick, yet only 25 % of the device: the pacing is too strict.
        let steps = observe(&mut law, 40, MS, 25, true);
        let (_, t) = *steps.last().unwrap();
        assert!(t.correction < 0.9, "{t:?}");
    }

    #[test]
    fn sampled_launches_estimate_device_time_when_the_backend_cannot() {
        let mut law = ControlLaw::new(0.5);
        let mut last = None;
        for i in 1..=10u64 {
            let obs = Observation {
                now: i * TICK,
                busy_ns: 0,
                launches: i * 40,
                throttled: 0,
                samples: i * 4,
                sampled_ns: i * 4 * 2 * MS,
            };
            last = Some(law.step(obs, Estimator::Samples));
        }
        let (p, t) = last.unwrap();
        // A moving average from the initial estimate: within 1 % after ten ticks.
        assert!(
            (t.est_launch_ns / (2.0 * MS as f64) - 1.0).abs() < 0.01,
            "{t:?}"
        );
        // 40 launches x 2 ms per 100 ms: 80 % of the device.
        assert!((t.measured_share - 0.8).abs() < 0.02, "{t:?}");
        assert!(
            (p.interval_ns as f64 / (4 * MS) as f64 - 1.0).abs() < 0.01,
            "{p:?}"
        );
    }

    /// A target changed at run time (lending) moves the pacing at the next step, by the ratio
    /// of the targets, and a window measured under the old target does not correct the new one.
    #[test]
    fn a_new_target_moves_the_pacing_at_once() {
        let mut law = ControlLaw::new(0.3);
        let steps = observe(&mut law, 30, MS, 30, true);
        let (before, t0) = *steps.last().unwrap();
        law.set_target(0.6);
        assert_eq!(law.target(), 0.6);
        let obs = Observation {
            now: 31 * TICK,
            busy_ns: 31 * 30 * MS,
            launches: 31 * 30,
            throttled: 31 * 30,
            samples: 0,
            sampled_ns: 0,
        };
        let (after, t1) = law.step(obs, Estimator::Busy);
        assert_eq!(t1.correction, t0.correction, "{t0:?} {t1:?}");
        let ratio = before.interval_ns as f64 / after.interval_ns as f64;
        assert!((ratio - 2.0).abs() < 0.05, "{before:?} -> {after:?}");
    }

    /// Without the region's counters, a program launching as fast as it is let through (1 ms
    /// kernels: it uses `1 ms / interval` of the device) is brought to its share by the measured
    /// share alone, from an estimate 5x off, within a few windows; and it stays there.
    #[test]
    fn blind_steps_bring_a_saturating_program_to_its_share() {
        let mut law = ControlLaw::new(0.3);
        let mut busy = 0u64;
        let mut interval = law.step_blind(0, 0).0.interval_ns;
        let mut shares = Vec::new();
        for i in 1..=80u64 {
            let share = (MS as f64 / interval as f64).min(1.0);
            busy += (share * TICK as f64) as u64;
            let (p, t) = law.step_blind(i * TICK, busy);
            interval = p.interval_ns;
            shares.push(t.measured_share);
        }
        let settled = &shares[50..];
        for s in settled {
            assert!((s - 0.3).abs() < 0.02, "{shares:?}");
        }
        assert!(interval.abs_diff(MS * 10 / 3) < MS / 10, "{interval}");
    }
}
