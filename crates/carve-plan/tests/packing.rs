//! MIG packing against an independent brute force: on one GPU model, the GPU count `pack` returns
//! is the true optimum, its layouts are valid, every replica is placed once, spread holds.

use carve_model::geometry::{self, Instance};
use carve_model::Catalog;
use carve_plan::pack::{pack, Demand, Placer, PoolGpu};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};

/// Every count vector over `profiles` that one GPU holds (checked by the geometry rules, not by
/// the combination list the planner uses).
fn gpu_loads(model: usize, profiles: &[usize], cat: &Catalog) -> Vec<Vec<u32>> {
    let g = &cat.gpus[model];
    let mut out = Vec::new();
    let mut v = vec![0u32; profiles.len()];
    fn rec(
        i: usize,
        v: &mut Vec<u32>,
        profiles: &[usize],
        g: &carve_model::GpuModel,
        out: &mut Vec<Vec<u32>>,
    ) {
        if i == profiles.len() {
            if v.iter().any(|&n| n > 0) {
                let mut counts = vec![0u32; g.profiles.len()];
                for (k, &p) in profiles.iter().enumerate() {
                    counts[p] = v[k];
                }
                if geometry::fit(g, &counts, &[]).is_ok() {
                    out.push(v.clone());
                }
            }
            return;
        }
        for n in 0..=g.profiles[profiles[i]].max as u32 {
            v[i] = n;
            rec(i + 1, v, profiles, g, out);
        }
        v[i] = 0;
    }
    rec(0, &mut v, profiles, g, &mut out);
    out
}

/// Fewest GPUs for a demand vector: memoised search over what is left.
fn brute(d: Vec<u32>, loads: &[Vec<u32>], memo: &mut HashMap<Vec<u32>, u32>) -> u32 {
    if d.iter().all(|&n| n == 0) {
        return 0;
    }
    if let Some(&v) = memo.get(&d) {
        return v;
    }
    // The first profile still wanted must be on some GPU: branch on loads that carry it.
    let first = d.iter().position(|&n| n > 0).unwrap();
    let mut best = u32::MAX;
    for l in loads.iter().filter(|l| l[first] > 0) {
        let rest: Vec<u32> = d.iter().zip(l).map(|(a, b)| a.saturating_sub(*b)).collect();
        best = best.min(1 + brute(rest, loads, memo));
    }
    memo.insert(d, best);
    best
}

fn check_outcome(cat: &Catalog, model: usize, demands: &[Demand], o: &carve_plan::pack::Outcome) {
    let g = &cat.gpus[model];
    let mut seen: BTreeMap<(usize, u32), usize> = BTreeMap::new();
    for (pos, given) in &o.gpus {
        let layout: Vec<Instance> = given.iter().map(|x| x.instance).collect();
        assert!(
            geometry::check(g, &layout).is_ok(),
            "invalid layout on GPU {pos}: {layout:?}"
        );
        for x in given {
            let d = demands.iter().find(|d| d.tenant == x.tenant).unwrap();
            assert_eq!(x.instance.profile, d.profiles[&model], "wrong profile");
            assert!(
                seen.insert((x.tenant, x.replica), *pos).is_none(),
                "placed twice"
            );
        }
    }
    for d in demands {
        let placed: Vec<usize> = (0..d.replicas)
            .filter_map(|r| seen.get(&(d.tenant, r)).copied())
            .collect();
        let unplaced = o
            .unplaced
            .iter()
            .find(|(t, _)| *t == d.tenant)
            .map_or(0, |x| x.1);
        assert_eq!(placed.len() as u32 + unplaced, d.replicas);
        if d.spread {
            let mut p = placed.clone();
            p.sort_unstable();
            p.dedup();
            assert_eq!(
                p.len(),
                placed.len(),
                "spread broken for tenant {}",
                d.tenant
            );
        }
    }
}

const PROFILES: [&str; 5] = ["1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn single_model_packing_is_optimal(counts in proptest::collection::vec(0u32..6, PROFILES.len())) {
        let cat = Catalog::embedded();
        let model = cat.gpus.iter().position(|g| g.key == "H100-80GB").unwrap();
        let g = &cat.gpus[model];
        let profiles: Vec<usize> = PROFILES.iter().map(|p| g.profile_index(p).unwrap()).collect();
        let demands: Vec<Demand> = counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| Demand {
                tenant: i,
                replicas: n,
                spread: false,
                profiles: [(model, profiles[i])].into_iter().collect(),
            })
            .collect();
        prop_assume!(!demands.is_empty());
        let pool: Vec<PoolGpu> = (0..40).map(|i| (i, model)).collect();
        let mut placer = Placer::new(&cat);
        let o = pack(&cat, &pool, &demands, &mut placer);
        check_outcome(&cat, model, &demands, &o);
        prop_assert!(o.unplaced.is_empty());
        let loads = gpu_loads(model, &profiles, &cat);
        let best = brute(counts.clone(), &loads, &mut HashMap::new());
        prop_assert_eq!(o.gpus.len() as u32, best, "counts {:?}", counts);
        prop_assert!(o.optimal);
        prop_assert_eq!(o.lower_bound, best);
    }

    #[test]
    fn spread_and_shortage_keep_every_rule(
        counts in proptest::collection::vec(0u32..5, 3),
        spread in proptest::collection::vec(any::<bool>(), 3),
        gpus in 1usize..5,
    ) {
        let cat = Catalog::embedded();
        let model = cat.gpus.iter().position(|g| g.key == "A100-40GB").unwrap();
        let g = &cat.gpus[model];
        let names = ["1g.5gb", "2g.10gb", "3g.20gb"];
        let demands: Vec<Demand> = counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| Demand {
                tenant: i,
                replicas: n,
                spread: spread[i],
                profiles: [(model, g.profile_index(names[i]).unwrap())].into_iter().collect(),
            })
            .collect();
        prop_assume!(!demands.is_empty());
        let pool: Vec<PoolGpu> = (0..gpus).map(|i| (i, model)).collect();
        let mut placer = Placer::new(&cat);
        let o = pack(&cat, &pool, &demands, &mut placer);
        check_outcome(&cat, model, &demands, &o);
        prop_assert!(o.gpus.len() <= gpus);
        // Spread needs at least as many GPUs as replicas.
        for d in &demands {
            if d.spread && o.unplaced.is_empty() {
                prop_assert!(o.gpus.len() as u32 >= d.replicas);
            }
        }
    }
}

/// When the solver gives up (no branch-and-bound node at all here), packing still places every
/// replica validly, first fit, and does not claim optimality.
#[test]
fn a_spent_node_budget_falls_back_to_first_fit() {
    let cat = Catalog::embedded();
    let model = cat.gpus.iter().position(|g| g.key == "H100-80GB").unwrap();
    let g = &cat.gpus[model];
    let demands: Vec<Demand> = PROFILES
        .iter()
        .enumerate()
        .map(|(i, p)| Demand {
            tenant: i,
            replicas: 3,
            spread: i == 0,
            profiles: [(model, g.profile_index(p).unwrap())].into_iter().collect(),
        })
        .collect();
    let pool: Vec<PoolGpu> = (0..40).map(|i| (i, model)).collect();
    let mut placer = Placer::new(&cat);
    let o = carve_plan::pack::pack_with_limit(&cat, &pool, &demands, &mut placer, 0);
    check_outcome(&cat, model, &demands, &o);
    assert!(o.unplaced.is_empty(), "{o:?}");
    assert!(!o.optimal);
    assert!(o.gpus.len() as u32 >= o.lower_bound);
}
