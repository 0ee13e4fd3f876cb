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

use std::collections::VecDeque;

use crate::region::{DEFAULT_BURST_NS, Region};

/// Estimate of device time per launch before anything was measured.
pub const INITIAL_LAUNCH_NS: f64 = 200_000.0;
/// How far back measured share is averaged.
pub const SHARE_WINDOW_NS: u64 = 1_000_000_000;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: u64,
    busy: u64,
    launches: u64,
    throttled: u64,
    sampled_ns: u64,
    samples: u64,
}

/// Where the device time of the vGPU's launches comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimator {
    /// Busy time reported by the backend for the vGPU's processes (exact on the simulated GPU).
    Busy,
    /// Launches timed by the interposers with events (works on any driver; under contention
    /// with other processes it also counts the wait, so it errs on the side of less).
    Samples,
}

impl Estimator {
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

#[derive(Debug)]
pub struct Controller {
    target: f64,
    history: VecDeque<Sample>,
    est_launch_ns: f64,
    correction: f64,
    /// When the pacing last changed a lot (the share window must not straddle it to be
    /// trusted for correction).
    settled_since: u64,
    sampled_busy: f64,
    /// Last tick on which no launch was held back.
    unsaturated_at: u64,
}

impl Controller {
    /// A controller for a share in (0, 1].
    pub fn new(target: f64) -> Self {
        Controller {
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

    /// Feed one observation at monotonic time `now`. With [`Estimator::Busy`], `busy_ns` is the
    /// cumulative device time of the vGPU's processes; with [`Estimator::Samples`] the device
    /// time is the launches' sampled duration (and `busy_ns` is ignored). Writes the new pacing
    /// into `region` and returns what it decided.
    pub fn tick(&mut self, region: &Region, now: u64, estimator: Estimator, busy_ns: u64) -> Tick {
        let (launches, throttled) = region.launch_counters();
        let (sampled_ns, samples) = region.sample_counters();
        if estimator == Estimator::Samples && samples > 0 {
            // Device time used so far = launches x mean sampled duration.
            let mean = sampled_ns as f64 / samples as f64;
            self.sampled_busy = launches as f64 * mean;
        }
        let busy_ns = match estimator {
            Estimator::Busy => busy_ns,
            Estimator::Samples => self.sampled_busy as u64,
        };
        let s = Sample {
            at: now,
            busy: busy_ns,
            launches,
            throttled,
            sampled_ns,
            samples,
        };
        let prev = self.history.back().copied();
        self.history.push_back(s);
        while self
            .history
            .front()
            .is_some_and(|f| now.saturating_sub(f.at) > SHARE_WINDOW_NS && self.history.len() > 2)
        {
            self.history.pop_front();
        }
        let first = *self.history.front().unwrap_or(&s);
        let wall = now.saturating_sub(first.at);
        let measured = if wall == 0 {
            0.0
        } else {
            (busy_ns.saturating_sub(first.busy) as f64 / wall as f64).clamp(0.0, 1.0)
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
                    busy_ns.saturating_sub(first.busy),
                    2,
                )
            } else {
                (
                    launches.saturating_sub(p.launches),
                    busy_ns.saturating_sub(p.busy),
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
            let saturated = self.unsaturated_at < first.at;
            let settled = first.at >= self.settled_since && wall >= SHARE_WINDOW_NS * 9 / 10;
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
        let interval = (self.est_launch_ns * self.correction / self.target).max(1.0) as u64;
        // Let launches run a little ahead of schedule (to keep the device fed), but never by
        // more than a few kernels.
        let burst = DEFAULT_BURST_NS.min(interval.saturating_mul(4));
        region.set_pacing(interval, burst, self.est_launch_ns as u64, measured);
        Tick {
            measured_share: measured,
            est_launch_ns: self.est_launch_ns,
            correction: self.correction,
            interval_ns: interval,
        }
    }
}
