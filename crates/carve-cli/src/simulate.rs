//! `carve simulate`: each tenant's latency under every sharing mode, before anyone repartitions.

use crate::input::read_input;
use crate::output::{table, Failure, Out};
use carve_model::Catalog;
use carve_simulate::scenario::{self, Report, MODES};
use std::fmt::Write;
use std::path::Path;

pub fn simulate_cmd(
    catalog: &Catalog,
    file: &Path,
    plan_file: Option<&Path>,
    duration: &str,
    seed: u64,
    out: Option<&Path>,
    json: bool,
) -> Result<Out, Failure> {
    let duration_s =
        crate::input::parse_duration(duration, "--duration", 7.0 * 86400.0)?.as_secs_f64();
    let tenancy = crate::input::load_tenancy(catalog, file)?;
    let plan = match plan_file {
        Some(p) => carve_plan::Plan::from_json(&read_input(p)?)
            .map_err(|e| Failure::bad(format!("{}:{e}", p.display())))?,
        None => carve_plan::plan(&tenancy, catalog),
    };
    // The output folder before the simulation, which may take a while.
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::failed(format!("cannot create {}: {e}", dir.display())))?;
    }
    let report = scenario::run(&tenancy, &plan, catalog, duration_s, seed, |m| {
        if !json {
            eprintln!("carve: simulating {duration_s} s under {m}…");
        }
    })
    .map_err(|e| Failure::bad(format!("{}: {e}", plan_file.unwrap_or(file).display())))?;
    if let Some(dir) = out {
        let mut j = serde_json::to_string_pretty(&report).expect("serialisable");
        j.push('\n');
        for (name, text) in [
            ("simulation.json", j),
            ("latency-cdf.svg", cdf_svg(&report)),
            ("gpu-timeline.svg", timeline_svg(&report)),
        ] {
            std::fs::write(dir.join(name), text).map_err(|e| {
                Failure::failed(format!("cannot write {}: {e}", dir.join(name).display()))
            })?;
        }
    }
    if json {
        return Ok(Out::json(&report, 0));
    }
    let mut rows = vec![{
        let mut h = vec!["TENANT".to_string(), "SLO".into()];
        for m in MODES {
            h.push(format!("{m} p50/p95/p99 ms"));
        }
        h.push("BEST".into());
        h
    }];
    for t in &report.tenants {
        let mut r = vec![
            t.name.clone(),
            t.slo_p95_ms
                .map(|x| format!("p95≤{x}"))
                .unwrap_or_else(|| "—".into()),
        ];
        for m in MODES {
            r.push(match t.by_mode.get(m) {
                Some(x) => {
                    let mut c = format!("{:.1}/{:.1}/{:.1}", x.p50_ms, x.p95_ms, x.p99_ms);
                    if let Some(slo) = t.slo_p95_ms {
                        c.push_str(if x.p95_ms <= slo { " ✓" } else { " ✗" });
                    }
                    if let Some(o) = t.offered_per_s {
                        if x.throughput_per_s < 0.95 * o {
                            let _ = write!(c, " (only {:.0}/{:.0} req/s)", x.throughput_per_s, o);
                        }
                    }
                    if t.best == m {
                        c.push_str(" *");
                    }
                    c
                }
                None => "—".into(),
            });
        }
        r.push(t.best.clone());
        rows.push(r);
    }
    let mut s = table(&rows);
    let fair: Vec<String> = report
        .fairness
        .iter()
        .map(|(m, f)| format!("{m} {f:.3}"))
        .collect();
    let _ = writeln!(
        s,
        "\n{} simulated s, seed {}, {} events. Jain's fairness (served/offered): {}. * best p95 per tenant.",
        report.duration_s,
        report.seed,
        report.events,
        fair.join(", ")
    );
    if let Some(dir) = out {
        let _ = writeln!(
            s,
            "wrote {0}/simulation.json, {0}/latency-cdf.svg and {0}/gpu-timeline.svg",
            dir.display()
        );
    }
    Ok(Out::ok(s))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Latency CDFs: one panel per tenant, one line per mode; x: latency in ms on a log scale, y: the
