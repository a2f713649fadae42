//! Plan → scheduler: the one place where a plan's time-sliced GPU becomes the
//! [`Schedule`] that runs it. The node agent, `carve sched serve plan.json`, the `carve-sched.yaml`
//! renderer and the simulator all call [`gpu_schedule`], so what is planned, written, run and
//! predicted is the same schedule.
//!
//! The rules:
//! - only GPUs in mode `time-sliced` have one (`vgpu-time-sliced` GPUs are scheduled by the
//!   hypervisor's driver, from the `RmPVMRL` value of the vGPU sheet);
//! - policy, slice and work-conserving as the plan records them; the slice must be 1–30 ms
//!   (rejected, never clamped); the averaging factor is vGPU's default
//!   ([`carve_timeslice::DEFAULT_AVERAGING_FACTOR`]);
//! - one scheduler tenant per plan tenant, in the order of its first share: its replicas'
//!   shares and memory summed; shares are kept under fixed share only (under equal share and
//!   best effort the plan's shares are the nominal 1/N, and the policy divides time itself).

use crate::plan::{GpuMode, Plan, PlannedGpu, PlannedScheduler};
use carve_timeslice::{Policy, Schedule, ScheduledTenant, Settings, SettingsError};

/// Whether planned time-sliced GPUs are work-conserving (idle tenants' time handed to tenants
/// with work): **no**. Equal and fixed share then behave as NVIDIA documents them (an idle
/// tenant's time stays idle), which is what the plan's reasons promise ("constant as others come
/// and go"), what `carve simulate` predicts, and what the time-slicing figures in README.md were
/// measured with. Best effort is work-conserving by nature either way. Decided here, once; the
/// planner records it in each GPU's `scheduler.work_conserving`, and everything that runs or
/// predicts a plan reads it from there.
pub const WORK_CONSERVING: bool = false;

/// Whether the equal-share replicas the agent makes of unplanned GPUs (`carve agent --replicas
/// N`) are work-conserving: **yes**. Nothing was promised to them, and like Kubernetes'
/// time-slicing a replica alone on its GPU gets all of it.
pub const REPLICAS_WORK_CONSERVING: bool = true;

/// Why a plan gives no schedule for a GPU.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error("the plan has no node '{0}'")]
    NoNode(String),
    #[error("the plan has several nodes: give --node")]
    SeveralNodes,
    #[error("{node} has no time-sliced GPU in the plan")]
    NoTimeSlicedGpu { node: String },
    #[error("{node} has {count} time-sliced GPUs: give --gpu")]
    SeveralGpus { node: String, count: usize },
    #[error("GPU {gpu} of {node} is not time-sliced in the plan")]
    NotTimeSliced { node: String, gpu: u32 },
    #[error("GPU {gpu} of {node} is time-sliced but has no scheduler settings")]
    NoSettings { node: String, gpu: u32 },
    #[error("GPU {gpu} of {node}: {error}")]
    Invalid {
        node: String,
        gpu: u32,
        error: SettingsError,
    },
}

/// The schedule of a planned GPU: `Ok(None)` when the GPU is not time-sliced by carve.
pub fn gpu_schedule(g: &PlannedGpu) -> Result<Option<Schedule>, ScheduleError> {
    if g.mode != GpuMode::TimeSliced {
        return Ok(None);
    }
    let sch = g
        .scheduler
        .as_ref()
        .ok_or_else(|| ScheduleError::NoSettings {
            node: g.node.clone(),
            gpu: g.index,
        })?;
    let invalid = |error: SettingsError| ScheduleError::Invalid {
        node: g.node.clone(),
        gpu: g.index,
        error,
    };
    let settings = settings(sch).map_err(invalid)?;
    let mut tenants: Vec<ScheduledTenant> = Vec::new();
    for s in &g.shares {
        let bytes = s.memory_mib.saturating_mul(1024 * 1024);
        match tenants.iter_mut().find(|t| t.name == s.tenant) {
            Some(t) => {
                t.share = t.share.map(|x| x + s.share);
                t.memory_limit_bytes = t.memory_limit_bytes.map(|m| m.saturating_add(bytes));
            }
            None => tenants.push(ScheduledTenant {
                name: s.tenant.clone(),
                share: Some(s.share),
                memory_limit_bytes: Some(bytes),
            }),
        }
    }
    if sch.policy != Policy::FixedShare {
        for t in &mut tenants {
            t.share = None;
        }
    }
    let schedule = Schedule { settings, tenants };
    schedule.validate().map_err(invalid)?;
    Ok(Some(schedule))
}

/// The policy settings of a GPU's planned scheduler (also for `vgpu-time-sliced` GPUs, whose
/// scheduler the simulator models the same way): policy, slice (1–30 ms, else an error) and
/// work-conserving as planned, vGPU's default averaging factor.
pub fn settings(sch: &PlannedScheduler) -> Result<Settings, SettingsError> {
    let s = Settings {
        policy: sch.policy,
        slice_ns: Some(carve_timeslice::slice_ns_from_ms(sch.slice_ms)),
        work_conserving: sch.work_conserving,
        averaging_factor: carve_timeslice::DEFAULT_AVERAGING_FACTOR,
    };
    s.validate()?;
    Ok(s)
}

/// Picks a time-sliced GPU of `plan`: on `node` (default: the plan's only node), GPU `gpu`
/// (default: the node's only time-sliced GPU). Returns the node's name, the GPU and its schedule.
pub fn pick(
    plan: &Plan,
    node: Option<&str>,
    gpu: Option<u32>,
) -> Result<(String, u32, Schedule), ScheduleError> {
    let node = match node {
        Some(n) => plan
            .node(n)
            .map(|x| x.name.clone())
            .ok_or_else(|| ScheduleError::NoNode(n.to_string()))?,
        None if plan.nodes.len() == 1 => plan.nodes[0].name.clone(),
        None => return Err(ScheduleError::SeveralNodes),
    };
    let sliced: Vec<&PlannedGpu> = plan
        .gpus
        .iter()
        .filter(|g| g.node == node && g.mode == GpuMode::TimeSliced)
        .collect();
    let g =
        match gpu {
            Some(i) => *sliced.iter().find(|g| g.index == i).ok_or_else(|| {
                ScheduleError::NotTimeSliced {
                    node: node.clone(),
                    gpu: i,
                }
            })?,
            None => match sliced.as_slice() {
                [one] => *one,
                [] => return Err(ScheduleError::NoTimeSlicedGpu { node }),
                many => {
                    return Err(ScheduleError::SeveralGpus {
                        node,
                        count: many.len(),
                    })
                }
            },
        };
    let schedule = gpu_schedule(g)?.ok_or_else(|| ScheduleError::NotTimeSliced {
        node: node.clone(),
        gpu: g.index,
    })?;
    Ok((node, g.index, schedule))
}

/// The schedule of an unplanned GPU split into equal-share replicas, one tenant each (named as
/// given): default slice, work-conserving ([`REPLICAS_WORK_CONSERVING`]), no memory limits.
pub fn replicas(names: impl IntoIterator<Item = String>) -> Schedule {
    Schedule {
        settings: Settings {
            policy: Policy::EqualShare,
            slice_ns: None,
            work_conserving: REPLICAS_WORK_CONSERVING,
            averaging_factor: carve_timeslice::DEFAULT_AVERAGING_FACTOR,
        },
        tenants: names
            .into_iter()
            .map(|name| ScheduledTenant {
                name,
                share: None,
                memory_limit_bytes: None,
            })
            .collect(),
    }
}
