//! A scheduler configuration from a plan: the time-sliced GPU's policy, slice, per-tenant shares
//! and memory limits, and token files made owner-only.

use std::os::unix::fs::PermissionsExt;

#[test]
fn a_plans_time_sliced_gpu_becomes_a_config() {
    let cat = carve_model::Catalog::embedded();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/tenancy.yaml"
    ))
    .unwrap();
    let plan = carve_plan::plan(&carve_plan::parse(&text, &cat).unwrap(), &cat);
    let tokens = std::env::temp_dir().join(format!("carve-sched-tokens-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tokens);
    let g = plan
        .gpus
        .iter()
        .find(|g| g.node == "node-a" && g.mode == carve_plan::plan::GpuMode::TimeSliced)
        .expect("node-a has a time-sliced GPU");
    let c = carve_sched::plan::from_plan(&plan, Some("node-a"), Some(g.index), &tokens).unwrap();
    let sch = g.scheduler.as_ref().unwrap();
    assert_eq!(c.slice_ms, Some(sch.slice_ms));
    let names: Vec<&str> = c.tenants.iter().map(|t| t.name.as_str()).collect();
    for s in &g.shares {
        assert!(names.contains(&s.tenant.as_str()));
    }
    for t in &c.tenants {
        let want: u64 = g
            .shares
            .iter()
            .filter(|s| s.tenant == t.name)
            .map(|s| s.memory_mib)
            .sum();
        assert_eq!(t.memory_limit_bytes, Some(want * 1024 * 1024));
        let f = tokens.join(&t.name);
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            t.identity.token.as_deref(),
            Some(std::fs::read_to_string(&f).unwrap().trim())
        );
    }
    // The same tokens next time.
    let again =
        carve_sched::plan::from_plan(&plan, Some("node-a"), Some(g.index), &tokens).unwrap();
    assert_eq!(again.tenants[0].identity.token, c.tenants[0].identity.token);
    // Wrong node or GPU: a clear error.
    assert!(carve_sched::plan::from_plan(&plan, Some("nope"), None, &tokens).is_err());
    assert!(
        carve_sched::plan::from_plan(&plan, Some("node-a"), Some(2), &tokens)
            .unwrap_err()
            .contains("not time-sliced")
    );
    let _ = std::fs::remove_dir_all(&tokens);
}
