//! Golden test: the embedded catalog against the per-GPU profile tables of the MIG reference
//! (`shared/reference/mig.md`, §3). The reference is parsed here, independently of the catalog,
//! with a small markdown-table reader, and every row is compared field by field.
//!
//! Without the reference file the tests print a note and pass, except under CI (`$CI` set),
//! where a missing reference is an error.

use carve_model::{Catalog, GiProfile, GpuModel};
use std::collections::BTreeSet;

const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/reference/mig.md"
);

/// The reference text, or `None` (after a note) when it is absent outside CI.
fn reference() -> Option<String> {
    match std::fs::read_to_string(REFERENCE) {
        Ok(text) => Some(text),
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("the MIG reference {REFERENCE} cannot be read under CI: {e}");
            }
            eprintln!("note: skipping the reference-table checks: cannot read {REFERENCE}: {e}");
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A small markdown reader

/// The lines of the section whose heading starts with `### <number> `, up to the next heading.
fn section<'a>(text: &'a str, number: &str) -> Vec<&'a str> {
    let heading = format!("### {number} ");
    let mut lines = text.lines();
    assert!(
        lines.any(|l| l.starts_with(&heading)),
        "the reference has no section '### {number}'"
    );
    lines.take_while(|l| !l.starts_with('#')).collect()
}

/// The cells of one table row: split on '|', trimmed, without the outer empty cells.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim();
    let inner = inner.strip_prefix('|').unwrap_or(inner);
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    inner.split('|').map(|c| c.trim().to_string()).collect()
}

fn is_separator(row: &[String]) -> bool {
    row.iter()
        .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')))
}

/// A markdown table: its header cells and its body rows.
#[derive(Debug)]
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Index of the column whose header is `label`, or starts with `label (` (a qualified
    /// header such as `SM (SXM)`).
    fn column(&self, label: &str) -> Option<usize> {
        let qualified = format!("{label} (");
        self.header
            .iter()
            .position(|h| h == label || h.starts_with(&qualified))
    }

    fn require(&self, label: &str) -> usize {
        self.column(label)
            .unwrap_or_else(|| panic!("no column '{label}' in table {:?}", self.header))
    }
}

/// Every table of a section (consecutive lines that start with '|').
fn tables(lines: &[&str]) -> Vec<Table> {
    let mut out = Vec::new();
    let mut current: Vec<Vec<String>> = Vec::new();
    for line in lines.iter().chain(std::iter::once(&"")) {
        if line.trim_start().starts_with('|') {
            current.push(cells(line));
        } else if !current.is_empty() {
            let mut rows = std::mem::take(&mut current);
            let header = rows.remove(0);
            rows.retain(|r| !is_separator(r));
            out.push(Table { header, rows });
        }
    }
    out
}

/// The one table of a section that has a column `label`.
fn table_with(lines: &[&str], label: &str) -> Table {
    let mut found: Vec<Table> = tables(lines)
        .into_iter()
        .filter(|t| t.column(label).is_some())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one table with a '{label}' column, found {}",
        found.len()
    );
    found.remove(0)
}

fn unbold(s: &str) -> &str {
    s.trim()
        .trim_start_matches("**")
        .trim_end_matches("**")
        .trim()
}

fn number(s: &str, what: &str) -> u32 {
    unbold(s)
        .parse()
        .unwrap_or_else(|_| panic!("{what}: '{s}' is not a number"))
}

/// Placement starts: `0..6` (inclusive), `0,2,4,6` or `0`.
fn parse_starts(s: &str) -> Vec<u8> {
    let s = unbold(s);
    if let Some((a, b)) = s.split_once("..") {
        let (a, b): (u8, u8) = (a.trim().parse().unwrap(), b.trim().parse().unwrap());
        return (a..=b).collect();
    }
    s.split(',')
        .map(|x| {
            x.trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad start '{x}' in '{s}'"))
        })
        .collect()
}

