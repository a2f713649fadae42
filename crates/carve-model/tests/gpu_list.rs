//! The GPU list parser never panics, and `N x NAME` round-trips.

use carve_model::{split_count, Catalog, GpuListError, MAX_GPUS_PER_NODE};
use proptest::prelude::*;
use std::sync::OnceLock;

fn catalog() -> &'static Catalog {
    static C: OnceLock<Catalog> = OnceLock::new();
    C.get_or_init(Catalog::embedded)
}

/// A name as people write one: no comma, not itself starting with a count.
fn name() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9 ._+-]{0,20}".prop_map(|s| s.trim().to_string())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics(text in "\\PC{0,60}") {
        let _ = split_count(&text);
        let _ = catalog().gpu_list(&text);
    }

    #[test]
    fn counts_and_names_round_trip(
        n in 1..=MAX_GPUS_PER_NODE,
        name in name(),
        sep in prop::sample::select(vec!["x", " x ", "X", "x  ", " X"]),
    ) {
        let entry = format!("{n}{sep}{name}");
        prop_assert_eq!(split_count(&entry), Ok((n, name.as_str())));
        // A name alone counts once.
        if !name.is_empty() {
            prop_assert_eq!(split_count(&name), Ok((1, name.as_str())));
        }
    }

    #[test]
    fn counts_out_of_range_are_errors(n in prop_oneof![Just(0u64), (MAX_GPUS_PER_NODE as u64 + 1)..u64::MAX], name in name()) {
        let entry = format!("{n}x{name}");
        prop_assert!(split_count(&entry).is_err());
    }

    #[test]
    fn catalog_lists_round_trip(
        entries in prop::collection::vec((1u32..=8, prop::sample::select(vec!["H100-80GB", "A100-40GB", "A30-24GB"])), 1..6),
    ) {
        let spec: Vec<String> = entries.iter().map(|(n, k)| format!("{n}x{k}")).collect();
        let got = catalog().gpu_list(&spec.join(",")).unwrap();
        let keys: Vec<&str> = got.iter().map(|g| g.key.as_str()).collect();
        let want: Vec<&str> = entries
            .iter()
            .flat_map(|(n, k)| std::iter::repeat_n(*k, *n as usize))
            .collect();
        prop_assert_eq!(keys, want);
    }

    #[test]
    fn a_node_holds_at_most_the_limit(parts in prop::collection::vec(1..=MAX_GPUS_PER_NODE, 1..4)) {
        let spec: Vec<String> = parts.iter().map(|n| format!("{n}xH100-80GB")).collect();
        let total: u32 = parts.iter().sum();
        match catalog().gpu_list(&spec.join(",")) {
            Ok(l) => prop_assert!(total <= MAX_GPUS_PER_NODE && l.len() == total as usize),
            Err(e) => prop_assert!(total > MAX_GPUS_PER_NODE && e == GpuListError::TooMany),
        }
    }
}
