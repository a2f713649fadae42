//! Reading what the user gives: files (or standard input), the catalog, tenancy files, durations.
//! Errors are bad input, located where they have a place.

use crate::output::{excerpt, Failure};
use carve_model::Catalog;
use serde_json::json;
use std::path::{Path, PathBuf};

/// A file's text (`-`: standard input); it must be UTF-8.
pub fn read_input(path: &Path) -> Result<String, Failure> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| Failure::bad(format!("cannot read standard input: {e}")))?;
        return Ok(s);
    }
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::bad(format!("cannot read {}: {e}", path.display())))?;
    String::from_utf8(bytes)
        .map_err(|_| Failure::bad(format!("{} is not UTF-8 text", path.display())))
}

/// The embedded catalog, plus the user's file: `--catalog`, else `$CARVE_CATALOG`, else
/// `<config dir>/carve/catalog.toml` when it exists.
pub fn load_catalog(flag: Option<&Path>) -> Result<(Catalog, Option<String>), Failure> {
    let mut catalog = Catalog::embedded();
    let path: Option<PathBuf> = flag
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("CARVE_CATALOG").map(PathBuf::from))
        .or_else(|| {
            directories::ProjectDirs::from("", "", "carve")
                .map(|d| d.config_dir().join("catalog.toml"))
                .filter(|p| p.is_file())
        });
    let Some(path) = path else {
        return Ok((catalog, None));
    };
    let text = read_input(&path)?;
    let origin = path.display().to_string();
    let user = Catalog::from_toml(&text, &origin).map_err(|e| Failure::BadInput {
        message: format!("invalid catalog: {e}"),
        detail: excerpt(&text, e.pos.line, e.pos.column),
        suggestions: Vec::new(),
        diagnostics: Some(Box::new(
            json!([{ "line": e.pos.line, "column": e.pos.column, "message": e.message }]),
        )),
    })?;
    let added = user.gpus.len();
    let replaced = catalog.merge(user);
    let note = format!(
        "{origin}: {} GPU model(s) added, {} replaced{}",
        added - replaced.len(),
        replaced.len(),
        if replaced.is_empty() {
            String::new()
        } else {
            format!(" ({})", replaced.join(", "))
        }
    );
    Ok((catalog, Some(note)))
}

/// Reads and checks a tenancy file; errors are located `FILE:LINE:COL`.
pub fn load_tenancy(catalog: &Catalog, file: &Path) -> Result<carve_plan::Tenancy, Failure> {
    let text = read_input(file)?;
    carve_plan::parse(&text, catalog).map_err(|errs| {
        let name = file.display().to_string();
        let first = &errs[0];
        let mut detail = first
            .pos
            .map(|p| excerpt(&text, p.line, p.column))
            .unwrap_or_default();
        for e in &errs[1..] {
            detail.push(format!("{name}:{e}"));
        }
        Failure::BadInput {
            message: format!("{name}:{first}"),
            detail,
            suggestions: Vec::new(),
            diagnostics: Some(Box::new(json!(errs
                .iter()
                .map(|e| {
                    let (line, column) = e.pos.map_or((0, 0), |p| (p.line, p.column));
                    json!({"file": name, "line": line, "column": column, "message": e.message})
                })
                .collect::<Vec<_>>()))),
        }
    })
}

/// Writes a picture (or any text file) the user asked for.
pub fn write_svg(path: &Path, svg: &str) -> Result<(), Failure> {
    std::fs::write(path, svg)
        .map_err(|e| Failure::failed(format!("cannot write {}: {e}", path.display())))
}

/// A duration for `flag`: `250ms`, `90s`, `30m`, `1h`, or plain seconds; positive, at most `max_s`.
pub fn parse_duration(s: &str, flag: &str, max_s: f64) -> Result<std::time::Duration, Failure> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else {
        match t.chars().last() {
            Some('h') => (&t[..t.len() - 1], 3600.0),
            Some('m') => (&t[..t.len() - 1], 60.0),
            Some('s') => (&t[..t.len() - 1], 1.0),
            _ => (t, 1.0),
        }
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v * mult <= max_s => {
            Ok(std::time::Duration::from_secs_f64(v * mult))
        }
        _ => Err(Failure::bad(format!(
            "{flag} {s}: give a positive time up to {max_s} s, like 90s, 30m or 1h"
        ))),
    }
}
