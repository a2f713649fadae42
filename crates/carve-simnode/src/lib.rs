//! The simulated node: carve's default backend where no GPU is. The node (GPUs, MIG mode, GPU and
//! compute instances, processes) lives in the state database, so successive commands and the
//! agent see the same GPUs. Each mutation is one transaction.
//!
//! Test hooks: instances can be marked busy; the Nth mutation from now can be made to fail with a
//! chosen NVML error; and `crash_after(N)` aborts the process right after the Nth mutation of this
//! process is committed (the CLI sets it from `CARVE_SIM_CRASH_AFTER`).

use carve_backend::engine::SimNode;
use carve_backend::{Backend, BackendError, GpuInfo, GpuInstance, MigMode, Process, Result};
use carve_model::{Catalog, GpuListError, NvmlGiProfile};
use carve_state::{StateError, Store};
use serde::{Deserialize, Serialize};

const KEY: &str = "sim";

/// A pending injected fault: the `countdown`-th mutation from now fails with `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub countdown: u64,
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SimState {
    spec: String,
    node: SimNode,
    #[serde(default)]
    fault: Option<Fault>,
    #[serde(default)]
    mutations: u64,
}

/// The simulated node could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The node spec (`2xH100-80GB`) is not a list of catalog GPUs.
    #[error(transparent)]
    Spec(#[from] GpuListError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// A fault that cannot be injected.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("unknown NVML error '{kind}' (one of: {})", BackendError::KINDS.join(", "))]
    UnknownKind { kind: String },
    #[error("the mutation number counts from 1")]
    Zeroth,
    #[error(transparent)]
    State(#[from] StateError),
}

pub struct SimBackend {
    store: Store,
    catalog: Catalog,
    crash_after: Option<u64>,
    mutations_here: u64,
}

fn state_err(e: carve_state::StateError) -> BackendError {
    BackendError::Other(e.to_string())
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ ((std::process::id() as u64) << 32)
}

impl SimBackend {
    /// Opens the simulated node in `store`. With `spec` (`2xH100-80GB`), a node of exactly those
    /// GPUs: the stored one if it matches, else a new one. Without, the stored node, or a new
    /// default one. Returns the backend and whether a new node was made.
    pub fn open(
        store: Store,
        catalog: Catalog,
        spec: Option<&str>,
    ) -> std::result::Result<(SimBackend, bool), OpenError> {
        let existing: Option<SimState> = store.get(KEY)?;
        let wanted = spec.map(str::trim);
        let canonical = |s: &str| -> std::result::Result<Vec<String>, GpuListError> {
            Ok(catalog.gpu_list(s)?.iter().map(|m| m.key.clone()).collect())
        };
        let fresh = match (&existing, wanted) {
            (None, _) => true,
            (Some(st), Some(w)) => {
                canonical(w)?
                    != st
                        .node
                        .gpus
                        .iter()
                        .map(|g| g.model.clone())
                        .collect::<Vec<_>>()
            }
            (Some(_), None) => false,
        };
        if fresh {
            let spec = wanted
                .unwrap_or(carve_backend::DEFAULT_SIM_NODE)
                .to_string();
            let models = catalog.gpu_list(&spec)?;
            let st = SimState {
                node: SimNode::new(&models, seed()),
                spec,
                fault: None,
                mutations: 0,
            };
            store.put(KEY, &st)?;
        }
        Ok((
            SimBackend {
                store,
                catalog,
                crash_after: None,
                mutations_here: 0,
            },
            fresh,
        ))
    }

    /// Abort the process right after the `n`-th mutation of this process is committed.
    pub fn crash_after(&mut self, n: Option<u64>) {
        self.crash_after = n;
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn read(&self) -> Result<SimState> {
        self.store
            .get::<SimState>(KEY)
            .map_err(state_err)?
            .ok_or_else(|| BackendError::Unavailable("the simulated node is gone".into()))
    }

    /// The node as stored.
    pub fn node(&self) -> Result<SimNode> {
        Ok(self.read()?.node)
    }

    pub fn spec(&self) -> Result<String> {
        Ok(self.read()?.spec)
    }

    pub fn fault(&self) -> Result<Option<Fault>> {
        Ok(self.read()?.fault)
    }

    /// Changes the node without counting as a GPU mutation (test hooks: busy, reboot).
    fn edit<R>(&mut self, f: impl FnOnce(&mut SimNode) -> Result<R>) -> Result<R> {
        self.store
            .update::<SimState, _>(KEY, |st| match st {
                Some(st) => f(&mut st.node),
                None => Err(BackendError::Unavailable(
                    "the simulated node is gone".into(),
                )),
            })
            .map_err(state_err)?
    }

    /// One GPU mutation: an injected fault fires here, and the crash hook after the commit.
    fn mutate<R>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut SimNode, &Catalog) -> Result<R>,
    ) -> Result<R> {
        let catalog = &self.catalog;
        let r = self
            .store
            .update::<SimState, _>(KEY, |st| {
                let Some(st) = st else {
                    return Err(BackendError::Unavailable(
                        "the simulated node is gone".into(),
                    ));
                };
                if let Some(fault) = &mut st.fault {
                    if fault.countdown <= 1 {
                        let kind = fault.kind.clone();
                        st.fault = None;
                        return Err(BackendError::from_kind(
                            &kind,
                            format!("injected fault on {what}"),
                        )
                        .unwrap_or_else(|| {
                            BackendError::Other(format!("injected fault on {what}"))
                        }));
                    }
                    fault.countdown -= 1;
                }
                let out = f(&mut st.node, catalog)?;
                st.mutations += 1;
                Ok(out)
            })
            .map_err(state_err)?;
        let out = r?;
        self.mutations_here += 1;
        if self.crash_after == Some(self.mutations_here) {
            eprintln!(
                "carve: CARVE_SIM_CRASH_AFTER={}: aborting after {what}",
                self.mutations_here
            );
            std::process::abort();
        }
        Ok(out)
    }

    /// Makes the `nth` GPU mutation from now fail with an NVML error kind (`in-use`, ...).
    pub fn inject_fault(&mut self, nth: u64, kind: &str) -> std::result::Result<(), FaultError> {
        if BackendError::from_kind(kind, String::new()).is_none() {
            return Err(FaultError::UnknownKind {
                kind: kind.to_string(),
            });
        }
        if nth == 0 {
            return Err(FaultError::Zeroth);
        }
        self.store
            .update::<SimState, _>(KEY, |st| {
                if let Some(st) = st {
                    st.fault = Some(Fault {
                        countdown: nth,
                        kind: kind.to_string(),
                    });
                }
            })
            .map_err(FaultError::from)
    }

    pub fn clear_fault(&mut self) -> Result<()> {
        self.store
            .update::<SimState, _>(KEY, |st| {
                if let Some(st) = st {
                    st.fault = None;
                }
            })
            .map_err(state_err)
    }

    /// Marks the MIG device `uuid` busy with a process (or idle with `None`).
    pub fn set_busy(&mut self, uuid: &str, process: Option<Process>) -> Result<()> {
        self.edit(|n| n.set_busy(uuid, process))
    }

    /// Simulates a reboot: instances are gone, Hopper and later forget MIG mode.
    pub fn reboot(&mut self) -> Result<()> {
        self.edit(|n| {
            n.reboot();
            Ok(())
        })
    }

    /// Simulates a GPU reset (makes a pending MIG mode current).
    pub fn reset(&mut self, gpu: u32) -> Result<()> {
        self.edit(|n| n.reset(gpu))
    }
}

