//! Gang placement: a group of requests placed all or nothing.
//!
//! Two layers:
//! - [`Scheduler::reserve_all`] (in the engine) places a set of requests atomically: all of
//!   them or none, with any preemption undone when the set fails.
//! - The gang coordinator here ([`Scheduler::gang_submit`], [`Scheduler::gang_poll`], ...)
//!   takes members one at a time, as a Kubernetes scheduler extender sees pods. Members wait
//!   *without reserving anything* until `min_members` of them are known; then all known
//!   members are placed with `reserve_all`. If they do not fit, the gang keeps waiting (each new
//!   member and each [`Scheduler::gang_poll`] tries again) until its timeout, when it fails and
//!   its members are forgotten. Members that arrive after the gang is placed are placed one by
//!   one. Nothing is ever held for a gang that is not placed, so a failed gang leaves nothing
//!   behind and two half-placed gangs can never block each other.
//!
//! The operator's Pod annotations map onto [`GangSpec`] with [`GangSpec::from_annotations`]:
//! `tensor-fusion.ai/gang-enabled`, `tensor-fusion.ai/gang-min-members` and
//! `tensor-fusion.ai/gang-timeout` (a Go duration such as `30s` or `5m`; `0` or absent: wait
//! forever). The gang's name is the caller's group key (TensorFusion uses
//! `<namespace>/<workload>`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::engine::Scheduler;
use crate::error::{Result, SchedError};
use crate::types::{Allocation, AllocationId, Request};

/// Annotation that turns gang placement on (`"true"`).
pub const ANNOTATION_GANG_ENABLED: &str = "tensor-fusion.ai/gang-enabled";
/// Annotation with the number of members that must be placed together.
pub const ANNOTATION_GANG_MIN_MEMBERS: &str = "tensor-fusion.ai/gang-min-members";
/// Annotation with how long a gang may wait for its members to fit (Go duration).
pub const ANNOTATION_GANG_TIMEOUT: &str = "tensor-fusion.ai/gang-timeout";

/// A gang: its name (the group key), how many members must be placed together, and how long
/// it may wait, counted from its first member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GangSpec {
    /// Group key, e.g. `namespace/workload`.
    pub name: String,
    /// Members placed together (at least 1).
    pub min_members: u32,
    /// How long the gang may wait from its first member; `None`: forever.
    pub timeout: Option<Duration>,
}

impl GangSpec {
    /// A gang of `min_members` that waits forever.
    pub fn new(name: &str, min_members: u32) -> Self {
        GangSpec {
            name: name.to_string(),
            min_members,
            timeout: None,
        }
    }

    /// Sets the timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Reads the gang annotations of a Pod (`get` looks one up). `Ok(None)`: not a gang
    /// member (no `gang-enabled: true` and no `gang-min-members`). Gang placement is on when
    /// `gang-enabled` is `true` or `gang-min-members` is set; `gang-enabled: false` turns it
    /// off whatever the rest says.
    pub fn from_annotations<'a>(
        name: &str,
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Option<GangSpec>> {
        let bad = |m: String| SchedError::InvalidRequest(m);
        let enabled = match get(ANNOTATION_GANG_ENABLED).map(str::trim) {
            None => None,
            Some(v) if v.eq_ignore_ascii_case("true") => Some(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Some(false),
            Some(v) => {
                return Err(bad(format!(
                    "{ANNOTATION_GANG_ENABLED}: {v:?} is not a bool"
                )));
            }
        };
        let min = get(ANNOTATION_GANG_MIN_MEMBERS).map(str::trim);
        if enabled == Some(false) || (enabled.is_none() && min.is_none()) {
            return Ok(None);
        }
        let min_members = match min {
            None => 1,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(bad(format!(
                        "{ANNOTATION_GANG_MIN_MEMBERS}: {v:?} is not a positive integer"
                    )));
                }
            },
        };
        let timeout = match get(ANNOTATION_GANG_TIMEOUT) {
            None => None,
            Some(v) => {
                parse_go_duration(v).map_err(|e| bad(format!("{ANNOTATION_GANG_TIMEOUT}: {e}")))?
            }
        };
        Ok(Some(GangSpec {
            name: name.to_string(),
            min_members,
            timeout,
        }))
    }
}

