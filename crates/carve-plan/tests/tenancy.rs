//! Reading a tenancy file: errors lead with their cause. A misspelt profile is reported at the
//! profile, first, and not again as a missing `memory_gb` (the tenant has a `profile`).

use carve_model::Catalog;

fn errors(text: &str) -> Vec<String> {
    match carve_plan::parse(text, &Catalog::embedded()) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn a_profile_typo_is_the_first_and_only_error_of_its_tenant() {
    for tenant in [
        "  - name: x\n    workload: inference\n    profile: 1g.5gb\n",
        "  - name: x\n    profile: 1g.5gb\n    workload: inference\n",
        "  - name: x\n    workload: inference\n    profile: 1g.5gb\n    replicas: 2\n",
    ] {
        let text = format!("fleet:\n  - node: a\n    gpus: [H100-80GB]\ntenants:\n{tenant}");
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].contains("unknown MIG profile `1g.5gb`"), "{e:#?}");
        assert!(e[0].contains("did you mean `1g.10gb`"), "{e:#?}");
    }
    // With another tenant's error before it, errors stay in file order, each at its place.
    let text = "fleet:\n  - node: a\n    gpus: [H100-80GB]\ntenants:\n  - name: y\n    workload: inferense\n    memory_gb: 10\n  - name: x\n    workload: inference\n    profile: 1g.5gb\n";
    let e = errors(text);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with("6:") && e[0].contains("inference"),
        "{e:#?}"
    );
    assert!(e[1].starts_with("10:") && e[1].contains("1g.5gb"), "{e:#?}");
}

#[test]
fn neither_memory_nor_profile_is_still_an_error() {
    let text =
        "fleet:\n  - node: a\n    gpus: [H100-80GB]\ntenants:\n  - name: x\n    workload: inference\n";
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].contains("needs `memory_gb` (per replica) or a `profile`"),
        "{e:#?}"
    );
}
