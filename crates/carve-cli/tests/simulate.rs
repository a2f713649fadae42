//! `carve simulate` through the real binary: every tenant under every mode, JSON and files, a
//! noisy neighbour visible, bad input exits 2.

use carve_test_support::cli::{carve, success_json};
use carve_test_support::fresh_dir;
use serde_json::Value;
use std::path::PathBuf;

fn temp(tag: &str) -> PathBuf {
    fresh_dir(&format!("carve-simulate-cli-{tag}"))
}

const NOISY: &str = r#"fleet:
  - node: a
    gpus: [2xH100-80GB]
tenants:
  - name: api
    workload: inference
    memory_gb: 10
    p95_ms: 30
    load: {arrival: poisson, rate: 40, work_ms: 2, service: exponential, memory_bound: 0.2}
  - name: trainer
    workload: training
    memory_gb: 30
    load: {arrival: closed, clients: 4, think_ms: 0, work_ms: 30, service: deterministic}
"#;

#[test]
fn every_tenant_under_every_mode() {
    let d = temp("modes");
    let f = d.join("t.yaml");
    std::fs::write(&f, NOISY).unwrap();
    let out = carve()
        .args(["simulate", "--duration", "2m", "--json", "--out"])
        .arg(d.join("o"))
        .arg(&f)
        .output()
        .unwrap();
    let v = success_json(&out);
    let ts = v["tenants"].as_array().unwrap();
    assert_eq!(ts.len(), 2);
    for t in ts {
        for m in ["as planned", "time-sliced", "mig", "mig+time-sliced"] {
            let r = &t["by_mode"][m];
            assert!(r["p95_ms"].as_f64().unwrap() > 0.0, "{m}: {t:#}");
            assert!(r["p99_ms"].as_f64().unwrap() >= r["p95_ms"].as_f64().unwrap());
        }
    }
    assert_eq!(ts[0]["slo_p95_ms"], 30.0);
    // Time-sliced, the trainer shares the API's GPU: the API's p95 is worse than alone.
    let alone = d.join("alone.yaml");
    let cut = NOISY.find("  - name: trainer").unwrap();
    std::fs::write(&alone, &NOISY[..cut]).unwrap();
    let a: Value = serde_json::from_slice(
        &carve()
            .args(["simulate", "--duration", "2m", "--json"])
            .arg(&alone)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let with = ts[0]["by_mode"]["time-sliced"]["p95_ms"].as_f64().unwrap();
    let without = a["tenants"][0]["by_mode"]["time-sliced"]["p95_ms"]
        .as_f64()
        .unwrap();
    assert!(
        with > 1.5 * without,
        "noisy neighbour: {with} vs alone {without}"
    );
    // On a MIG slice the neighbour changes nothing (same seed, its own hardware).
    let m_with = ts[0]["by_mode"]["mig"]["p95_ms"].as_f64().unwrap();
    let m_without = a["tenants"][0]["by_mode"]["mig"]["p95_ms"]
        .as_f64()
        .unwrap();
    assert!(
        (m_with - m_without).abs() / m_without < 0.15,
        "{m_with} vs {m_without}"
    );
    assert!(std::fs::read_to_string(d.join("o/latency-cdf.svg"))
        .unwrap()
        .starts_with("<svg"));
    assert!(d.join("o/simulation.json").exists());
    // Same seed, same answer.
    let again = carve()
        .args(["simulate", "--duration", "2m", "--json"])
        .arg(&f)
        .output()
        .unwrap();
    let w: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(v["tenants"], w["tenants"]);
}

#[test]
fn bad_input_exits_2() {
    let d = temp("bad");
    let f = d.join("t.yaml");
    std::fs::write(&f, NOISY).unwrap();
    carve()
        .args(["simulate", "--duration", "soon"])
        .arg(&f)
        .assert()
        .code(2);
    carve()
        .args(["simulate", "--duration", "-5m"])
        .arg(&f)
        .assert()
        .code(2);
    std::fs::write(&f, NOISY.replace("arrival: poisson", "arrival: poison")).unwrap();
    let out = carve().arg("simulate").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `poisson`"));
    std::fs::write(&f, NOISY.replace("work_ms: 2,", "work_ms: 0,")).unwrap();
    carve().arg("simulate").arg(&f).assert().code(2);
}
