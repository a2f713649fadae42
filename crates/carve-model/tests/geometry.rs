//! Geometry against an independent brute force, and property tests over every catalog GPU.

use carve_model::geometry::{self, check, counts_of, fit, free_starts, Instance};
use carve_model::{Attribute, Catalog, GpuModel};
use proptest::prelude::*;
use std::collections::HashSet;
use std::sync::OnceLock;

fn catalog() -> &'static Catalog {
    static C: OnceLock<Catalog> = OnceLock::new();
    C.get_or_init(Catalog::embedded)
}

/// The rules written out a second time, as plainly as possible, to check `geometry::check`.
fn naive_valid(gpu: &GpuModel, layout: &[Instance]) -> bool {
    let mut slot_used = vec![false; gpu.memory_slots as usize];
    let mut per_profile = vec![0u32; gpu.profiles.len()];
    let mut compute = 0u32;
    for inst in layout {
        let p = &gpu.profiles[inst.profile];
        if !p.starts.contains(&inst.start) {
            return false;
        }
        for s in inst.start..inst.start + p.slots {
            let Some(cell) = slot_used.get_mut(s as usize) else {
                return false;
            };
            if *cell {
                return false;
            }
            *cell = true;
        }
        per_profile[inst.profile] += 1;
        compute += p.compute as u32;
    }
    if layout.len() > gpu.max_instances as usize || compute > gpu.compute_slices as u32 {
        return false;
    }
    if per_profile
        .iter()
        .zip(&gpu.profiles)
        .any(|(&n, p)| n > p.max as u32)
    {
        return false;
    }
    let attrs: Vec<Attribute> = layout
        .iter()
        .map(|i| gpu.profiles[i.profile].attribute())
        .collect();
    let media = attrs
        .iter()
        .filter(|a| matches!(a, Attribute::Me | Attribute::MeAll))
        .count();
    if media > 1 {
        return false;
    }
    if attrs.contains(&Attribute::MeAll)
        && attrs
            .iter()
            .any(|a| !matches!(a, Attribute::MeAll | Attribute::NoMe))
    {
        return false;
    }
    true
}

/// Every subset of (profile, start) candidates, pruned only where two placements overlap; each
/// leaf is judged by `naive_valid`. Returns the feasible profile multisets.
fn brute_force_multisets(gpu: &GpuModel) -> HashSet<Vec<u32>> {
    let cands: Vec<Instance> = gpu
        .profiles
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            p.starts
                .iter()
                .map(move |&start| Instance { profile: i, start })
        })
        .collect();
    fn rec(
        gpu: &GpuModel,
        cands: &[Instance],
        k: usize,
        occ: u64,
        cur: &mut Vec<Instance>,
        out: &mut HashSet<Vec<u32>>,
    ) {
        if k == cands.len() {
            if naive_valid(gpu, cur) {
                out.insert(counts_of(gpu, cur));
            }
            return;
        }
        rec(gpu, cands, k + 1, occ, cur, out);
        let c = cands[k];
        let p = &gpu.profiles[c.profile];
        let mask = ((1u64 << p.slots) - 1) << c.start;
        if occ & mask == 0 {
            cur.push(c);
            rec(gpu, cands, k + 1, occ | mask, cur, out);
            cur.pop();
        }
    }
    let mut out = HashSet::new();
    rec(gpu, &cands, 0, 0, &mut Vec::new(), &mut out);
    out
}

/// Every multiset with each profile between 0 and its max.
fn all_multisets(gpu: &GpuModel) -> Vec<Vec<u32>> {
    let mut out = vec![vec![]];
    for p in &gpu.profiles {
        out = out
            .into_iter()
            .flat_map(|prefix: Vec<u32>| {
                (0..=p.max as u32).map(move |n| {
                    let mut v = prefix.clone();
                    v.push(n);
                    v
                })
            })
            .collect();
    }
    out
}

fn models_for_exhaustive_check() -> Vec<&'static GpuModel> {
    catalog()
        .gpus
        .iter()
        .filter(|g| g.memory_slots == 8 || g.key == "A30-24GB" || g.key == "RTX-PRO-6000")
        .collect()
}

