//! How a device's time is divided between its vGPUs: requests first (guaranteed), then idle
//! capacity lent to busy vGPUs, higher QoS first, up to their limits (work-conserving).
//!
//! Pure arithmetic over one control tick's observations, so that it is tested without a device.
//! The control loop ([`crate::node`]) measures each vGPU over a short window and calls
//! [`divide`] every tick; a vGPU that was idle and starts again counts at its full request from
//! the next tick, so what it lent comes back within a few ticks.

use tf_scheduler::Qos;

/// One vGPU as the division sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    /// Guaranteed share (0..=1).
    pub request: f64,
    /// Cap (request..=1).
    pub limit: f64,
    pub qos: Qos,
    /// The share it used over the last window.
    pub used: f64,
    /// It launched work in the last window.
    pub active: bool,
    /// Its launches were held back by pacing in the last window (it would use more).
    pub hungry: bool,
}

/// Headroom an active vGPU that is not held back keeps above what it uses, so that it can grow
/// before it is seen hungry.
pub const HEADROOM: f64 = 0.05;

/// The target share of each vGPU (same order as `demands`), for a device of `capacity` (1.0:
/// the whole device).
///
/// - An idle vGPU keeps its request as its target (it starts at its guarantee when it returns)
///   but only what it actually uses is reserved for it; the rest of its request can be lent.
/// - An active vGPU gets its request, plus a loan from the spare capacity: QoS levels are
///   served highest first; inside a level the spare is split in proportion to requests
///   (water-filling, so what one vGPU cannot take goes to the others). A vGPU that is not
///   held back borrows only up to what it uses plus [`HEADROOM`].
pub fn divide(demands: &[Demand], capacity: f64) -> Vec<f64> {
    let mut target: Vec<f64> = demands.iter().map(|d| d.request.min(d.limit)).collect();
    let reserved: f64 = demands
        .iter()
        .map(|d| {
            if d.active {
                d.request
            } else {
                d.used.clamp(0.0, d.request)
            }
        })
        .sum();
    let mut spare = (capacity - reserved).max(0.0);
    // How far each active vGPU may grow.
    let cap: Vec<f64> = demands
        .iter()
        .map(|d| {
            if !d.active {
                return d.request.min(d.limit);
            }
            if d.hungry {
                d.limit
            } else {
                (d.used + HEADROOM).clamp(d.request.min(d.limit), d.limit)
            }
        })
        .collect();
    for qos in Qos::ALL.iter().rev() {
        let mut members: Vec<usize> = (0..demands.len())
            .filter(|&i| demands[i].active && demands[i].qos == *qos && cap[i] > target[i] + 1e-9)
            .collect();
        while spare > 1e-9 && !members.is_empty() {
            let weight: f64 = members.iter().map(|&i| demands[i].request.max(0.01)).sum();
            let mut given = 0.0;
            for &i in &members {
                let want = spare * demands[i].request.max(0.01) / weight;
                let take = want.min(cap[i] - target[i]);
                target[i] += take;
                given += take;
            }
            spare -= given;
            members.retain(|&i| cap[i] > target[i] + 1e-9);
            if given < 1e-9 {
                break;
            }
        }
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(request: f64, limit: f64, qos: Qos, used: f64, active: bool, hungry: bool) -> Demand {
        Demand {
            request,
            limit,
            qos,
            used,
            active,
            hungry,
        }
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn busy_vgpus_whose_requests_fill_the_device_get_their_requests() {
        let t = divide(
            &[
                d(0.5, 1.0, Qos::Critical, 0.5, true, true),
                d(0.3, 0.6, Qos::High, 0.3, true, true),
                d(0.2, 0.4, Qos::Medium, 0.2, true, true),
            ],
            1.0,
        );
        assert!(close(&t, &[0.5, 0.3, 0.2]), "{t:?}");
    }

    #[test]
    fn an_idle_vgpus_request_is_lent_higher_qos_first_up_to_limits() {
        let t = divide(
            &[
                d(0.5, 1.0, Qos::Critical, 0.0, false, false),
                d(0.3, 0.6, Qos::High, 0.3, true, true),
                d(0.2, 0.4, Qos::Medium, 0.2, true, true),
            ],
            1.0,
        );
        // 0.5 spare: high takes 0.3 (to its 0.6 limit), medium the remaining 0.2 (to 0.4).
        assert!(close(&t, &[0.5, 0.6, 0.4]), "{t:?}");
        let t = divide(
            &[
                d(0.5, 1.0, Qos::Critical, 0.0, false, false),
                d(0.3, 0.9, Qos::High, 0.3, true, true),
                d(0.2, 0.9, Qos::Medium, 0.2, true, true),
            ],
            1.0,
        );
        assert!(
            close(&t, &[0.5, 0.8, 0.2]),
            "high QoS takes the whole loan: {t:?}"
        );
    }

    #[test]
    fn equal_qos_splits_the_spare_by_request_and_passes_on_what_one_cannot_take() {
        let t = divide(
            &[
                d(0.4, 0.45, Qos::Medium, 0.4, true, true),
                d(0.2, 1.0, Qos::Medium, 0.2, true, true),
            ],
            1.0,
        );
        assert!(close(&t, &[0.45, 0.55]), "{t:?}");
    }

    #[test]
    fn a_vgpu_that_is_not_held_back_borrows_only_what_it_uses_plus_headroom() {
        let t = divide(
            &[
                d(0.2, 1.0, Qos::High, 0.25, true, false),
                d(0.2, 1.0, Qos::Low, 0.2, true, true),
            ],
            1.0,
        );
        assert!(close(&t, &[0.30, 0.70]), "{t:?}");
    }

    #[test]
    fn a_returning_vgpu_takes_its_request_back_at_once() {
        // The lender is active again (it launched in the last window): its whole request is
        // reserved and the borrowers fall back to theirs.
        let t = divide(
            &[
                d(0.5, 1.0, Qos::Low, 0.05, true, true),
                d(0.3, 0.6, Qos::High, 0.6, true, true),
                d(0.2, 0.4, Qos::High, 0.4, true, true),
            ],
            1.0,
        );
        assert!(close(&t, &[0.5, 0.3, 0.2]), "{t:?}");
    }

    #[test]
    fn targets_never_exceed_limits_or_the_device() {
        use std::collections::hash_map::DefaultHasher;
        use std::hash::{Hash, Hasher};
        for seed in 0..2000u64 {
            let mut h = DefaultHasher::new();
            seed.hash(&mut h);
            let mut x = h.finish();
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 1000) as f64 / 1000.0
            };
            let n = 1 + (next() * 6.0) as usize;
            let mut left = 1.0;
            let demands: Vec<Demand> = (0..n)
                .map(|i| {
                    let request = (next() * left).min(left);
                    left -= request;
                    let limit = request + next() * (1.0 - request);
                    d(
                        request,
                        limit,
                        Qos::ALL[i % 4],
                        next(),
                        next() > 0.3,
                        next() > 0.5,
                    )
                })
                .collect();
            let t = divide(&demands, 1.0);
            let active_sum: f64 = t
                .iter()
                .zip(&demands)
                .map(|(t, d)| if d.active { *t } else { d.used.min(d.request) })
                .sum();
            assert!(active_sum <= 1.0 + 1e-6, "{demands:?} -> {t:?}");
            for (t, d) in t.iter().zip(&demands) {
                assert!(*t <= d.limit + 1e-9 && *t >= d.request.min(d.limit) - 1e-9);
            }
        }
    }
}