/// The RTX form `{0,3,6,9}:3`: starts and size.
fn parse_placements(s: &str) -> (Vec<u8>, u8) {
    let (starts, size) = unbold(s)
        .split_once(':')
        .unwrap_or_else(|| panic!("bad placements '{s}'"));
    let starts = starts.trim().trim_start_matches('{').trim_end_matches('}');
    (parse_starts(starts), size.trim().parse().unwrap())
}

/// Engine counts `a/b/c` (the first word of the cell; notes after it are ignored).
fn parse_engines(s: &str) -> Vec<u8> {
    let first = unbold(s).split_whitespace().next().unwrap_or("");
    first
        .split('/')
        .map(|x| {
            x.parse()
                .unwrap_or_else(|_| panic!("bad engine count in '{s}'"))
        })
        .collect()
}

/// The `<G>` of a profile name `<G>g.<GB>gb…`.
fn gi_slices(name: &str) -> u8 {
    name.split_once('g')
        .and_then(|(g, _)| g.parse().ok())
        .unwrap_or_else(|| panic!("'{name}' is not a profile name"))
}

/// Removes parenthesised text, e.g. `1g.24gb ×2 (1/2 memory, 1/2 SM)` → `1g.24gb ×2 `.
fn strip_parens(s: &str) -> String {
    let mut depth = 0u32;
    s.chars()
        .filter(|&c| {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth = depth.saturating_sub(1);
                    return false;
                }
                _ => {}
            }
            depth == 0
        })
        .collect()
}

/// A list `1g.18gb ×7, 1g.18gb+me ×1, …` as (name, max) pairs.
fn parse_name_max_list(s: &str) -> Vec<(String, u8)> {
    strip_parens(s)
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (name, max) = item
                .split_once('×')
                .unwrap_or_else(|| panic!("'{item}' is not '<profile> ×<max>'"));
            let max = max.trim().trim_end_matches('.').trim();
            (
                name.trim().to_string(),
                max.parse()
                    .unwrap_or_else(|_| panic!("bad max in '{item}'")),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Comparison

/// Counts what was compared, so that a test that compares nothing fails.
#[derive(Default)]
struct Tally {
    rows: usize,
    fields: usize,
    failures: Vec<String>,
}

impl Tally {
    fn check<T: PartialEq + std::fmt::Debug>(
        &mut self,
        at: &str,
        what: &str,
        catalog: T,
        table: T,
    ) {
        self.fields += 1;
        if catalog != table {
            self.failures.push(format!(
                "{at}: {what}: catalog has {catalog:?}, the reference {table:?}"
            ));
        }
    }

    fn finish(self, expected_rows: usize) {
        assert!(
            self.failures.is_empty(),
            "{} mismatch(es) between the catalog and {REFERENCE}:\n  {}",
            self.failures.len(),
            self.failures.join("\n  ")
        );
        assert_eq!(
            self.rows, expected_rows,
            "compared {} reference rows, expected {expected_rows}",
            self.rows
        );
        eprintln!(
            "compared {} reference rows, {} fields",
            self.rows, self.fields
        );
    }
}

fn gpu<'a>(catalog: &'a Catalog, key: &str) -> &'a GpuModel {
    let g = catalog.gpu(key).unwrap_or_else(|e| panic!("catalog: {e}"));
    assert_eq!(g.key, key, "'{key}' resolves to another GPU");
    g
}

/// Compares the set of profile names of a GPU with the names of the reference.
fn check_name_set(tally: &mut Tally, g: &GpuModel, reference: &BTreeSet<String>) {
    let catalog: BTreeSet<String> = g.profiles.iter().map(|p| p.name.clone()).collect();
    let missing: Vec<&String> = reference.difference(&catalog).collect();
    let extra: Vec<&String> = catalog.difference(reference).collect();
    tally.fields += 1;
    if !missing.is_empty() || !extra.is_empty() {
        tally.failures.push(format!(
            "{}: profile names differ: missing from the catalog {missing:?}, not in the reference {extra:?}",
            g.key
        ));
    }
}