#[test]
fn fit_agrees_with_brute_force_on_every_multiset() {
    let models = models_for_exhaustive_check();
    assert!(models.len() >= 10, "only {} models checked", models.len());
    assert!(models.iter().any(|g| g.key == "A30-24GB"));
    assert!(models.iter().any(|g| g.key == "RTX-PRO-6000"));
    for gpu in models {
        let feasible = brute_force_multisets(gpu);
        let mut checked = 0;
        for counts in all_multisets(gpu) {
            let got = fit(gpu, &counts, &[]);
            assert_eq!(
                got.is_ok(),
                feasible.contains(&counts),
                "{}: fit disagrees with brute force on {} ({:?})",
                gpu.key,
                geometry::describe_counts(gpu, &counts),
                got
            );
            if let Ok(layout) = got {
                assert!(naive_valid(gpu, &layout));
                assert_eq!(counts_of(gpu, &layout), counts);
            }
            checked += 1;
        }
        assert!(checked > 100, "{}: {checked}", gpu.key);
    }
}

#[test]
fn enumerate_agrees_with_brute_force() {
    for gpu in models_for_exhaustive_check() {
        let layouts = geometry::enumerate(gpu);
        for l in &layouts {
            assert!(naive_valid(gpu, l), "{}: {l:?}", gpu.key);
        }
        let distinct: HashSet<Vec<Instance>> = layouts.iter().cloned().collect();
        assert_eq!(distinct.len(), layouts.len(), "{}: duplicates", gpu.key);
        let multisets: HashSet<Vec<u32>> = layouts.iter().map(|l| counts_of(gpu, l)).collect();
        assert_eq!(multisets, brute_force_multisets(gpu), "{}", gpu.key);
    }
}

#[test]
fn known_facts_about_h100() {
    let gpu = catalog().gpu("H100-80GB").unwrap();
    let idx = |n: &str| gpu.profile_index(n).unwrap();
    let mut c = vec![0; gpu.profiles.len()];
    c[idx("3g.40gb")] = 3;
    let e = fit(gpu, &c, &[]).unwrap_err().to_string();
    assert!(
        e.contains("3g.40gb x3 needs 9 compute slices, 7 available"),
        "{e}"
    );
    let mut c = vec![0; gpu.profiles.len()];
    c[idx("1g.20gb")] = 5;
    let e = fit(gpu, &c, &[]).unwrap_err().to_string();
    assert!(e.contains("needs 10 memory slots, 8 available"), "{e}");
    let mut c = vec![0; gpu.profiles.len()];
    c[idx("1g.10gb+me")] = 2;
    let e = fit(gpu, &c, &[]).unwrap_err().to_string();
    assert!(
        e.contains("exceeds the limit of 1 1g.10gb+me instance per GPU"),
        "{e}"
    );
    // mig-parted's all-balanced fits.
    let mut c = vec![0; gpu.profiles.len()];
    c[idx("1g.10gb")] = 2;
    c[idx("2g.20gb")] = 1;
    c[idx("3g.40gb")] = 1;
    assert!(fit(gpu, &c, &[]).is_ok());
    // Seven 1g instances leave slot 7 unused, and nothing else fits.
    let mut c = vec![0; gpu.profiles.len()];
    c[idx("1g.10gb")] = 7;
    let l = fit(gpu, &c, &[]).unwrap();
    for p in 0..gpu.profiles.len() {
        assert!(
            free_starts(gpu, &l, p).is_empty(),
            "{}",
            gpu.profiles[p].name
        );
    }
    // 4g.40gb + 2g.20gb x2: compute 8 > 7.
    let mut c = vec![0; gpu.profiles.len()];
    c[idx("4g.40gb")] = 1;
    c[idx("2g.20gb")] = 2;
    let e = fit(gpu, &c, &[]).unwrap_err().to_string();
    assert!(e.contains("needs 8 compute slices, 7 available"), "{e}");
    // A 3g at 4 leaves 2g starts 0 and 2 only.
    let existing = [Instance {
        profile: idx("3g.40gb"),
        start: 4,
    }];
    assert_eq!(free_starts(gpu, &existing, idx("2g.20gb")), vec![0, 2]);
    assert_eq!(free_starts(gpu, &existing, idx("1g.20gb")), vec![0, 2]);
}

#[test]
fn a_placement_only_infeasibility_is_proved_by_search() {
    // With a 1g.10gb at slot 1, three 2g.20gb pass every count rule (compute 7, slots 7) but the
    // 2g instances can start only at 0, 2 and 4, and slot 1 blocks 0.
    let gpu = catalog().gpu("H100-80GB").unwrap();
    let idx = |n: &str| gpu.profile_index(n).unwrap();
    let existing = [Instance {
        profile: idx("1g.10gb"),
        start: 1,
    }];
    let mut c = vec![0; gpu.profiles.len()];
    c[idx("2g.20gb")] = 3;
    match fit(gpu, &c, &existing) {
        Err(geometry::Infeasible::NoPlacement { explored, .. }) => assert!(explored > 0),
        other => panic!("expected a placement proof, got {other:?}"),
    }
    // Two 2g.20gb still fit around it.
    c[idx("2g.20gb")] = 2;
    assert_eq!(
        fit(gpu, &c, &existing).unwrap()[1..]
            .iter()
            .map(|i| i.start)
            .collect::<Vec<_>>(),
        vec![2, 4]
    );
}

