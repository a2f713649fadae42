//! The NVML backend against the stand-in `libnvidia-ml.so` from `carve-fake-nvml`, loaded through
//! the same dynamic-loading path as the real driver (`CARVE_NVML_LIB` → nvml-wrapper → dlopen).
//!
//! The tests set process environment variables, so they serialise on one lock. The fake library
//! is loaded once per process (every test's symlink resolves to the same file); each test gives
//! it a fresh state file, which `nvmlInit` picks up.

use carve_backend::{Backend, BackendError, GpuInstance};
use carve_model::NvmlGiProfile;
use carve_nvml::NvmlBackend;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

static ENV_LOCK: Mutex<()> = Mutex::new(());

/// A pid that cannot exist (above Linux's PID_MAX_LIMIT of 4194304).
const NO_SUCH_PID: u32 = 4_194_999;

use carve_test_support::fake_nvml::fake_nvml_lib as fake_lib;

/// One test's environment: a temp dir with `libnvidia-ml.so.1` → the fake, and a state file.
struct FakeEnv {
    _lock: MutexGuard<'static, ()>,
    dir: PathBuf,
}

impl FakeEnv {
    fn new(name: &str) -> FakeEnv {
        Self::with_node(name, None)
    }

    fn with_node(name: &str, node: Option<&str>) -> FakeEnv {
        let lock = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let lib = fake_lib();
        let dir =
            std::env::temp_dir().join(format!("carve-nvml-fake-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let link = dir.join("libnvidia-ml.so.1");
        std::os::unix::fs::symlink(lib, &link).expect("symlink");
        std::env::set_var("CARVE_NVML_LIB", &link);
        std::env::set_var("CARVE_FAKE_NVML_STATE", dir.join("state.json"));
        match node {
            Some(n) => std::env::set_var("CARVE_FAKE_NVML_NODE", n),
            None => std::env::remove_var("CARVE_FAKE_NVML_NODE"),
        }
        FakeEnv { _lock: lock, dir }
    }

    fn open(&self) -> NvmlBackend {
        NvmlBackend::open().unwrap_or_else(|e| panic!("opening the fake NVML: {e}"))
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn state(&self) -> Value {
        let text = std::fs::read_to_string(self.state_path()).expect("state file");
        serde_json::from_str(&text).expect("state JSON")
    }

    fn edit_state(&self, f: impl FnOnce(&mut Value)) {
        let mut v = self.state();
        f(&mut v);
        std::fs::write(
            self.state_path(),
            serde_json::to_string_pretty(&v).expect("JSON"),
        )
        .expect("writing state");
    }
}

impl Drop for FakeEnv {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// 3g at 4, 2g at 0 and 1g at 2 on GPU 0, each with a full CI.
fn create_three(b: &mut NvmlBackend) -> Vec<u32> {
    let mut ids = Vec::new();
    for (profile, start, slices) in [
        (NvmlGiProfile::Slice3, 4, 3),
        (NvmlGiProfile::Slice2, 0, 2),
        (NvmlGiProfile::Slice1, 2, 1),
    ] {
        let gi = b
            .create_gpu_instance(0, profile, start)
            .unwrap_or_else(|e| panic!("{profile} at {start}: {e}"));
        let ci = b
            .create_compute_instance(0, gi, slices)
            .unwrap_or_else(|e| panic!("CI in GI {gi}: {e}"));
        assert_eq!(ci, 0);
        ids.push(gi);
    }
    ids
}

fn summary(gis: &[GpuInstance]) -> Vec<(u32, NvmlGiProfile, u32, u8, u8, u64)> {
    gis.iter()
        .map(|g| (g.id, g.profile, g.profile_id, g.start, g.size, g.memory_mib))
        .collect()
}

#[test]
fn lists_gpus() {
    let env = FakeEnv::new("gpus");
    let mut b = env.open();
    assert_eq!(b.kind(), "nvml");
    let gpus = b.gpus().expect("gpus");
    assert_eq!(gpus.len(), 2);
    for (i, g) in gpus.iter().enumerate() {
        assert_eq!(g.index, i as u32);
        assert_eq!(g.name, "NVIDIA H100 80GB HBM3");
        assert_eq!(g.pci_device_id, 0x2330);
        assert_eq!(g.memory_mib, 80 * 1024);
        assert!(
            g.uuid.starts_with("GPU-") && g.uuid.len() == 40,
            "{}",
            g.uuid
        );
        let mig = g.mig.expect("MIG-capable");
        assert!(mig.current && mig.pending);
    }
    assert_eq!(gpus[0].pci_bus_id, "00000000:17:00.0");
    assert_ne!(gpus[0].uuid, gpus[1].uuid);
    assert!(b.mig_mode(1).expect("mig mode").current);
    assert!(b.gpu_instances(0).expect("no GIs yet").is_empty());
    assert!(matches!(
        b.mig_mode(2),
        Err(BackendError::InvalidArgument(_))
    ));
}

#[test]
fn node_spec_from_env() {
    let env = FakeEnv::with_node("node", Some("A100-40GB,H100-80GB"));
    let mut b = env.open();
    let gpus = b.gpus().expect("gpus");
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[0].pci_device_id, 0x20B0);
    assert_eq!(gpus[1].pci_device_id, 0x2330);
    // A100: 3g at 4, profile id 9 as on H100.
    let gi = b
        .create_gpu_instance(0, NvmlGiProfile::Slice3, 4)
        .expect("3g on A100");
    let list = b.gpu_instances(0).expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].id, list[0].profile_id, list[0].size), (gi, 9, 4));
}