/// How the SM column of a table applies to one GPU.
#[derive(Clone, Copy, PartialEq)]
enum Sm {
    /// The column describes this GPU: the catalog must give the same count.
    Required,
    /// The column describes another variant (e.g. `SM (NVL)` for the GH200 96GB names): a count
    /// in the catalog must match, but the catalog may leave it out.
    IfGiven,
}

/// One GPU of a §3 table: which name column holds its profiles.
struct Detailed {
    section: &'static str,
    key: &'static str,
    name_column: &'static str,
    sm: Sm,
    rows: usize,
}

const DETAILED: &[Detailed] = &[
    Detailed {
        section: "3.1",
        key: "A100-40GB",
        name_column: "40GB name",
        sm: Sm::Required,
        rows: 7,
    },
    Detailed {
        section: "3.1",
        key: "A100-80GB",
        name_column: "80GB name",
        sm: Sm::Required,
        rows: 7,
    },
    Detailed {
        section: "3.2",
        key: "A30-24GB",
        name_column: "name",
        sm: Sm::Required,
        rows: 5,
    },
    Detailed {
        section: "3.3",
        key: "H100-80GB",
        name_column: "name",
        sm: Sm::Required,
        rows: 7,
    },
    Detailed {
        section: "3.4",
        key: "H100-94GB",
        name_column: "94GB name",
        sm: Sm::Required,
        rows: 7,
    },
    Detailed {
        section: "3.4",
        key: "H100-96GB",
        name_column: "96GB (GH200) name",
        sm: Sm::IfGiven,
        rows: 7,
    },
    Detailed {
        section: "3.9",
        key: "RTX-PRO-6000",
        name_column: "name",
        sm: Sm::Required,
        rows: 11,
    },
];

/// Compares one table row with the catalog profile of the same name.
fn check_row(tally: &mut Tally, spec: &Detailed, t: &Table, row: &[String], p: &GiProfile) {
    let at = format!("§{} {} {}", spec.section, spec.key, p.name);
    let cell = |label: &str| t.column(label).map(|i| row[i].as_str());

    if let Some(id) = cell("ID") {
        tally.check(&at, "ID", p.id, Some(number(id, &at)));
    }
    if let Some(e) = cell("enum") {
        tally.check(&at, "enum", p.nvml.short_name(), unbold(e));
    }
    match cell("C") {
        Some(c) => tally.check(&at, "C", p.compute as u32, number(c, &at)),
        // No C column (RTX PRO 6000): the name says it.
        None => tally.check(&at, "C (from the name)", p.compute, gi_slices(&p.name)),
    }
    if let Some(m) = cell("M") {
        tally.check(&at, "M", p.slots as u32, number(m, &at));
    }
    if let Some(s) = cell("starts") {
        tally.check(&at, "starts", p.starts.clone(), parse_starts(s));
    }
    if let Some(pl) = cell("placements") {
        let (starts, size) = parse_placements(pl);
        tally.check(&at, "placement starts", p.starts.clone(), starts);
        tally.check(&at, "placement size", p.slots, size);
    }
    tally.check(
        &at,
        "max",
        p.max as u32,
        number(&row[t.require("max")], &at),
    );
    if let Some(sm) = cell("SM") {
        if let Ok(n) = unbold(sm).parse::<u32>() {
            if spec.sm == Sm::Required || p.sm.is_some() {
                tally.check(&at, "SM", p.sm, Some(n));
            }
        }
    }
    tally.check(
        &at,
        "CE",
        p.ce,
        Some(number(&row[t.require("CE")], &at) as u8),
    );
    if let Some(e) = cell("DEC/JPG/OFA") {
        let e = parse_engines(e);
        tally.check(
            &at,
            "DEC/JPG/OFA",
            vec![p.dec, p.jpg, p.ofa],
            e.into_iter().map(Some).collect(),
        );
    }
    if let Some(e) = cell("DEC/ENC/JPG/OFA") {
        let e = parse_engines(e);
        tally.check(
            &at,
            "DEC/ENC/JPG/OFA",
            vec![p.dec, p.enc, p.jpg, p.ofa],
            e.into_iter().map(Some).collect(),
        );
    }
}

