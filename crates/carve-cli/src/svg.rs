//! SVG pictures of layouts: one row per layout, one column per memory slot.

use carve_model::geometry::Instance;
use carve_model::GpuModel;
use std::fmt::Write;

const SLOT_W: usize = 64;
const ROW_H: usize = 34;
const GAP: usize = 10;
const LEFT: usize = 12;
const TOP: usize = 46;

/// Width of a character of the 12 px sans-serif labels, generously (digits and `g` are ~6.7 px).
const CHAR_W: usize = 7;
/// Line height of a two-line label.
const LINE_H: usize = 12;

/// A profile's label for a box `room` pixels wide: one line when it fits; else the name and its
/// attribute on two lines (`1g.10gb` over `+me`); a line still too wide is squeezed to `room`
/// (`Some(width)`, for `textLength`). Labels never run into the next box.
fn label_lines(name: &str, room: usize) -> Vec<(String, Option<usize>)> {
    let fits = |t: &str| t.chars().count() * CHAR_W <= room;
    if fits(name) {
        return vec![(name.to_string(), None)];
    }
    let parts: Vec<&str> = match name.find(['+', '-']) {
        Some(i) if i > 0 => vec![&name[..i], &name[i..]],
        _ => vec![name],
    };
    parts
        .into_iter()
        .map(|t| (t.to_string(), (!fits(t)).then_some(room)))
        .collect()
}

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
            let lines = label_lines(&p.name, w - 6);
            let n = lines.len();
            for (i, (line, squeeze)) in lines.iter().enumerate() {
                // One line centred; two lines (name, then attribute) around the middle.
                let baseline = y + ROW_H / 2 + 4 + i * LINE_H - (n - 1) * LINE_H / 2;
                let fit = squeeze
                    .map(|l| format!(r#" textLength="{l}" lengthAdjust="spacingAndGlyphs""#))
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{baseline}" text-anchor="middle"{fit}{}>{}</text>"#,
                    x + w / 2,
                    if n > 1 { r#" font-size="11""# } else { "" },
                    escape(line)
                );
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_fit_their_boxes() {
        // One slot is 64 px: `1g.10gb` fits, `1g.10gb+me` goes on two lines.
        assert_eq!(
            label_lines("1g.10gb", SLOT_W - 6),
            vec![("1g.10gb".into(), None)]
        );
        assert_eq!(
            label_lines("1g.10gb+me", SLOT_W - 6),
            vec![("1g.10gb".into(), None), ("+me".into(), None)]
        );
        assert_eq!(
            label_lines("1g.20gb-me", SLOT_W - 6),
            vec![("1g.20gb".into(), None), ("-me".into(), None)]
        );
        // Too long even so: squeezed into the box.
        assert_eq!(
            label_lines("1c.1g.12gb+me.all", 40),
            vec![
                ("1c.1g.12gb".into(), Some(40)),
                ("+me.all".into(), Some(40))
            ]
        );
        assert_eq!(label_lines("7g.80gb", 440), vec![("7g.80gb".into(), None)]);
    }

    #[test]
    fn every_catalog_label_fits_its_box() {
        let catalog = carve_model::Catalog::embedded();
        for gpu in &catalog.gpus {
            for p in &gpu.profiles {
                let room = p.slots as usize * SLOT_W - 6;
                for (line, squeeze) in label_lines(&p.name, room) {
                    let w = squeeze.unwrap_or(line.chars().count() * CHAR_W);
                    assert!(
                        w <= room,
                        "{} {}: {line} is {w} px in {room}",
                        gpu.key,
                        p.name
                    );
                }
            }
        }
    }
}
