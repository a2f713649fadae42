//! SVG pictures of layouts: one row per layout, one column per memory slot.

use carve_model::geometry::Instance;
use carve_model::GpuModel;
use std::fmt::Write;

const SLOT_W: usize = 64;
const ROW_H: usize = 34;
const GAP: usize = 10;
const LEFT: usize = 12;
const TOP: usize = 46;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Fill colour by compute slices, so equal-size instances look alike across rows.
fn colour(compute: u8) -> &'static str {
    match compute {
        1 => "#8ecae6",
        2 => "#90be6d",
        3 => "#f9c74f",
        4 => "#f8961e",
        _ => "#f3722c",
    }
}

/// Draws `rows` (label, layout) for one GPU model.
pub fn layouts(gpu: &GpuModel, rows: &[(String, Vec<Instance>)]) -> String {
    let grid_w = SLOT_W * gpu.memory_slots as usize;
    let label_w = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0)
        * 8
        + 24;
    let width = LEFT + grid_w + GAP + label_w.max(200);
    let height = TOP + rows.len() * (ROW_H + 6) + 12;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{} — {} compute slices, {} memory slots</text>"#,
        escape(&gpu.key),
        gpu.compute_slices,
        gpu.memory_slots
    );
    for slot in 0..gpu.memory_slots as usize {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">{slot}</text>"##,
            LEFT + slot * SLOT_W + SLOT_W / 2,
            TOP - 8
        );
    }
    for (r, (label, layout)) in rows.iter().enumerate() {
        let y = TOP + r * (ROW_H + 6);
        for slot in 0..gpu.memory_slots as usize {
            let _ = writeln!(
                s,
                r##"<rect x="{}" y="{y}" width="{SLOT_W}" height="{ROW_H}" fill="#f4f4f4" stroke="#ccc"/>"##,
                LEFT + slot * SLOT_W
            );
        }
        for inst in layout {
            let p = &gpu.profiles[inst.profile];
            let x = LEFT + inst.start as usize * SLOT_W;
            let w = p.slots as usize * SLOT_W;
            let _ = writeln!(
                s,
                r##"<rect x="{}" y="{}" width="{}" height="{}" rx="4" fill="{}" stroke="#333"><title>{} at {}:{}</title></rect>"##,
                x + 1,
                y + 1,
                w - 2,
                ROW_H - 2,
                colour(p.compute),
                escape(&p.name),
                inst.start,
                p.slots
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                x + w / 2,
                y + ROW_H / 2 + 4,
                escape(&p.name)
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" fill="#333">{}</text>"##,
            LEFT + grid_w + GAP,
            y + ROW_H / 2 + 4,
            escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}