#[test]
fn detailed_tables_match_the_catalog() {
    let Some(text) = reference() else { return };
    let catalog = Catalog::embedded();
    let mut tally = Tally::default();
    for spec in DETAILED {
        let lines = section(&text, spec.section);
        let t = table_with(&lines, spec.name_column);
        let name_col = t.require(spec.name_column);
        let g = gpu(&catalog, spec.key);
        let before = tally.rows;
        let mut names = BTreeSet::new();
        for row in &t.rows {
            assert_eq!(
                row.len(),
                t.header.len(),
                "§{}: row {row:?} has {} cells, the header {}",
                spec.section,
                row.len(),
                t.header.len()
            );
            let name = unbold(&row[name_col]).to_string();
            names.insert(name.clone());
            tally.rows += 1;
            match g.profiles.iter().find(|p| p.name == name) {
                Some(p) => check_row(&mut tally, spec, &t, row, p),
                None => tally.failures.push(format!(
                    "§{} {}: no profile '{name}'",
                    spec.section, spec.key
                )),
            }
        }
        let checked = tally.rows - before;
        assert!(checked > 0, "§{}: no rows for {}", spec.section, spec.key);
        assert_eq!(
            checked, spec.rows,
            "§{} {}: {checked} rows, expected {}",
            spec.section, spec.key, spec.rows
        );
        check_name_set(&mut tally, g, &names);
    }
    tally.finish(DETAILED.iter().map(|d| d.rows).sum());
}

// ---------------------------------------------------------------------------------------------
// Name and max lists (§3.5–3.8, §3.10)

/// One profile of a name/max list: name, max instances, and copy engines where given.
type Entry = (String, u8, Option<u8>);

/// (name, max, CE where the table has it) of a `name | … | max` table.
fn name_max_table(text: &str, sec: &str) -> Vec<Entry> {
    let lines = section(text, sec);
    let t = table_with(&lines, "name");
    let (n, m, ce) = (t.require("name"), t.require("max"), t.column("CE"));
    t.rows
        .iter()
        .map(|r| {
            (
                unbold(&r[n]).to_string(),
                number(&r[m], sec) as u8,
                ce.map(|i| number(&r[i], sec) as u8),
            )
        })
        .collect()
}

/// The §3.8 row whose first cell names `device_filter`.
fn config_list(text: &str, device_filter: &str) -> Vec<Entry> {
    let lines = section(text, "3.8");
    let t = table_with(&lines, "profile names (max instances)");
    let col = t.require("profile names (max instances)");
    let row = t
        .rows
        .iter()
        .find(|r| r[0].contains(&format!("({device_filter})")))
        .unwrap_or_else(|| panic!("§3.8 has no row for {device_filter}"));
    // "…, 7g.144gb ×1; balanced 1g.18gb:2 + …": the list ends at the ';'.
    let list = row[col].split(';').next().unwrap();
    parse_name_max_list(list)
        .into_iter()
        .map(|(n, m)| (n, m, None))
        .collect()
}

/// The §3.10 bullet `- **<product>** (max N…): <list>.` with its continuation lines; returns the
/// GPU's maximum and the list.
fn rtx_bullet(text: &str, product: &str) -> (u8, Vec<Entry>) {
    let lines = section(text, "3.10");
    let start = format!("- **{product}**");
    let i = lines
        .iter()
        .position(|l| l.starts_with(&start))
        .unwrap_or_else(|| panic!("§3.10 has no bullet '{start}'"));
    let mut bullet = lines[i][start.len()..].to_string();
    for l in &lines[i + 1..] {
        if !l.starts_with("  ") || l.trim_start().starts_with("- ") {
            break;
        }
        bullet.push(' ');
        bullet.push_str(l.trim());
    }
    let max_text = bullet
        .split_once("(max ")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no '(max N' in '{bullet}'"));
    let digits: String = max_text.chars().take_while(char::is_ascii_digit).collect();
    let (_, list) = bullet
        .split_once(':')
        .unwrap_or_else(|| panic!("no ':' in '{bullet}'"));
    let list = list.trim().trim_end_matches('.');
    let items = parse_name_max_list(list)
        .into_iter()
        .map(|(n, m)| (n, m, None))
        .collect();
    (digits.parse().unwrap(), items)
}