/// Parses a Go `time.ParseDuration` string (`300ms`, `1.5h`, `2h45m`, units `ns us µs ms s m
/// h`). Zero (`0`, `0s`) means no timeout: `Ok(None)`.
pub fn parse_go_duration(s: &str) -> std::result::Result<Option<Duration>, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(None);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(format!("{s:?} is not a non-negative duration"));
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?}: missing unit"))?;
        let value: f64 = rest[..num_end]
            .parse()
            .map_err(|_| format!("{s:?}: bad number"))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            u => return Err(format!("{s:?}: unknown unit {u:?}")),
        };
        nanos += value * scale;
        rest = &rest[unit_end..];
    }
    if nanos <= 0.0 {
        return Ok(None);
    }
    Ok(Some(Duration::from_nanos(nanos.round() as u64)))
}

/// What became of a member.
#[derive(Debug, Clone, PartialEq)]
pub enum GangStatus {
    /// Not placed yet; nothing is reserved for the gang. `blocked` says why the known members
    /// do not fit, once there are enough of them.
    Waiting {
        /// Members known.
        members: u32,
        /// Members needed.
        min_members: u32,
        /// Why the members known do not fit now (`None` while too few are known).
        blocked: Option<String>,
    },
    /// Placed: the allocations made by this call, by member (the whole gang when this member
    /// completed it, else this member alone).
    Placed(Vec<(String, Allocation)>),
}

/// Something that happened to a gang during [`Scheduler::gang_poll`].
#[derive(Debug, Clone, PartialEq)]
pub enum GangEvent {
    /// The gang was placed, with these allocations by member.
    Placed {
        /// Gang name.
        gang: String,
        /// Allocation per member.
        allocations: Vec<(String, Allocation)>,
    },
    /// The gang's timeout passed before its members fitted; they are forgotten.
    TimedOut {
        /// Gang name.
        gang: String,
        /// The members that were waiting.
        members: Vec<String>,
    },
}

/// A gang's state as [`Scheduler::gang_info`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GangInfo {
    /// Waiting for members or for room, holding nothing.
    Waiting {
        /// Members known.
        members: Vec<String>,
        /// Members needed.
        min_members: u32,
    },
    /// Placed; allocation per member placed (released ones included).
    Placed {
        /// Member and allocation.
        members: Vec<(String, AllocationId)>,
    },
}

/// The coordinator's record of one gang.
#[derive(Debug, Clone)]
pub(crate) enum GangState {
    Waiting {
        spec: GangSpec,
        deadline: Option<Instant>,
        members: Vec<(String, Request)>,
    },
    Placed {
        members: Vec<(String, AllocationId)>,
    },
}

/// The gangs a scheduler knows.
pub(crate) type Gangs = HashMap<String, GangState>;

impl Scheduler {
    /// Adds member `member` (with its request) to the gang `spec.name` at time `now`; the gang
    /// is created by its first member (its timeout counts from then). When the gang knows
    /// `min_members` members they are all placed at once, or none is. A member submitted
    /// again replaces its request while the gang waits, and returns its allocation once placed.
    ///
    /// Errors: the request is invalid (nothing recorded), the gang already timed out
    /// (`Unschedulable`; it is forgotten), or, for a member joining an already placed gang,
    /// whatever [`Scheduler::reserve`] returns.
    pub fn gang_submit(
        &mut self,
        spec: &GangSpec,
        member: &str,
        req: Request,
        now: Instant,
    ) -> Result<GangStatus> {
        if spec.min_members == 0 {
            return Err(SchedError::InvalidRequest(
                "a gang needs at least one member".into(),
            ));
        }
        self.check_request(&req)?;
        let state = self
            .gangs
            .entry(spec.name.clone())
            .or_insert_with(|| GangState::Waiting {
                spec: spec.clone(),
                deadline: spec.timeout.map(|t| now + t),
                members: Vec::new(),
            });
        match state {
            GangState::Placed { members } => {
                let known = members.iter().find(|(m, _)| m == member).map(|(_, id)| *id);
                if let Some(a) = known.and_then(|id| self.allocation(id)) {
                    return Ok(GangStatus::Placed(vec![(member.to_string(), a)]));
                }
                let a = self.reserve(&req)?;
                if let Some(GangState::Placed { members }) = self.gangs.get_mut(&spec.name) {
                    members.retain(|(m, _)| m != member);
                    members.push((member.to_string(), a.id));
                }
                Ok(GangStatus::Placed(vec![(member.to_string(), a)]))
            }
            GangState::Waiting {
                deadline, members, ..
            } => {
                if deadline.is_some_and(|d| now >= d) {
                    self.gangs.remove(&spec.name);
                    return Err(SchedError::Unschedulable {
                        pool: req.pool.clone(),
                        reason: format!("gang {:?} timed out", spec.name),
                    });
                }
                match members.iter_mut().find(|(m, _)| m == member) {
                    Some(slot) => slot.1 = req,
                    None => members.push((member.to_string(), req)),
                }
                match self.try_place(&spec.name) {
                    Some(Ok(allocations)) => Ok(GangStatus::Placed(allocations)),
                    Some(Err(reason)) => Ok(self.waiting(&spec.name, Some(reason))),
                    None => Ok(self.waiting(&spec.name, None)),
                }
            }
        }
    }