impl Backend for SimBackend {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn gpus(&mut self) -> Result<Vec<GpuInfo>> {
        Ok(self.read()?.node.gpu_infos())
    }

    fn mig_mode(&mut self, gpu: u32) -> Result<MigMode> {
        self.read()?.node.mig_mode(gpu)
    }

    fn set_mig_mode(&mut self, gpu: u32, enabled: bool) -> Result<MigMode> {
        self.mutate("set MIG mode", |n, _| n.set_mig_mode(gpu, enabled))
    }

    fn gpu_instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>> {
        self.read()?.node.gpu_instances(&self.catalog, gpu)
    }

    fn create_gpu_instance(&mut self, gpu: u32, profile: NvmlGiProfile, start: u8) -> Result<u32> {
        self.mutate("create GPU instance", |n, c| {
            n.create_gpu_instance(c, gpu, profile, start)
        })
    }

    fn create_compute_instance(&mut self, gpu: u32, gi: u32, slices: u8) -> Result<u32> {
        self.mutate("create compute instance", |n, c| {
            n.create_compute_instance(c, gpu, gi, slices)
        })
    }

    fn destroy_compute_instance(&mut self, gpu: u32, gi: u32, ci: u32) -> Result<()> {
        self.mutate("destroy compute instance", |n, _| {
            n.destroy_compute_instance(gpu, gi, ci)
        })
    }