#[test]
fn creates_at_placements_and_lists_back() {
    let env = FakeEnv::new("create");
    let mut b = env.open();
    let ids = create_three(&mut b);
    // Driver-style GI ids: 3g at 4 → 2, 2g at 0 → 3, 1g at 2 → 9.
    assert_eq!(ids, vec![2, 3, 9]);
    let gis = b.gpu_instances(0).expect("list");
    assert_eq!(
        summary(&gis),
        vec![
            (3, NvmlGiProfile::Slice2, 14, 0, 2, 20096),
            (9, NvmlGiProfile::Slice1, 19, 2, 1, 9984),
            (2, NvmlGiProfile::Slice3, 9, 4, 4, 40448),
        ]
    );
    let mut uuids = Vec::new();
    for (gi, slices) in gis.iter().zip([2u8, 1, 3]) {
        assert_eq!(gi.compute_instances.len(), 1, "GI {}", gi.id);
        let ci = &gi.compute_instances[0];
        assert_eq!((ci.id, ci.slices), (0, slices));
        assert!(
            ci.uuid.starts_with("MIG-") && ci.uuid.len() == 40,
            "{}",
            ci.uuid
        );
        assert!(ci.processes.is_empty());
        assert!(!gi.in_use());
        uuids.push(ci.uuid.clone());
    }
    uuids.sort();
    uuids.dedup();
    assert_eq!(uuids.len(), 3, "MIG UUIDs are distinct");
    assert!(b.gpu_instances(1).expect("GPU 1").is_empty());

    // Several CIs in one GI: a second 3g at 0 split 1c + 1c + 1c.
    let e = b
        .create_gpu_instance(0, NvmlGiProfile::Slice3, 0)
        .expect_err("3g at 0 overlaps the 2g and the 1g");
    assert!(matches!(e, BackendError::InsufficientResources(_)), "{e}");
    let gi = b
        .create_gpu_instance(1, NvmlGiProfile::Slice3, 0)
        .expect("3g at 0 on GPU 1");
    for want in 0..3 {
        assert_eq!(b.create_compute_instance(1, gi, 1).expect("1c"), want);
    }
    assert!(matches!(
        b.create_compute_instance(1, gi, 1),
        Err(BackendError::InsufficientResources(_))
    ));
    let list = b.gpu_instances(1).expect("list GPU 1");
    assert_eq!(list.len(), 1);
    let cis = &list[0].compute_instances;
    assert_eq!(
        cis.iter().map(|c| (c.id, c.slices)).collect::<Vec<_>>(),
        vec![(0, 1), (1, 1), (2, 1)]
    );
    assert!(cis.iter().all(|c| c.uuid.starts_with("MIG-")));
}