    /// Fails waiting gangs whose timeout has passed at `now`, and tries again to place those
    /// that know enough members (call it after capacity was released, or periodically).
    pub fn gang_poll(&mut self, now: Instant) -> Vec<GangEvent> {
        let mut names: Vec<String> = self
            .gangs
            .iter()
            .filter(|(_, g)| matches!(g, GangState::Waiting { .. }))
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        let mut events = Vec::new();
        for name in names {
            let Some(GangState::Waiting {
                deadline, members, ..
            }) = self.gangs.get(&name)
            else {
                continue;
            };
            if deadline.is_some_and(|d| now >= d) {
                let members = members.iter().map(|(m, _)| m.clone()).collect();
                self.gangs.remove(&name);
                events.push(GangEvent::TimedOut {
                    gang: name,
                    members,
                });
                continue;
            }
            if let Some(Ok(allocations)) = self.try_place(&name) {
                events.push(GangEvent::Placed {
                    gang: name,
                    allocations,
                });
            }
        }
        events
    }

    /// Forgets a gang: a waiting one simply goes; a placed one has its live allocations
    /// released (returned). Unknown gangs are an error.
    pub fn gang_cancel(&mut self, name: &str) -> Result<Vec<AllocationId>> {
        match self.gangs.remove(name) {
            None => Err(SchedError::InvalidRequest(format!("unknown gang {name:?}"))),
            Some(GangState::Waiting { .. }) => Ok(Vec::new()),
            Some(GangState::Placed { members }) => {
                let mut released = Vec::new();
                for (_, id) in members {
                    if self.release(id).is_ok() {
                        released.push(id);
                    }
                }
                Ok(released)
            }
        }
    }

    /// A gang's state, if the scheduler knows it.
    pub fn gang_info(&self, name: &str) -> Option<GangInfo> {
        self.gangs.get(name).map(|g| match g {
            GangState::Waiting { spec, members, .. } => GangInfo::Waiting {
                members: members.iter().map(|(m, _)| m.clone()).collect(),
                min_members: spec.min_members,
            },
            GangState::Placed { members } => GangInfo::Placed {
                members: members.clone(),
            },
        })
    }

    /// Names of the gangs the scheduler knows, sorted.
    pub fn gang_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.gangs.keys().cloned().collect();
        v.sort();
        v
    }

    fn waiting(&self, name: &str, blocked: Option<String>) -> GangStatus {
        match self.gangs.get(name) {
            Some(GangState::Waiting { spec, members, .. }) => GangStatus::Waiting {
                members: members.len() as u32,
                min_members: spec.min_members,
                blocked,
            },
            _ => GangStatus::Waiting {
                members: 0,
                min_members: 0,
                blocked,
            },
        }
    }

    /// Places a waiting gang if it knows enough members: `None` if it does not, else the
    /// allocations or why they do not fit.
    fn try_place(
        &mut self,
        name: &str,
    ) -> Option<std::result::Result<Vec<(String, Allocation)>, String>> {
        let Some(GangState::Waiting { spec, members, .. }) = self.gangs.get(name) else {
            return None;
        };
        if (members.len() as u32) < spec.min_members {
            return None;
        }
        let members = members.clone();
        let reqs: Vec<Request> = members.iter().map(|(_, r)| r.clone()).collect();
        match self.reserve_all(&reqs) {
            Ok(allocs) => {
                let placed: Vec<(String, Allocation)> =
                    members.into_iter().map(|(m, _)| m).zip(allocs).collect();
                self.gangs.insert(
                    name.to_string(),
                    GangState::Placed {
                        members: placed.iter().map(|(m, a)| (m.clone(), a.id)).collect(),
                    },
                );
                Some(Ok(placed))
            }
            Err(e) => Some(Err(e.to_string())),
        }
    }
}
