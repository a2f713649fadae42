//! Parsing and checking never panic, whatever the input; errors always carry a position.

use carve_migparted::{check, parse};
use carve_model::Catalog;
use proptest::prelude::*;
use std::sync::OnceLock;

fn catalog() -> &'static Catalog {
    static C: OnceLock<Catalog> = OnceLock::new();
    C.get_or_init(Catalog::embedded)
}

const GOOD: &str = "version: v1\nmig-configs:\n  a:\n    - device-filter: [\"0x233010DE\"]\n      devices: all\n      mig-enabled: true\n      mig-devices:\n        \"1g.10gb\": 2\n        \"1c.3g.40gb\": 1\n    - devices: [0, 1]\n      mig-enabled: false\n";

fn run(text: &str) {
    match parse(text) {
        Err(diags) => {
            assert!(!diags.is_empty());
            assert!(diags.iter().all(|d| d.pos.line >= 1), "{diags:?}");
        }
        Ok((file, diags)) => {
            let r = check(&file, catalog(), None);
            for d in diags.iter().chain(&r.diagnostics) {
                assert!(d.pos.line >= 1, "{d:?}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        run(&text);
    }

    #[test]
    fn mutated_configs_never_panic(pos in 0usize..GOOD.len(), len in 0usize..8, insert in "[ :\\-\\[\\]{}\"0-9a-z\n]{0,6}") {
        let mut text = GOOD.to_string();
        let start = pos.min(text.len());
        let end = (start + len).min(text.len());
        text.replace_range(start..end, &insert);
        run(&text);
    }

    #[test]
    fn huge_counts_never_overflow(n in any::<u32>(), m in any::<u32>()) {
        let text = format!("version: v1\nmig-configs:\n  a:\n    - devices: all\n      mig-enabled: true\n      mig-devices:\n        \"3g.40gb\": {n}\n        \"1c.3g.40gb\": {m}\n");
        run(&text);
    }
}
