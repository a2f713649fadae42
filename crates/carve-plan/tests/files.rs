//! The files made from a plan: mig-parted configs that mig-parted's format and carve's checker
//! accept, a well-formed SVG drawn to scale, a report that explains every tenant, vGPU sheets
//! with the RmPVMRL commands, scheduler settings that `carve sched` reads back.

use carve_model::Catalog;
use carve_plan::files;
use carve_plan::plan::{GpuMode, Plan};

fn example() -> Plan {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/tenancy.yaml"
    ))
    .expect("examples/tenancy.yaml");
    let cat = Catalog::embedded();
    let t = carve_plan::parse(&text, &cat).expect("the example parses");
    carve_plan::plan(&t, &cat)
}

#[test]
fn mig_parted_configs_check_on_their_nodes() {
    let plan = example();
    let cat = Catalog::embedded();
    for n in &plan.nodes {
        let Some(text) = files::mig_parted(&plan, &n.name) else {
            continue;
        };
        let (file, diags) =
            carve_migparted::parse(&text).unwrap_or_else(|d| panic!("{}: {d:?}\n{text}", n.name));
        assert!(diags.is_empty(), "{diags:?}");
        let models: Vec<&carve_model::GpuModel> = plan
            .node_gpus(&n.name)
            .map(|g| cat.gpu(&g.model).unwrap())
            .collect();
        let report = carve_migparted::check(&file, &cat, Some(&models));
        assert!(
            report
                .diagnostics
                .iter()
                .all(|d| d.severity != carve_migparted::Severity::Error),
            "{}: {:?}\n{text}",
            n.name,
            report.diagnostics
        );
        // The counts are the plan's.
        for g in plan.node_gpus(&n.name).filter(|g| g.mode == GpuMode::Mig) {
            for i in &g.instances {
                assert!(text.contains(&format!("\"{}\"", i.profile)), "{text}");
            }
        }
    }
}

#[test]
fn the_svg_is_well_formed_and_to_scale() {
    let plan = example();
    let svg = files::layout_svg(&plan, &Catalog::embedded());
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    for t in &plan.tenants {
        assert!(svg.contains(&t.name), "{} missing", t.name);
    }
    let rows: Vec<_> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("gpu"))
        .collect();
    // Every GPU, the unused ones marked.
    assert_eq!(rows.len(), plan.gpus.len());
    let unused = rows
        .iter()
        .filter(|r| r.attribute("data-mode") == Some("unused"))
        .count();
    assert_eq!(unused, plan.gpus.len() - plan.gpus_used as usize);
    assert!(unused > 0, "the example leaves a GPU unused");
    // Instance rectangles: x and width proportional to start and size.
    let cat = Catalog::embedded();
    for row in rows {
        let node = row.attribute("data-node").unwrap();
        let idx: u32 = row.attribute("data-gpu").unwrap().parse().unwrap();
        let g = plan
            .gpus
            .iter()
            .find(|g| g.node == node && g.index == idx)
            .unwrap();
        let rects: Vec<_> = row
            .descendants()
            .filter(|n| n.attribute("class") == Some("instance"))
            .collect();
        assert_eq!(rects.len(), g.instances.len());
        if let (Some(first), Ok(m)) = (g.instances.first(), cat.gpu(&g.model)) {
            let r = &rects[0];
            let x: f64 = r.attribute("x").unwrap().parse().unwrap();
            let w: f64 = r.attribute("width").unwrap().parse().unwrap();
            let slot = (w + 2.0) / first.size as f64;
            let bar = slot * m.memory_slots as f64;
            assert!((bar - 640.0).abs() < 0.5, "bar {bar}");
            for (r, i) in rects.iter().zip(&g.instances) {
                let x2: f64 = r.attribute("x").unwrap().parse().unwrap();
                assert!(((x2 - x) - (i.start as f64 - first.start as f64) * slot).abs() < 0.5);
            }
        }
    }
    // Names are escaped.
    let mut p = plan.clone();
    p.tenants[0].name = "<a&b>".into();
    let svg = files::layout_svg(&p, &cat);
    roxmltree::Document::parse(&svg).expect("escaped");
}

#[test]
fn the_report_explains_every_tenant() {
    let plan = example();
    let md = files::report_md(&plan, &Catalog::embedded());
    for t in &plan.tenants {
        assert!(
            md.contains(&format!("### {} — {}", t.name, t.mode)),
            "{}",
            t.name
        );
        assert!(md.contains(&t.reason));
        for r in &t.rejected {
            assert!(md.contains(&r.why));
        }
    }
    assert!(md.contains("proven optimum"));
    // The planner's work, not its time: the same on every machine.
    assert!(
        md.contains(&format!(
            "The MIG packing took {} branch-and-bound node",
            plan.stats.solver_nodes
        )),
        "{md}"
    );
    assert!(!md.contains("Planned in"), "{md}");
}

/// No clock, a node budget instead of a time limit: planning is a function of its input.
#[test]
fn planning_is_deterministic() {
    let a = example();
    let b = example();
    assert_eq!(a, b);
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
}

#[test]
fn vgpu_sheet_device_plugin_and_scheduler_settings() {
    let plan = example();
    let sheet = files::vgpu_sheet(&plan, "vdi-1").expect("a hypervisor node");
    assert!(sheet.contains("esxcli system module parameters set -m nvidia"));
    assert!(sheet.contains("RmPVMRL=0x"));
    assert!(sheet.contains("H100-8C"));
    assert!(files::vgpu_sheet(&plan, "node-a").is_none());
    let dp = files::device_plugin(&plan, "node-a").expect("a kubernetes node");
    assert!(dp.contains("migStrategy: mixed"));
    assert!(dp.contains("replicas:"));
    assert!(
        files::device_plugin(&plan, "node-b").is_none(),
        "bare metal has no device plugin"
    );
    let sched = files::sched_config(&plan, "node-a").expect("a time-sliced GPU");
    assert!(sched.contains("policy:"));
    let pods = files::pod_resources(&plan);
    assert!(pods.contains("nvidia.com/mig-1g.10gb"));
    let all = files::files(&plan, &Catalog::embedded());
    let names: Vec<&str> = all.iter().map(|f| f.0.as_str()).collect();
    for want in [
        "report.md",
        "layout.svg",
        "pod-resources.yaml",
        "nodes/node-a/mig-parted.yaml",
        "nodes/vdi-1/vgpu.md",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
    assert_eq!(files::path_name("a/../b"), "a_.._b");
    assert_eq!(files::path_name(".."), "_");
}