    fn destroy_gpu_instance(&mut self, gpu: u32, gi: u32) -> Result<()> {
        self.mutate("destroy GPU instance", |n, _| {
            n.destroy_gpu_instance(gpu, gi)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(tag: &str, spec: Option<&str>) -> SimBackend {
        let dir = std::env::temp_dir().join(format!("carve-simnode-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        SimBackend::open(Store::open(&dir).unwrap(), Catalog::embedded(), spec)
            .unwrap()
            .0
    }

    #[test]
    fn persists_across_opens_and_injects_faults() {
        let mut b = open("persist", Some("H100-80GB,A30"));
        let gpus = b.gpus().unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[1].pci_device_id, 0x20B7);
        b.create_gpu_instance(0, NvmlGiProfile::Slice3, 4).unwrap();
        b.inject_fault(2, "in-use").unwrap();
        b.create_gpu_instance(0, NvmlGiProfile::Slice1, 0).unwrap();
        let e = b
            .create_gpu_instance(0, NvmlGiProfile::Slice1, 1)
            .unwrap_err();
        assert!(matches!(e, BackendError::InUse(_)), "{e}");
        // The fault fires once.
        b.create_gpu_instance(0, NvmlGiProfile::Slice1, 1).unwrap();
        let dir = b.store().path().parent().unwrap().to_path_buf();
        let (mut again, fresh) =
            SimBackend::open(Store::open(&dir).unwrap(), Catalog::embedded(), None).unwrap();
        assert!(!fresh);
        assert_eq!(again.gpu_instances(0).unwrap().len(), 3);
        // Asking for a different node makes a new one.
        let (mut other, fresh) = SimBackend::open(
            Store::open(&dir).unwrap(),
            Catalog::embedded(),
            Some("A100-40GB"),
        )
        .unwrap();
        assert!(fresh);
        assert_eq!(other.gpus().unwrap().len(), 1);
        let e = b.inject_fault(1, "bogus").unwrap_err();
        assert!(matches!(e, FaultError::UnknownKind { .. }), "{e}");
        assert!(e
            .to_string()
            .starts_with("unknown NVML error 'bogus' (one of: "));
        assert!(matches!(
            b.inject_fault(0, "in-use"),
            Err(FaultError::Zeroth)
        ));
        // A spec that names no GPU says which, with a suggestion.
        let e = SimBackend::open(
            Store::open(&dir).unwrap(),
            Catalog::embedded(),
            Some("2xA100-4OGB"),
        )
        .err()
        .unwrap();
        assert!(
            matches!(e, OpenError::Spec(GpuListError::Unknown(_))),
            "{e}"
        );
        assert!(e.to_string().contains("did you mean 'A100-40GB'"), "{e}");
    }
}
