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
        }
    }

    pub fn target(&self) -> f64 {
        self.target
    }

    /// Feed one observation: `busy_ns` is the cumulative device time of the vGPU's processes at
    /// monotonic time `now`. Writes the new pacing into `region` and returns what it decided.
    pub fn tick(&mut self, region: &Region, now: u64, busy_ns: u64) -> Tick {
        let (launches, throttled) = region.launch_counters();
        let s = Sample {
            at: now,
            busy: busy_ns,
            launches,
            throttled,
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
            let d_launch = launches.saturating_sub(p.launches);
            let d_busy = busy_ns.saturating_sub(p.busy);
            if d_launch >= 2 && d_busy > 0 {
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
            let saturated = throttled.saturating_sub(first.throttled) > 0
                && throttled.saturating_sub(p.throttled) > 0;
            let settled = first.at >= self.settled_since && wall >= SHARE_WINDOW_NS * 9 / 10;
            if saturated && settled && measured > 0.0 {
                // Over the target: stretch the interval; under it: shrink it. Gently.
                let ratio = (measured / self.target).clamp(0.5, 2.0);
                self.correction = (self.correction * ratio.powf(0.25)).clamp(0.5, 2.0);
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
