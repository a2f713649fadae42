//! The planner against an independent brute force: on random transitions between valid layouts,
//! carve keeps the most instances any valid target could keep, issues exactly one destroy per
//! removed and one create per added GPU/compute instance, and ends in the desired layout.

use carve_apply::{choose_layout, diff, observe, run_op, GpuTarget, LayoutError, Op};
use carve_backend::engine::InMemory;
use carve_backend::Backend;
use carve_model::geometry::{self, counts_of, Instance};
use carve_model::{Catalog, GpuModel};
use proptest::prelude::*;
use std::sync::OnceLock;

struct Fixture {
    catalog: Catalog,
    /// For H100-80GB, A30-24GB and RTX-PRO-6000: every placed layout.
    layouts: Vec<(String, Vec<Vec<Instance>>)>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let catalog = Catalog::embedded();
        let layouts = ["H100-80GB", "A30-24GB", "RTX-PRO-6000"]
            .iter()
            .map(|k| {
                let g = catalog.gpu(k).unwrap();
                (k.to_string(), geometry::enumerate(g))
            })
            .collect();
        Fixture { catalog, layouts }
    })
}

/// Builds a one-GPU in-memory node holding `layout` (full compute instances).
fn node_with(model: &GpuModel, layout: &[Instance]) -> InMemory {
    let mut b = InMemory::new(fixture().catalog.clone(), &[model], 7);
    for inst in layout {
        let p = &model.profiles[inst.profile];
        let gi = b.create_gpu_instance(0, p.nvml, inst.start).unwrap();
        b.create_compute_instance(0, gi, p.compute).unwrap();
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn keeps_the_most_and_issues_nothing_extra(
        m in 0usize..3,
        a in any::<prop::sample::Index>(),
        b in any::<prop::sample::Index>(),
    ) {
        let fx = fixture();
        let (key, layouts) = &fx.layouts[m];
        let model = fx.catalog.gpu(key).unwrap();
        let from = a.get(layouts).clone();
        let to = b.get(layouts).clone();
        let want = counts_of(model, &to);

        // Independent brute force: the best overlap any placed layout with the wanted counts has
        // with the current one.
        let best = layouts
            .iter()
            .filter(|l| counts_of(model, l) == want)
            .map(|l| l.iter().filter(|i| from.contains(i)).count())
            .max()
            .unwrap();

        let mut backend = node_with(model, &from);
        let observed = observe(&mut backend, &fx.catalog).unwrap();
        let items: Vec<(usize, u8)> = to
            .iter()
            .map(|i| (i.profile, model.profiles[i.profile].compute))
            .collect();
        let target = choose_layout(model, &observed[0].gpu_instances(), &items).unwrap();
        let targets = vec![GpuTarget {
            gpu_uuid: observed[0].info.uuid.clone(),
            gpu_index: 0,
            model: model.key.clone(),
            mig_enabled: true,
            instances: target,
        }];
        let plan = diff(&observed, &targets).unwrap();
        let kept = plan.kept.len();
        prop_assert_eq!(kept, best, "kept {} of a possible {}", kept, best);
        let destroys = plan.ops.iter().filter(|o| matches!(o, Op::DestroyGpuInstance { .. })).count();
        let creates = plan.ops.iter().filter(|o| matches!(o, Op::CreateGpuInstance { .. })).count();
        prop_assert_eq!(destroys, from.len() - kept);
        prop_assert_eq!(creates, to.len() - kept);
        // One compute instance per GPU instance on both sides: 2 calls per change.
        prop_assert_eq!(plan.ops.len(), 2 * (destroys + creates));

        let before: Vec<String> = observed[0]
            .instances
            .iter()
            .flat_map(|gi| gi.compute_instances.iter().map(|c| c.uuid.clone()))
            .collect();
        for op in &plan.ops {
            run_op(&mut backend, op).unwrap();
        }
        let after = observe(&mut backend, &fx.catalog).unwrap();
        let placed: Vec<Instance> = after[0]
            .instances
            .iter()
            .map(|gi| Instance {
                profile: model.profile_index_by_nvml(gi.profile).unwrap(),
                start: gi.start,
            })
            .collect();
        prop_assert_eq!(counts_of(model, &placed), want);
        let uuids: Vec<String> = after[0]
            .instances
            .iter()
            .flat_map(|gi| gi.compute_instances.iter().map(|c| c.uuid.clone()))
            .collect();
        for k in &plan.kept {
            prop_assert!(before.contains(k) && uuids.contains(k));
        }
        // And from there, nothing more to do.
        prop_assert!(diff(&after, &targets).unwrap().ops.is_empty());
    }
}

#[test]
fn busy_instances_win_ties() {
    // 1g.10gb at 0..6 with the one at 5 busy; wanting 2g.20gb x3 + 1g.10gb: only one 1g can stay,
    // and it must be the busy one — which forces 2g.20gb to 0, 2 and... 5 is not a 2g start, so
    // the busy 1g at 5 cannot stay with three 2g (starts 0,2,4 take slots 0-5). Wanting
    // 2g.20gb x2 + 1g.10gb x3 instead, the busy one stays.
    let fx = fixture();
    let model = fx.catalog.gpu("H100-80GB").unwrap();
    let one = model.profile_index("1g.10gb").unwrap();
    let two = model.profile_index("2g.20gb").unwrap();
    let from: Vec<Instance> = (0..7)
        .map(|s| Instance {
            profile: one,
            start: s,
        })
        .collect();
    let mut backend = node_with(model, &from);
    let uuid = backend.gpu_instances(0).unwrap()[5].compute_instances[0]
        .uuid
        .clone();
    backend
        .node
        .set_busy(
            &uuid,
            Some(carve_backend::Process {
                pid: 1,
                name: "job".into(),
            }),
        )
        .unwrap();
    let observed = observe(&mut backend, &fx.catalog).unwrap();
    let items = vec![(two, 2), (two, 2), (one, 1), (one, 1), (one, 1)];
    let target = choose_layout(model, &observed[0].gpu_instances(), &items).unwrap();
    assert!(
        target
            .iter()
            .any(|t| t.profile == "1g.10gb" && t.start == 5),
        "{target:?}"
    );
}

#[test]
fn a_layout_that_cannot_fit_says_why_in_the_models_words() {
    let fx = fixture();
    let model = fx.catalog.gpu("H100-80GB").unwrap();
    let three = model.profile_index("3g.40gb").unwrap();
    let mut backend = node_with(model, &[]);
    let observed = observe(&mut backend, &fx.catalog).unwrap();
    let items = vec![(three, 3); 3];
    let e = choose_layout(model, &observed[0].gpu_instances(), &items).unwrap_err();
    assert!(
        matches!(
            e,
            LayoutError::Infeasible {
                reason: geometry::Infeasible::Rule(_),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "3g.40gb x3 needs 9 compute slices, H100-80GB has 7"
    );
}
