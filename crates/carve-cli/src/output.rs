//! Printing: text tables for people, JSON for scripts, and failures for both.

use serde::Serialize;
use std::io::Write;

/// Exit status: the command did what was asked, or the answer is yes.
pub const EXIT_OK: u8 = 0;
/// Exit status: the answer is no (`fit` found no placement, `assert` found differences, a
/// tenancy that does not fit its fleet, an apply refused because it would destroy instances in
/// use). Nothing was changed.
pub const EXIT_NO: u8 = 1;
/// Exit status: bad input (unknown names, syntax errors, invalid configs, wrong flags, a file
/// named on the command line that cannot be read). Nothing was changed.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit status: it could not be done: the environment (a port in use, no NVML, no kubeconfig, no
/// shim), the driver (a failed or refused GPU operation), I/O (the state database, a file that
/// cannot be written).
pub const EXIT_FAILED: u8 = 3;

/// What a command prints and its exit status (0 yes, 1 no).
pub struct Out {
    pub text: String,
    pub code: u8,
}

impl Out {
    pub fn ok(text: String) -> Out {
        Out {
            text,
            code: EXIT_OK,
        }
    }
    pub fn no(text: String) -> Out {
        Out {
            text,
            code: EXIT_NO,
        }
    }
    pub fn json<T: Serialize>(value: &T, code: u8) -> Out {
        let mut text = serde_json::to_string_pretty(value).expect("serialisable");
        text.push('\n');
        Out { text, code }
    }
}

/// A command that did not do what was asked: bad input (exit 2), an answer of no (exit 1), or a
/// failure (exit 3).
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
    /// The answer is no: nothing was changed (exit 1).
    No { message: String },
    /// It could not be done: the environment, the driver, I/O (exit 3).
    Failed { message: String },
}

impl Failure {
    /// The answer is no (exit 1).
    pub fn no(message: impl Into<String>) -> Failure {
        Failure::No {
            message: message.into(),
        }
    }

    /// It could not be done (exit 3).
    pub fn failed(message: impl Into<String>) -> Failure {
        Failure::Failed {
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

    /// The exit status.
    pub fn code(&self) -> u8 {
        match self {
            Failure::BadInput { .. } => EXIT_BAD_INPUT,
            Failure::No { .. } => EXIT_NO,
            Failure::Failed { .. } => EXIT_FAILED,
        }
    }

    /// The kind, as `--json` names it: `bad-input`, `no` or `failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::BadInput { .. } => "bad-input",
            Failure::No { .. } => "no",
            Failure::Failed { .. } => "failed",
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
        Failure::No { message } | Failure::Failed { message } => (message, &[][..], &[][..], &None),
    };
    if json {
        let mut v = serde_json::json!({ "error": message, "kind": f.kind(), "exit": f.code() });
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

/// `carve apply`'s errors: bad input exits 2; a refusal (the layout cannot be realised here, or
/// it would destroy instances in use: nothing was changed) is an answer of no, 1; a GPU or state
/// operation that failed (the driver refused it, or the database could not be written) is a
/// failure, 3.
impl From<carve_apply::ApplyError> for Failure {
    fn from(e: carve_apply::ApplyError) -> Failure {
        use carve_apply::ErrorKind;
        match e.kind() {
            ErrorKind::Input => Failure::bad(e.to_string()),
            ErrorKind::Refused => Failure::no(e.to_string()),
            ErrorKind::Failed => Failure::failed(e.to_string()),
        }
    }
}

/// A backend's error outside the apply pipeline (status, the simulated node's hooks): the driver
/// or the state database could not do it (3), except a device or GPU that is not there, which the
/// user named (2).
pub fn backend_failure(e: carve_backend::BackendError) -> Failure {
    use carve_backend::BackendError;
    match e {
        BackendError::NotFound(_) | BackendError::InvalidArgument(_) => Failure::bad(e.to_string()),
        other => Failure::failed(other.to_string()),
    }
}
