//! Printing: text tables for people, JSON for scripts, and failures for both.

use serde::Serialize;
use std::io::Write;

/// What a command prints and its exit status (0 yes, 1 no).
pub struct Out {
    pub text: String,
    pub code: u8,
}

impl Out {
    pub fn ok(text: String) -> Out {
        Out { text, code: 0 }
    }
    pub fn no(text: String) -> Out {
        Out { text, code: 1 }
    }
    pub fn json<T: Serialize>(value: &T, code: u8) -> Out {
        let mut text = serde_json::to_string_pretty(value).expect("serialisable");
        text.push('\n');
        Out { text, code }
    }
}

/// A command that could not run on its input (exit 2).
#[derive(Debug)]
pub enum Failure {
    BadInput {
        /// The one-line message, with file:line:col when there is one.
        message: String,
        /// Further lines (a source excerpt, a hint), for people only.
        detail: Vec<String>,
        /// Close names, for "did you mean".
        suggestions: Vec<String>,
        /// Structured diagnostics for --json.
        diagnostics: Option<Box<serde_json::Value>>,
    },
    /// The answer is no, or the work could not be done (exit 1).
    No { message: String },
}

impl Failure {
    pub fn no(message: impl Into<String>) -> Failure {
        Failure::No {
            message: message.into(),
        }
    }

    pub fn bad(message: impl Into<String>) -> Failure {
        Failure::BadInput {
            message: message.into(),
            detail: Vec::new(),
            suggestions: Vec::new(),
            diagnostics: None,
        }
    }
}

impl From<carve_model::LookupError> for Failure {
    fn from(e: carve_model::LookupError) -> Failure {
        Failure::BadInput {
            message: e.to_string(),
            detail: Vec::new(),
            suggestions: e.suggestions.iter().map(|s| s.name.clone()).collect(),
            diagnostics: None,
        }
    }
}

/// Writes to stdout; a closed pipe (`carve catalog | head`) is not an error.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

pub fn report_failure(f: &Failure, json: bool) {
    let (message, detail, suggestions, diagnostics) = match f {
        Failure::BadInput {
            message,
            detail,
            suggestions,
            diagnostics,
        } => (
            message,
            detail.as_slice(),
            suggestions.as_slice(),
            diagnostics,
        ),
        Failure::No { message } => (message, &[][..], &[][..], &None),
    };
    if json {
        let mut v = serde_json::json!({ "error": message });
        if !suggestions.is_empty() {
            v["suggestions"] = serde_json::json!(suggestions);
        }
        match diagnostics.as_deref() {
            // A report object: its fields join the error object.
            Some(serde_json::Value::Object(m)) => {
                for (k, x) in m {
                    v[k] = x.clone();
                }
            }
            Some(d) => v["diagnostics"] = d.clone(),
            None => {}
        }
        emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(&v).expect("json")
        ));
    }
    // Located diagnostics (file:line:col) come first, then the one-line summary.
    let mut err = std::io::stderr().lock();
    let located = detail
        .first()
        .is_some_and(|l| !l.starts_with(' ') && l.contains(": "));
    if located {
        for line in detail {
            let _ = writeln!(err, "{line}");
        }
    }
    let _ = writeln!(err, "carve: error: {message}");
    if !located {
        for line in detail {
            let _ = writeln!(err, "{line}");
        }
    }
}

/// Aligns rows into columns (the first row is the header).
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut s = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// The source line of a 1-based position with a caret under the column.
pub fn excerpt(text: &str, line: usize, column: usize) -> Vec<String> {
    match text.lines().nth(line.saturating_sub(1)) {
        Some(src) if line > 0 => {
            let n = line.to_string();
            vec![
                format!("{:>w$} | {src}", n, w = n.len()),
                format!(
                    "{:>w$} | {}^",
                    "",
                    " ".repeat(column.saturating_sub(1)),
                    w = n.len()
                ),
            ]
        }
        _ => Vec::new(),
    }
}

/// `carve apply`'s errors: bad input exits 2, a refusal or a failure 1.
impl From<carve_apply::ApplyError> for Failure {
    fn from(e: carve_apply::ApplyError) -> Failure {
        use carve_apply::ErrorKind;
        match e.kind() {
            ErrorKind::Input => Failure::bad(e.to_string()),
            ErrorKind::Refused | ErrorKind::Failed => Failure::no(e.to_string()),
        }
    }
}