#[test]
fn driver_errors_map_to_backend_errors() {
    let env = FakeEnv::new("errors");
    let mut b = env.open();
    let gi = b
        .create_gpu_instance(0, NvmlGiProfile::Slice3, 4)
        .expect("3g at 4");
    // Overlapping placement.
    match b.create_gpu_instance(0, NvmlGiProfile::Slice2, 4) {
        Err(BackendError::InsufficientResources(m)) => {
            assert!(
                m.contains("nvmlDeviceCreateGpuInstanceWithPlacement"),
                "{m}"
            )
        }
        other => panic!("expected InsufficientResources, got {other:?}"),
    }
    // A start the profile does not allow.
    match b.create_gpu_instance(0, NvmlGiProfile::Slice3, 2) {
        Err(BackendError::InvalidArgument(m)) => {
            assert!(m.contains("allowed starts: 0, 4"), "{m}")
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    // A profile H100 does not have.
    assert!(matches!(
        b.create_gpu_instance(0, NvmlGiProfile::Slice8, 0),
        Err(BackendError::NotSupported(_))
    ));
    // A CI size the GI does not offer.
    assert!(matches!(
        b.create_compute_instance(0, gi, 4),
        Err(BackendError::NotSupported(_))
    ));
    b.create_compute_instance(0, gi, 3).expect("full CI");
    // A GI that still has a CI.
    match b.destroy_gpu_instance(0, gi) {
        Err(BackendError::InUse(m)) => assert!(m.contains("nvmlGpuInstanceDestroy"), "{m}"),
        other => panic!("expected InUse, got {other:?}"),
    }
    // Unknown instances.
    match b.destroy_gpu_instance(0, 42) {
        Err(BackendError::NotFound(m)) => {
            assert!(m.contains("nvmlDeviceGetGpuInstanceById"), "{m}")
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(matches!(
        b.destroy_compute_instance(0, gi, 7),
        Err(BackendError::NotFound(_))
    ));
    // Disabling MIG while GIs exist.
    assert!(matches!(
        b.set_mig_mode(0, false),
        Err(BackendError::InUse(_))
    ));
    b.destroy_compute_instance(0, gi, 0).expect("destroy CI");
    b.destroy_gpu_instance(0, gi).expect("destroy GI");
    assert!(b.gpu_instances(0).expect("list").is_empty());

    // Hopper switches MIG mode at once; without MIG there are no instances to list.
    let m = b.set_mig_mode(0, false).expect("disable");
    assert!(!m.current && !m.pending);
    assert!(matches!(
        b.gpu_instances(0),
        Err(BackendError::NotSupported(_))
    ));
    assert!(matches!(
        b.create_gpu_instance(0, NvmlGiProfile::Slice7, 0),
        Err(BackendError::NotSupported(_))
    ));
    let m = b.set_mig_mode(0, true).expect("enable");
    assert!(m.current && m.pending);
    let gi = b
        .create_gpu_instance(0, NvmlGiProfile::Slice7, 0)
        .expect("7g");
    assert_eq!(gi, 0);
}

#[test]
fn busy_compute_instance_from_state_file() {
    let env = FakeEnv::new("busy");
    let mut b = env.open();
    let gi = b
        .create_gpu_instance(0, NvmlGiProfile::Slice1, 0)
        .expect("1g at 0");
    b.create_compute_instance(0, gi, 1).expect("CI");
    let me = std::process::id();
    env.edit_state(|v| {
        let procs = &mut v["gpus"][0]["gis"][0]["cis"][0]["processes"];
        *procs = serde_json::json!([
            {"pid": me, "name": "ignored"},
            {"pid": NO_SUCH_PID, "name": "ignored"},
        ]);
    });
    let list = b.gpu_instances(0).expect("list");
    assert!(list[0].in_use());
    let procs = &list[0].compute_instances[0].processes;
    let comm = std::fs::read_to_string("/proc/self/comm").expect("comm");
    assert_eq!(procs.len(), 2);
    assert_eq!(
        (procs[0].pid, procs[0].name.as_str()),
        (me, comm.trim_end())
    );
    assert_eq!(procs[1].pid, NO_SUCH_PID);
    assert_eq!(procs[1].name, format!("pid {NO_SUCH_PID}"));
    match b.destroy_compute_instance(0, gi, 0) {
        Err(BackendError::InUse(m)) => assert!(m.contains("nvmlComputeInstanceDestroy"), "{m}"),
        other => panic!("expected InUse, got {other:?}"),
    }
    // The process ends.
    env.edit_state(|v| {
        v["gpus"][0]["gis"][0]["cis"][0]["processes"] = serde_json::json!([]);
    });
    assert!(!b.gpu_instances(0).expect("list")[0].in_use());
    b.destroy_compute_instance(0, gi, 0).expect("destroy CI");
    b.destroy_gpu_instance(0, gi).expect("destroy GI");
}

/// Sets the stand-in CUDA bridge's variables for one test and takes them away again.
struct CudaBridge;

impl CudaBridge {
    fn set(dir: &std::path::Path, gpu: Option<&str>) -> CudaBridge {
        std::env::set_var("CARVE_FAKE_CUDA_DIR", dir);
        match gpu {
            Some(g) => std::env::set_var("CARVE_FAKE_NVML_CUDA_GPU", g),
            None => std::env::remove_var("CARVE_FAKE_NVML_CUDA_GPU"),
        }
        CudaBridge
    }
}

impl Drop for CudaBridge {
    fn drop(&mut self) {
        std::env::remove_var("CARVE_FAKE_CUDA_DIR");
        std::env::remove_var("CARVE_FAKE_NVML_CUDA_GPU");
    }
}

/// The whole GPU's processes (what the agent's backstop reads): the stand-in CUDA's live
/// processes with the memory each holds, on the GPU the bridge names, none in MIG mode; MIG
/// devices' processes too; dead and reused pids never.
#[test]
fn gpu_processes_show_the_stand_in_cudas_processes_with_their_memory() {
    use carve_backend::GpuProcess;
    let env = FakeEnv::new("cuda-bridge");
    let mut b = env.open();
    for g in [0, 1] {
        assert!(!b.set_mig_mode(g, false).expect("MIG off").current);
    }
    // Without the bridge: nobody.
    assert_eq!(b.gpu_processes(0).expect("GPU 0"), []);
    let gpu = env.dir.join("gpu");
    std::fs::create_dir_all(gpu.join("mem")).expect("mem dir");
    let me = std::process::id();
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    let started: u64 = stat[stat.rfind(')').expect(")") + 1..]
        .split_ascii_whitespace()
        .nth(19)
        .and_then(|s| s.parse().ok())
        .expect("start time");
    let mem = |pid: u32, text: String| std::fs::write(gpu.join("mem").join(pid.to_string()), text);
    mem(me, format!("{} {started}\n", 3 << 20)).expect("write");
    // A dead process, and pid 1 under a start time that is not its own (a reused pid).
    mem(NO_SUCH_PID, "5 1\n".into()).expect("write");
    mem(1, format!("7 {}\n", u64::MAX)).expect("write");
    let mine = GpuProcess {
        pid: me,
        used_memory_bytes: Some(3 << 20),
    };
    {
        let _bridge = CudaBridge::set(&gpu, None);
        assert_eq!(
            b.gpu_processes(0).expect("GPU 0"),
            std::slice::from_ref(&mine)
        );
        assert_eq!(b.gpu_processes(1).expect("GPU 1"), []);
    }
    {
        let _bridge = CudaBridge::set(&gpu, Some("1"));
        assert_eq!(b.gpu_processes(0).expect("GPU 0"), []);
        assert_eq!(
            b.gpu_processes(1).expect("GPU 1"),
            std::slice::from_ref(&mine)
        );
        // In MIG mode the GPU has only its MIG devices' processes.
        assert!(b.set_mig_mode(1, true).expect("MIG on").current);
        let gi = b
            .create_gpu_instance(1, NvmlGiProfile::Slice1, 0)
            .expect("1g at 0");
        b.create_compute_instance(1, gi, 1).expect("CI");
        env.edit_state(|v| {
            v["gpus"][1]["gis"][0]["cis"][0]["processes"] =
                serde_json::json!([{"pid": 4321, "name": "x"}]);
        });
        let on_mig = b.gpu_processes(1).expect("GPU 1");
        assert_eq!(on_mig.iter().map(|p| p.pid).collect::<Vec<_>>(), [4321]);
    }
    assert_eq!(b.gpu_processes(0).expect("GPU 0"), []);
    match b.gpu_processes(7) {
        Err(BackendError::InvalidArgument(m)) => assert!(m.contains("GPU 7"), "{m}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn state_is_persisted_and_shared() {
    let env = FakeEnv::new("shared");
    let mut a = env.open();
    let ids = create_three(&mut a);
    let seen_by_a = a.gpu_instances(0).expect("list a");
    // A second open in the same process, while the first is alive.
    let mut b = env.open();
    assert_eq!(b.gpu_instances(0).expect("list b"), seen_by_a);
    b.destroy_compute_instance(0, ids[2], 0)
        .expect("destroy CI via b");
    assert_eq!(
        a.gpu_instances(0).expect("list a")[1]
            .compute_instances
            .len(),
        0,
        "a sees b's change"
    );
    drop(a);
    drop(b);
    // After every handle is gone, the state comes back from the file.
    let state = env.state();
    assert_eq!(state["gpus"][0]["gis"].as_array().map(Vec::len), Some(3));
    let mut c = env.open();
    let list = c.gpu_instances(0).expect("list c");
    assert_eq!(summary(&list), summary(&seen_by_a));
    assert_eq!(
        list[0].compute_instances[0].uuid,
        seen_by_a[0].compute_instances[0].uuid
    );
    assert!(list[1].compute_instances.is_empty());
}