#[test]
fn rtx_pro_6000_media_rules() {
    let gpu = catalog().gpu("RTX-PRO-6000").unwrap();
    let idx = |n: &str| gpu.profile_index(n).unwrap();
    let mut c = vec![0; gpu.profiles.len()];
    c[idx("1g.24gb+me.all")] = 1;
    c[idx("1g.24gb-me")] = 3;
    assert!(fit(gpu, &c, &[]).is_ok());
    c[idx("1g.24gb-me")] = 2;
    c[idx("1g.24gb")] = 1;
    let e = fit(gpu, &c, &[]).unwrap_err().to_string();
    assert!(e.contains("only -me profiles"), "{e}");
    let mut c = vec![0; gpu.profiles.len()];
    c[idx("1g.24gb+me")] = 1;
    c[idx("2g.48gb+me.all")] = 1;
    let e = fit(gpu, &c, &[]).unwrap_err().to_string();
    assert!(e.contains("only one media-extended"), "{e}");
}

fn gpu_and_counts() -> impl Strategy<Value = (usize, Vec<u32>)> {
    let n = catalog().gpus.len();
    (0..n).prop_flat_map(|g| {
        let gpu = &catalog().gpus[g];
        let per: Vec<_> = gpu
            .profiles
            .iter()
            .map(|p| 0..=(p.max as u32 + 1))
            .collect();
        (Just(g), per)
    })
}

fn gpu_and_instances() -> impl Strategy<Value = (usize, Vec<Instance>)> {
    let n = catalog().gpus.len();
    (0..n).prop_flat_map(|g| {
        let gpu = &catalog().gpus[g];
        let inst = (0..gpu.profiles.len(), 0..gpu.memory_slots)
            .prop_map(|(profile, start)| Instance { profile, start });
        (Just(g), proptest::collection::vec(inst, 0..6))
    })
}

/// A valid layout of some GPU, drawn from the full enumeration.
fn gpu_and_valid_layout() -> impl Strategy<Value = (usize, Vec<Instance>)> {
    static ALL: OnceLock<Vec<Vec<Vec<Instance>>>> = OnceLock::new();
    let all = ALL.get_or_init(|| catalog().gpus.iter().map(geometry::enumerate).collect());
    let n = catalog().gpus.len();
    (0..n, any::<prop::sample::Index>()).prop_map(move |(g, i)| (g, i.get(&all[g]).clone()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_fit_is_valid((g, counts) in gpu_and_counts()) {
        let gpu = &catalog().gpus[g];
        if let Ok(layout) = fit(gpu, &counts, &[]) {
            prop_assert!(check(gpu, &layout).is_ok());
            prop_assert!(naive_valid(gpu, &layout));
            prop_assert_eq!(counts_of(gpu, &layout), counts);
        }
    }

    #[test]
    fn check_agrees_with_naive_rules((g, layout) in gpu_and_instances()) {
        let gpu = &catalog().gpus[g];
        prop_assert_eq!(check(gpu, &layout).is_ok(), naive_valid(gpu, &layout), "{:?}", layout);
    }

    #[test]
    fn fit_keeps_existing_instances((g, layout) in gpu_and_valid_layout(), extra in 0usize..32) {
        let gpu = &catalog().gpus[g];
        let mut counts = vec![0; gpu.profiles.len()];
        counts[extra % gpu.profiles.len()] = 1;
        match fit(gpu, &counts, &layout) {
            Ok(out) => {
                prop_assert_eq!(&out[..layout.len()], &layout[..]);
                prop_assert!(naive_valid(gpu, &out));
            }
            // Then no free start exists for that profile.
            Err(_) => prop_assert!(free_starts(gpu, &layout, extra % gpu.profiles.len()).is_empty()),
        }
    }

    #[test]
    fn free_starts_are_exactly_the_valid_ones((g, layout) in gpu_and_valid_layout(), p in 0usize..32) {
        let gpu = &catalog().gpus[g];
        let p = p % gpu.profiles.len();
        let free = free_starts(gpu, &layout, p);
        for &s in &gpu.profiles[p].starts {
            let mut with = layout.clone();
            with.push(Instance { profile: p, start: s });
            prop_assert_eq!(free.contains(&s), naive_valid(gpu, &with));
        }
    }
}