/// share of requests served within it.
pub fn cdf_svg(r: &Report) -> String {
    const W: f64 = 300.0;
    const H: f64 = 160.0;
    const PAD: f64 = 56.0;
    let colours = ["#4e79a7", "#e15759", "#59a14f", "#f28e2b"];
    let cols = 3usize;
    let rows = r.tenants.len().div_ceil(cols).max(1);
    let (tw, th) = (
        cols as f64 * (W + PAD) + PAD,
        rows as f64 * (H + PAD + 20.0) + 60.0,
    );
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{tw}" height="{th}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>"#
    );
    let _ = write!(
        s,
        r#"<text x="{PAD}" y="20" font-size="14" font-weight="bold">Latency CDF per tenant ({} simulated s)</text>"#,
        r.duration_s
    );
    for (k, m) in MODES.iter().enumerate() {
        let _ = write!(
            s,
            r#"<rect x="{}" y="30" width="12" height="12" fill="{}"/><text x="{}" y="40">{}</text>"#,
            PAD + k as f64 * 120.0,
            colours[k % colours.len()],
            PAD + k as f64 * 120.0 + 16.0,
            esc(m)
        );
    }
    for (i, t) in r.tenants.iter().enumerate() {
        let x0 = PAD + (i % cols) as f64 * (W + PAD);
        let y0 = 70.0 + (i / cols) as f64 * (H + PAD + 20.0);
        let all: Vec<f64> = t
            .by_mode
            .values()
            .flat_map(|x| x.cdf_ms.iter().copied())
            .filter(|v| *v > 0.0)
            .collect();
        let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(1e-3);
        let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
        let (llo, lhi) = (lo.log10().floor(), hi.log10().ceil());
        // From the decade below the fastest request (so that every tick has its own place).
        let xs = |v: f64| x0 + (v.max(10f64.powf(llo)).log10() - llo) / (lhi - llo).max(1e-9) * W;
        let _ = write!(
            s,
            r##"<text x="{x0}" y="{}" font-weight="bold">{}</text><rect x="{x0}" y="{y0}" width="{W}" height="{H}" fill="none" stroke="#999"/>"##,
            y0 - 4.0,
            esc(&t.name)
        );
        // Axes: the share of requests (y) and the latency (x), with their units.
        for (q, label) in [(0.0, "0%"), (0.5, "50%"), (1.0, "100%")] {
            let y = y0 + H - q * H;
            let _ = write!(
                s,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
                x0 + W,
                x0 - 6.0,
                y + 4.0
            );
        }
        let _ = write!(
            s,
            r##"<text transform="translate({:.1},{:.1}) rotate(-90)" text-anchor="middle" fill="#555">requests ≤ latency</text><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">latency, ms (log scale)</text>"##,
            x0 - 34.0,
            y0 + H / 2.0,
            x0 + W / 2.0,
            y0 + H + 26.0
        );
        let mut d = llo;
        while d <= lhi {
            let x = xs(10f64.powf(d));
            let _ = write!(
                s,
                r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                y0 + H,
                y0 + H + 12.0,
                10f64.powf(d)
            );
            d += 1.0;
        }
        for (k, m) in MODES.iter().enumerate() {
            let Some(x) = t.by_mode.get(*m) else { continue };
            let pts: Vec<String> = x
                .cdf_ms
                .iter()
                .enumerate()
                .map(|(q, v)| format!("{:.1},{:.1}", xs(*v), y0 + H - (q + 1) as f64 / 100.0 * H))
                .collect();
            if !pts.is_empty() {
                let _ = write!(
                    s,
                    r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"><title>{}: p95 {:.2} ms</title></polyline>"#,
                    colours[k % colours.len()],
                    pts.join(" "),
                    esc(m),
                    x.p95_ms
                );
            }
        }
        if let Some(slo) = t.slo_p95_ms {
            let x = xs(slo);
            let _ = write!(
                s,
                r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{}" stroke="#000" stroke-dasharray="4,3"><title>SLO p95 {slo} ms</title></line>"##,
                y0 + H
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// The first 100 ms of the first time-shared GPU of each mode: who held it when.
pub fn timeline_svg(r: &Report) -> String {
    const W: f64 = 900.0;
    const ROW: f64 = 22.0;
    const LEFT: f64 = 110.0;
    let palette = [
        "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
        "#9c755f", "#bab0ac",
    ];
    let names: Vec<&str> = r.tenants.iter().map(|t| t.name.as_str()).collect();
    let colour = |n: &str| palette[names.iter().position(|x| *x == n).unwrap_or(0) % palette.len()];
    let span_ms = carve_simulate::TIMELINE_NS as f64 / 1e6;
    let h = 70.0 + r.timelines.len() as f64 * (ROW + 30.0) + 20.0;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{h}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14" font-weight="bold">Who holds a time-shared GPU, first {span_ms} ms (one row per mode: its first time-shared GPU)</text>"#,
        LEFT + W + 36.0
    );
    if r.timelines.is_empty() {
        s.push_str(r#"<text x="10" y="50">No time-shared GPU in these modes.</text>"#);
    }
    for (k, (mode, tl)) in r.timelines.iter().enumerate() {
        let y = 50.0 + k as f64 * (ROW + 30.0);
        let _ = write!(
            s,
            r##"<text x="10" y="{:.1}">{}</text><rect x="{LEFT}" y="{y}" width="{W}" height="{ROW}" fill="#f4f4f4" stroke="#999"/>"##,
            y + 15.0,
            esc(mode)
        );
        let _ = write!(
            s,
            r##"<text x="{}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
            LEFT + W,
            y - 3.0,
            esc(&format!("node {}, GPU {} ({})", tl.node, tl.gpu, tl.model)),
        );
        for (t, a, b) in &tl.segments {
            let x = LEFT + a / span_ms * W;
            let w = ((b - a) / span_ms * W).max(0.5);
            let _ = write!(
                s,
                r#"<rect x="{x:.2}" y="{y}" width="{w:.2}" height="{ROW}" fill="{}"><title>{}: {a:.3}–{b:.3} ms</title></rect>"#,
                colour(t),
                esc(t)
            );
        }
        for ms in (0..=span_ms as u32).step_by(10) {
            let x = LEFT + ms as f64 / span_ms * W;
            let _ = write!(
                s,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{ms}</text>"#,
                y + ROW + 12.0
            );
        }
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" fill="#555">ms</text>"##,
            LEFT + W + 14.0,
            y + ROW + 12.0
        );
    }
    let ly = h - 14.0;
    for (i, n) in names.iter().enumerate() {
        let x = 10.0 + i as f64 * 90.0;
        let _ = write!(
            s,
            r#"<rect x="{x}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{ly}">{}</text>"#,
            ly - 9.0,
            colour(n),
            x + 13.0,
            esc(n)
        );
    }
    s.push_str("</svg>\n");
    s
}