#[test]
fn name_and_max_lists_match_the_catalog() {
    let Some(text) = reference() else { return };
    let catalog = Catalog::embedded();
    let mut tally = Tally::default();
    let mut rtx_max = Vec::new();
    let lists: Vec<(&str, &str, Vec<Entry>)> = vec![
        ("§3.5", "H200-141GB", name_max_table(&text, "3.5")),
        ("§3.6", "B200-180GB", name_max_table(&text, "3.6")),
        ("§3.7", "GB200-186GB", name_max_table(&text, "3.7")),
        ("§3.8", "GH200-144GB", config_list(&text, "0x2348")),
        ("§3.8", "B300-288GB", config_list(&text, "0x3182")),
        ("§3.8", "GB300-288GB", config_list(&text, "0x31C2")),
        ("§3.10", "RTX-PRO-5000", {
            let (max, list) = rtx_bullet(&text, "RTX PRO 5000");
            rtx_max.push(("RTX-PRO-5000", max));
            list
        }),
        ("§3.10", "RTX-PRO-4500", {
            let (max, list) = rtx_bullet(&text, "RTX PRO 4500");
            rtx_max.push(("RTX-PRO-4500", max));
            list
        }),
    ];
    let expected_rows = [7, 7, 7, 7, 7, 7, 7, 6];
    for ((sec, key, list), expected) in lists.iter().zip(expected_rows) {
        let g = gpu(&catalog, key);
        assert!(!list.is_empty(), "{sec}: no profiles for {key}");
        assert_eq!(
            list.len(),
            expected,
            "{sec} {key}: {} profiles in the reference, expected {expected}",
            list.len()
        );
        let mut names = BTreeSet::new();
        for (name, max, ce) in list {
            let at = format!("{sec} {key} {name}");
            names.insert(name.clone());
            tally.rows += 1;
            match g.profiles.iter().find(|p| &p.name == name) {
                Some(p) => {
                    tally.check(&at, "max", p.max, *max);
                    tally.check(&at, "C (from the name)", p.compute, gi_slices(name));
                    if let Some(ce) = ce {
                        tally.check(&at, "CE", p.ce, Some(*ce));
                    }
                }
                None => tally.failures.push(format!("{at}: not in the catalog")),
            }
        }
        check_name_set(&mut tally, g, &names);
    }
    for (key, max) in rtx_max {
        tally.check(key, "max_instances", gpu(&catalog, key).max_instances, max);
    }
    tally.finish(expected_rows.iter().sum());
}

// ---------------------------------------------------------------------------------------------
// The reader itself

#[test]
fn the_reader_parses_every_form() {
    assert_eq!(parse_starts("0..6"), vec![0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(parse_starts("0,2,4,6"), vec![0, 2, 4, 6]);
    assert_eq!(parse_starts("0"), vec![0]);
    assert_eq!(parse_placements("{0,3,6,9}:3"), (vec![0, 3, 6, 9], 3));
    assert_eq!(parse_placements("{0}:12"), (vec![0], 12));
    assert_eq!(
        parse_engines("0/0/0 (real output shows DEC=1)"),
        vec![0, 0, 0]
    );
    assert_eq!(number("**26**", "x"), 26);
    assert_eq!(gi_slices("1g.24gb+me.all"), 1);
    assert_eq!(
        parse_name_max_list("1g.24gb ×2 (1/2 memory, 1/2 SM), 2g.48gb+gfx ×1"),
        vec![("1g.24gb".to_string(), 2), ("2g.48gb+gfx".to_string(), 1)]
    );
    let t = tables(&[
        "| name | SM (SXM) | max |",
        "|---|---|---|",
        "| 1g.10gb | **16** | 7 |",
        "",
        "text",
    ]);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].rows, vec![vec!["1g.10gb", "**16**", "7"]]);
    assert_eq!(t[0].column("SM"), Some(1));
    assert_eq!(t[0].column("S"), None);
}
