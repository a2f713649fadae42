//! What the tidy test (`tests/tidy.rs`) reads the workspace with: its crates and manifests
//! (`toml`), its Rust sources as tokens (a small lexer: comments dropped, string literals kept
//! whole, `#[cfg(test)]` code marked), and the items they define. Plain file scanning, no
//! compiler: the whole workspace reads in well under a second.
//!
//! The rules themselves, and their tables, are in `tests/tidy.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// The workspace

/// The workspace: its root manifest and its member crates.
pub struct Workspace {
    pub root: PathBuf,
    pub manifest: toml::Table,
    /// The members, by package name.
    pub crates: BTreeMap<String, Crate>,
}

/// A member crate.
pub struct Crate {
    pub name: String,
    /// The crate's directory, relative to the root (`crates/carve-model`).
    pub rel: String,
    pub manifest: toml::Table,
    /// The manifest's text, for line numbers.
    pub manifest_text: String,
}

/// Which table of a manifest a dependency is listed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DepKind {
    Normal,
    Dev,
    Build,
}

impl DepKind {
    pub fn table(self) -> &'static str {
        match self {
            DepKind::Normal => "dependencies",
            DepKind::Dev => "dev-dependencies",
            DepKind::Build => "build-dependencies",
        }
    }
}

/// One dependency entry of a manifest.
#[derive(Debug, Clone)]
pub struct Dep {
    /// The key (the name the code uses, `-` for `_`).
    pub key: String,
    /// The package it names (`package = ...`, here or in `[workspace.dependencies]`), else the key.
    pub package: String,
    pub kind: DepKind,
    pub optional: bool,
    /// Whether the dependency's default features are on (`default-features = false` here or in
    /// `[workspace.dependencies]` turns them off).
    pub default_features: bool,
    /// The features it turns on (`features = [...]`).
    pub features: Vec<String>,
    /// `workspace = true`: from `[workspace.dependencies]`.
    pub workspace: bool,
    /// `Cargo.toml:LINE` of the entry, relative to the root.
    pub at: String,
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn parse_toml(path: &Path, text: &str) -> toml::Table {
    text.parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Workspace {
    /// The workspace this crate is a member of.
    pub fn load() -> Workspace {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .canonicalize()
            .expect("the workspace root");
        Workspace::load_from(&root)
    }

    /// The workspace whose root manifest is in `root`.
    pub fn load_from(root: &Path) -> Workspace {
        let path = root.join("Cargo.toml");
        let manifest = parse_toml(&path, &read(&path));
        let ws = manifest
            .get("workspace")
            .and_then(|w| w.as_table())
            .expect("[workspace] in the root Cargo.toml");
        let globs = |key: &str| -> Vec<String> {
            ws.get(key)
                .and_then(|m| m.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let excluded: BTreeSet<String> = globs("exclude").into_iter().collect();
        let mut dirs = Vec::new();
        for m in globs("members") {
            match m.strip_suffix("/*") {
                Some(parent) => {
                    let mut found: Vec<String> = std::fs::read_dir(root.join(parent))
                        .unwrap_or_else(|e| panic!("{parent}: {e}"))
                        .filter_map(|e| e.ok())
                        .filter(|e| e.path().join("Cargo.toml").is_file())
                        .map(|e| format!("{parent}/{}", e.file_name().to_string_lossy()))
                        .collect();
                    found.sort();
                    dirs.extend(found);
                }
                None => dirs.push(m),
            }
        }
        let mut crates = BTreeMap::new();
        for rel in dirs.into_iter().filter(|d| !excluded.contains(d)) {
            let path = root.join(&rel).join("Cargo.toml");
            let manifest_text = read(&path);
            let manifest = parse_toml(&path, &manifest_text);
            let name = manifest
                .get("package")
                .and_then(|p| p.get("name"))
                .and_then(|n| n.as_str())
                .unwrap_or_else(|| panic!("{rel}/Cargo.toml: no package name"))
                .to_string();
            crates.insert(
                name.clone(),
                Crate {
                    name,
                    rel,
                    manifest,
                    manifest_text,
                },
            );
        }
        Workspace {
            root: root.to_path_buf(),
            manifest,
            crates,
        }
    }

    /// `[workspace.dependencies]`.
    pub fn workspace_deps(&self) -> toml::Table {
        self.manifest
            .get("workspace")
            .and_then(|w| w.get("dependencies"))
            .and_then(|d| d.as_table())
            .cloned()
            .unwrap_or_default()
    }

    /// Every dependency entry of `krate` (all three tables, target-specific ones included).
    pub fn deps(&self, krate: &Crate) -> Vec<Dep> {
        let ws_deps = self.workspace_deps();
        let mut tables: Vec<(String, &toml::Table)> = vec![(String::new(), &krate.manifest)];
        if let Some(targets) = krate.manifest.get("target").and_then(|t| t.as_table()) {
            for (cfg, t) in targets {
                if let Some(t) = t.as_table() {
                    tables.push((format!("target.{cfg}."), t));
                }
            }
        }
        let mut out = Vec::new();
        for (prefix, table) in tables {
            for kind in [DepKind::Normal, DepKind::Dev, DepKind::Build] {
                let Some(entries) = table.get(kind.table()).and_then(|d| d.as_table()) else {
                    continue;
                };
                for (key, v) in entries {
                    let uses_ws = v.get("workspace").and_then(|w| w.as_bool()) == Some(true);
                    let package = v
                        .get("package")
                        .and_then(|p| p.as_str())
                        .or_else(|| {
                            uses_ws
                                .then(|| ws_deps.get(key).and_then(|w| w.get("package")))
                                .flatten()
                                .and_then(|p| p.as_str())
                        })
                        .unwrap_or(key)
                        .to_string();
                    let line = manifest_line(
                        &krate.manifest_text,
                        &format!("{prefix}{}", kind.table()),
                        key,
                    );
                    let ws_entry = uses_ws.then(|| ws_deps.get(key)).flatten();
                    let no_default = |t: Option<&toml::Value>| {
                        t.and_then(|t| t.get("default-features"))
                            .and_then(|d| d.as_bool())
                            == Some(false)
                    };
                    let features = v
                        .get("features")
                        .and_then(|f| f.as_array())
                        .map(|a| {
                            a.iter()
                                .filter_map(|f| f.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(Dep {
                        key: key.clone(),
                        package,
                        kind,
                        optional: v.get("optional").and_then(|o| o.as_bool()) == Some(true),
                        default_features: !no_default(Some(v)) && !no_default(ws_entry),
                        features,
                        workspace: uses_ws,
                        at: format!("{}/Cargo.toml:{line}", krate.rel),
                    });
                }
            }
        }
        out
    }

    /// The optional dependencies (by key) of `krate` that the features `on` turn on, `default`
    /// included when asked: `[features]` followed through, `dep:NAME` and `NAME` entries alike.
    pub fn enabled_optional(
        &self,
        krate: &Crate,
        on: &[String],
        default: bool,
    ) -> BTreeSet<String> {
        let table = krate.manifest.get("features").and_then(|f| f.as_table());
        let mut todo: Vec<String> = on.to_vec();
        if default {
            todo.push("default".into());
        }
        let mut seen = BTreeSet::new();
        let mut deps = BTreeSet::new();
        while let Some(f) = todo.pop() {
            if !seen.insert(f.clone()) {
                continue;
            }
            let name = f.strip_prefix("dep:").unwrap_or(&f);
            let name = name.split('/').next().unwrap_or(name).trim_end_matches('?');
            deps.insert(name.to_string());
            if let Some(list) = table.and_then(|t| t.get(name)).and_then(|l| l.as_array()) {
                todo.extend(list.iter().filter_map(|x| x.as_str().map(str::to_string)));
            }
        }
        deps
    }

    /// Every Rust file of the crate under `dirs` (relative to the crate, e.g. `src`, `tests`,
    /// `build.rs`), sorted, relative to the root.
    pub fn rust_files(&self, krate: &Crate, dirs: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for d in dirs {
            let rel = format!("{}/{d}", krate.rel);
            walk(&self.root, &rel, &mut out);
        }
        out.sort();
        out.dedup();
        out
    }

    /// Reads and lexes a file (relative to the root).
    pub fn source(&self, rel: &str) -> Source {
        Source::new(rel, &read(&self.root.join(rel)))
    }

    /// The text of a file (relative to the root).
    pub fn text(&self, rel: &str) -> String {
        read(&self.root.join(rel))
    }
}

/// Adds the `.rs` files at `rel` (a file or a directory, searched recursively) to `out`.
fn walk(root: &Path, rel: &str, out: &mut Vec<String>) {
    let path = root.join(rel);
    if path.is_file() {
        if rel.ends_with(".rs") {
            out.push(rel.to_string());
        }
        return;
    }
    let Ok(entries) = std::fs::read_dir(&path) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "target" || name.starts_with('.') {
            continue;
        }
        walk(root, &format!("{rel}/{name}"), out);
    }
}

/// The line of `key` in the manifest table `[table]` (1 if not found).
pub fn manifest_line(text: &str, table: &str, key: &str) -> usize {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            current = h.trim_matches(['[', ']']).trim().replace(['"', '\''], "");
            continue;
        }
        if current == table.replace(['"', '\''], "") {
            let rest = t.strip_prefix(key).unwrap_or("-");
            if rest.starts_with([' ', '=', '.', '\t']) {
                return i + 1;
            }
        }
    }
    1
}

// ---------------------------------------------------------------------------------------------
// Rust sources as tokens

/// What a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Ident,
    /// One punctuation character.
    Punct,
    /// A string literal (any kind: `"..."`, `r#"..."#`, `b"..."`, `c"..."`); `text` is its raw
    /// content, escapes as written.
    Str,
    /// A character or byte literal.
    Char,
    Lifetime,
    Number,
}

#[derive(Debug, Clone)]
pub struct Token {
    pub kind: Kind,
    pub text: String,
    /// 1-based.
    pub line: usize,
}

impl Token {
    pub fn is(&self, kind: Kind, text: &str) -> bool {
        self.kind == kind && self.text == text
    }
    pub fn is_ident(&self, text: &str) -> bool {
        self.is(Kind::Ident, text)
    }
    pub fn is_punct(&self, c: char) -> bool {
        self.kind == Kind::Punct && self.text.len() == 1 && self.text.starts_with(c)
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Splits Rust source into tokens. Comments (doc comments included) are dropped. Good enough for
/// scanning, not a parser: it never fails, whatever the input.
pub fn lex(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let n = c.len();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let at = |i: usize| -> char { c.get(i).copied().unwrap_or('\0') };
    while i < n {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
            continue;
        }
        if ch.is_whitespace() {
            i += 1;
            continue;
        }
        // Comments.
        if ch == '/' && at(i + 1) == '/' {
            while i < n && c[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < n {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
            continue;
        }
        let start_line = line;
        // String literals, with their prefixes: b"", c"", r"", r#""#, br"", cr"".
        let mut j = i;
        if matches!(ch, 'b' | 'c') {
            j += 1;
        }
        let raw = at(j) == 'r' && (at(j + 1) == '"' || at(j + 1) == '#');
        let mut hashes = 0;
        if raw {
            j += 1;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
        }
        if at(j) == '"' {
            // The body runs to the closing quote (with as many `#` as opened a raw string);
            // escapes count in plain strings only.
            let body = j + 1;
            let mut e = body;
            while e < n {
                if c[e] == '"' && (0..hashes).all(|h| at(e + 1 + h) == '#') {
                    break;
                }
                if c[e] == '\\' && !raw {
                    e += 1;
                }
                if at(e) == '\n' {
                    line += 1;
                }
                e += 1;
            }
            out.push(Token {
                kind: Kind::Str,
                text: c[body..e.min(n)].iter().collect(),
                line: start_line,
            });
            i = (e + 1 + hashes).min(n);
            continue;
        }
        // Character literals (b'x' too) and lifetimes.
        let q = if ch == 'b' && at(i + 1) == '\'' {
            i + 1
        } else {
            i
        };
        if at(q) == '\'' {
            if at(q + 1) == '\\' {
                // Past the escaped character, to the closing quote (`'\''`, `'\u{..}'`).
                let mut e = q + 3;
                while e < n && c[e] != '\'' && c[e] != '\n' {
                    e += 1;
                }
                out.push(Token {
                    kind: Kind::Char,
                    text: c[q..(e + 1).min(n)].iter().collect(),
                    line,
                });
                i = (e + 1).min(n);
                continue;
            }
            if at(q + 2) == '\'' {
                out.push(Token {
                    kind: Kind::Char,
                    text: c[q..q + 3].iter().collect(),
                    line,
                });
                i = q + 3;
                continue;
            }
            if q == i && is_ident_start(at(i + 1)) {
                let mut e = i + 1;
                while e < n && is_ident_char(c[e]) {
                    e += 1;
                }
                out.push(Token {
                    kind: Kind::Lifetime,
                    text: c[i..e].iter().collect(),
                    line,
                });
                i = e;
                continue;
            }
        }
        if is_ident_start(ch) {
            // Raw identifiers: r#name.
            let (s, mut e) = if ch == 'r' && at(i + 1) == '#' && is_ident_start(at(i + 2)) {
                (i + 2, i + 2)
            } else {
                (i, i)
            };
            while e < n && is_ident_char(c[e]) {
                e += 1;
            }
            out.push(Token {
                kind: Kind::Ident,
                text: c[s..e].iter().collect(),
                line,
            });
            i = e;
            continue;
        }
        if ch.is_ascii_digit() {
            let mut e = i;
            while e < n && (is_ident_char(c[e]) || (c[e] == '.' && at(e + 1).is_ascii_digit())) {
                e += 1;
            }
            out.push(Token {
                kind: Kind::Number,
                text: c[i..e].iter().collect(),
                line,
            });
            i = e;
            continue;
        }
        out.push(Token {
            kind: Kind::Punct,
            text: ch.to_string(),
            line,
        });
        i += 1;
    }
    out
}

/// Index of the token that closes the bracket opened at `open` (`(`, `[` or `{`), or the last
/// token if it is never closed.
pub fn matching(tokens: &[Token], open: usize) -> usize {
    let mut depth = 0i32;
    for (k, t) in tokens.iter().enumerate().skip(open) {
        if t.kind != Kind::Punct {
            continue;
        }
        match t.text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => {
                depth -= 1;
                if depth == 0 {
                    return k;
                }
            }
            _ => {}
        }
    }
    tokens.len().saturating_sub(1)
}

/// The end (inclusive) of the item that starts at `start`: its first `;` outside brackets, or the
/// `}` that closes its first `{` outside brackets. Attributes at the start are part of the item.
pub fn item_end(tokens: &[Token], start: usize) -> usize {
    let mut k = start;
    while k < tokens.len() {
        let t = &tokens[k];
        if t.is_punct(';') {
            return k;
        }
        if t.is_punct('{') {
            return matching(tokens, k);
        }
        if t.is_punct('(') || t.is_punct('[') {
            k = matching(tokens, k) + 1;
            continue;
        }
        k += 1;
    }
    tokens.len().saturating_sub(1)
}

/// A lexed source file.
pub struct Source {
    /// Relative to the workspace root.
    pub rel: String,
    pub tokens: Vec<Token>,
    /// Per token: inside a `#[cfg(test)]` item.
    pub in_test: Vec<bool>,
    /// Modules declared `#[cfg(test)] mod NAME;` here (their files are test code).
    pub test_mods: Vec<String>,
    /// `#![cfg(test)]` at the top: the whole file is test code.
    pub all_test: bool,
}

impl Source {
    pub fn new(rel: &str, text: &str) -> Source {
        let tokens = lex(text);
        let mut in_test = vec![false; tokens.len()];
        let mut test_mods = Vec::new();
        let mut all_test = false;
        let mut k = 0;
        while k < tokens.len() {
            if !tokens[k].is_punct('#') {
                k += 1;
                continue;
            }
            let inner = tokens.get(k + 1).is_some_and(|t| t.is_punct('!'));
            let open = if inner { k + 2 } else { k + 1 };
            if !tokens.get(open).is_some_and(|t| t.is_punct('[')) {
                k += 1;
                continue;
            }
            let close = matching(&tokens, open);
            let attr = &tokens[open + 1..close];
            if !is_cfg_test(attr) {
                k = close + 1;
                continue;
            }
            if inner {
                all_test = true;
                k = close + 1;
                continue;
            }
            let end = item_end(&tokens, close + 1);
            // `#[cfg(test)] mod NAME;`
            let item = &tokens[close + 1..=end];
            let mut m = item.iter().skip_while(|t| !t.is_ident("mod"));
            if m.next().is_some() {
                if let (Some(name), Some(semi)) = (m.next(), m.next()) {
                    if semi.is_punct(';') && name.kind == Kind::Ident {
                        test_mods.push(name.text.clone());
                    }
                }
            }
            for f in &mut in_test[k..=end] {
                *f = true;
            }
            k = end + 1;
        }
        if all_test {
            in_test.iter_mut().for_each(|f| *f = true);
        }
        Source {
            rel: rel.to_string(),
            tokens,
            in_test,
            test_mods,
            all_test,
        }
    }

    /// The files of the modules this file declares `#[cfg(test)] mod NAME;` (relative to the root;
    /// they may not exist).
    pub fn test_mod_files(&self) -> Vec<String> {
        let (dir, file) = self.rel.rsplit_once('/').unwrap_or(("", self.rel.as_str()));
        let base = if matches!(file, "lib.rs" | "main.rs" | "mod.rs") {
            dir.to_string()
        } else {
            format!("{dir}/{}", file.trim_end_matches(".rs"))
        };
        self.test_mods
            .iter()
            .flat_map(|m| [format!("{base}/{m}.rs"), format!("{base}/{m}/mod.rs")])
            .collect()
    }
}

/// `cfg(test)`, `cfg(all(test, ...))`: a cfg attribute that needs `test` (and does not negate).
fn is_cfg_test(attr: &[Token]) -> bool {
    attr.first().is_some_and(|t| t.is_ident("cfg"))
        && attr.iter().any(|t| t.is_ident("test"))
        && !attr.iter().any(|t| t.is_ident("not") || t.is_ident("any"))
}

// ---------------------------------------------------------------------------------------------
// Definitions

/// What a definition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DefKind {
    /// `struct`, `enum`, `union`, `trait`, `type`.
    Type,
    Fn,
    Const,
    Static,
    Mod,
    Macro,
    /// An enum variant.
    Variant,
    /// A named struct field.
    Field,
}

/// A named item defined in a source file.
#[derive(Debug, Clone)]
pub struct Def {
    pub name: String,
    pub kind: DefKind,
    pub line: usize,
    /// Directly inside an `impl` or `trait` block (an associated item).
    pub associated: bool,
    /// Inside `#[cfg(test)]` code.
    pub in_test: bool,
}

/// Keywords that may stand before `impl`/`trait` at the start of an item.
fn starts_item(prev: Option<&Token>) -> bool {
    match prev {
        None => true,
        Some(t) => {
            t.kind == Kind::Punct && matches!(t.text.as_str(), ";" | "}" | "{" | "]" | ")")
                || (t.kind == Kind::Ident
                    && matches!(t.text.as_str(), "pub" | "unsafe" | "default" | "auto"))
        }
    }
}

/// Every definition in the file: items (`struct`, `enum`, `union`, `trait`, `type`, `fn`,
/// `const`, `static`, `mod`, `macro_rules!`), enum variants and named struct fields.
pub fn definitions(src: &Source) -> Vec<Def> {
    let t = &src.tokens;
    let mut out = Vec::new();
    // Brace stack: true where the block is an impl or trait body.
    let mut stack: Vec<bool> = Vec::new();
    let mut pending_impl: Option<usize> = None;
    let mut k = 0;
    while k < t.len() {
        let tok = &t[k];
        let prev = k.checked_sub(1).map(|p| &t[p]);
        let next = t.get(k + 1);
        if tok.is_punct('{') {
            stack.push(pending_impl == Some(stack.len()));
            pending_impl = None;
        } else if tok.is_punct('}') {
            stack.pop();
        } else if tok.is_punct(';') && pending_impl == Some(stack.len()) {
            pending_impl = None;
        } else if tok.kind == Kind::Ident {
            let associated = stack.last().copied().unwrap_or(false);
            let in_test = src.in_test[k];
            let def = |name: &Token, kind: DefKind| Def {
                name: name.text.clone(),
                kind,
                line: name.line,
                associated,
                in_test,
            };
            match tok.text.as_str() {
                "impl" | "trait" if starts_item(prev) => {
                    pending_impl = Some(stack.len());
                    if tok.text == "trait" {
                        if let Some(n) = next.filter(|n| n.kind == Kind::Ident) {
                            out.push(def(n, DefKind::Type));
                        }
                    }
                }
                "struct" | "enum" | "union" | "type" | "fn" | "mod" | "static" | "const" => {
                    let Some(n) = next.filter(|n| n.kind == Kind::Ident) else {
                        k += 1;
                        continue;
                    };
                    // `*const T`, `<const N: usize>`, `const fn`, `const unsafe fn`.
                    let generic_or_ptr = prev.is_some_and(|p| {
                        p.kind == Kind::Punct && matches!(p.text.as_str(), "*" | "<" | "," | "&")
                    });
                    let kind = match tok.text.as_str() {
                        "fn" => DefKind::Fn,
                        "mod" => DefKind::Mod,
                        "const" => DefKind::Const,
                        "static" => DefKind::Static,
                        _ => DefKind::Type,
                    };
                    let is_const_like = matches!(kind, DefKind::Const | DefKind::Static);
                    if is_const_like
                        && (generic_or_ptr
                            || matches!(n.text.as_str(), "fn" | "unsafe" | "extern" | "async")
                            || n.text == "_")
                    {
                        k += 1;
                        continue;
                    }
                    // `static mut NAME`, `static ref`.
                    let n = if n.text == "mut" {
                        match t.get(k + 2) {
                            Some(m) if m.kind == Kind::Ident => m,
                            _ => {
                                k += 1;
                                continue;
                            }
                        }
                    } else {
                        n
                    };
                    out.push(def(n, kind));
                    if matches!(tok.text.as_str(), "struct" | "enum" | "union") {
                        members(t, k + 2, tok.text == "enum", src, &mut out);
                    }
                }
                "macro_rules" if next.is_some_and(|n| n.is_punct('!')) => {
                    if let Some(n) = t.get(k + 2).filter(|n| n.kind == Kind::Ident) {
                        out.push(def(n, DefKind::Macro));
                    }
                }
                _ => {}
            }
        }
        k += 1;
    }
    out
}

/// The variants (enum) or named fields (struct, union) of the type whose name ends before
/// `from`.
fn members(t: &[Token], from: usize, is_enum: bool, src: &Source, out: &mut Vec<Def>) {
    // Skip generics and where clauses up to the body.
    let mut k = from;
    while k < t.len() && !t[k].is_punct('{') {
        if t[k].is_punct(';') || t[k].is_punct('(') {
            return;
        }
        k += 1;
    }
    if k >= t.len() {
        return;
    }
    let end = matching(t, k);
    let mut at_start = true;
    let mut j = k + 1;
    while j < end {
        let tok = &t[j];
        if tok.is_punct('#') {
            // An attribute: skip it.
            if let Some(open) = (j + 1..end).find(|&x| t[x].is_punct('[')) {
                j = matching(t, open) + 1;
                continue;
            }
        }
        if tok.is_punct('(') || tok.is_punct('{') || tok.is_punct('[') || tok.is_punct('<') {
            if tok.is_punct('<') {
                j += 1;
                continue;
            }
            j = matching(t, j) + 1;
            continue;
        }
        if tok.is_punct(',') {
            at_start = true;
            j += 1;
            continue;
        }
        if at_start && tok.kind == Kind::Ident && tok.text != "pub" {
            let field = t.get(j + 1).is_some_and(|n| n.is_punct(':'));
            if is_enum || field {
                out.push(Def {
                    name: tok.text.clone(),
                    kind: if is_enum {
                        DefKind::Variant
                    } else {
                        DefKind::Field
                    },
                    line: tok.line,
                    associated: false,
                    in_test: src.in_test[j],
                });
                at_start = false;
            }
        }
        j += 1;
    }
}

/// Whether `word` occurs in `text` as a whole word (not inside a longer identifier).
pub fn contains_word(text: &str, word: &str) -> bool {
    let mut from = 0;
    while let Some(p) = text[from..].find(word) {
        let s = from + p;
        let e = s + word.len();
        let before = text[..s].chars().next_back();
        let after = text[e..].chars().next();
        if !before.is_some_and(is_ident_char) && !after.is_some_and(is_ident_char) {
            return true;
        }
        from = s + word.len().max(1);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(src: &str) -> Vec<(Kind, String)> {
        lex(src).into_iter().map(|t| (t.kind, t.text)).collect()
    }

    #[test]
    fn comments_are_dropped_and_strings_kept_whole() {
        let t = texts("a /* b /* c */ d */ // e\n\"f // g\" r#\"h\"i\"# b'x' 'y 'z' '\\n' '\\''");
        assert_eq!(
            t,
            vec![
                (Kind::Ident, "a".into()),
                (Kind::Str, "f // g".into()),
                (Kind::Str, "h\"i".into()),
                (Kind::Char, "'x'".into()),
                (Kind::Lifetime, "'y".into()),
                (Kind::Char, "'z'".into()),
                (Kind::Char, "'\\n'".into()),
                (Kind::Char, "'\\''".into()),
            ]
        );
    }

    #[test]
    fn lines_are_counted_through_strings_and_comments() {
        let t = lex("a\n\"b\nc\"\n/* d\n */ e");
        assert_eq!(t[0].line, 1);
        assert_eq!(t[1].line, 2);
        assert_eq!(t[2].line, 5);
    }

    #[test]
    fn cfg_test_items_and_modules_are_marked() {
        let s = Source::new(
            "crates/x/src/lib.rs",
            "fn a() {}\n#[cfg(test)]\nmod tests {\n fn b() { Instant::now(); }\n}\n#[cfg(test)]\nmod more;\nfn c() {}",
        );
        let marked: Vec<&str> = s
            .tokens
            .iter()
            .zip(&s.in_test)
            .filter(|(_, t)| **t)
            .map(|(t, _)| t.text.as_str())
            .collect();
        assert!(marked.contains(&"Instant"));
        assert!(!marked.contains(&"c"));
        assert!(!marked.contains(&"a"));
        assert_eq!(s.test_mod_files()[0], "crates/x/src/more.rs");
    }

    #[test]
    fn definitions_know_associated_consts_variants_and_fields() {
        let s = Source::new(
            "x.rs",
            "pub const A: u8 = 1;\nimpl S { pub const B: u8 = 2; fn f<const N: usize>(p: *const u8) {} }\n\
             enum E { #[default] V1, V2(u8), V3 { x: u8 } }\nstruct S { pub f1: u8, f2: Vec<u8> }\n\
             fn g(x: impl T) { const C: u8 = 3; }\nconst fn h() {}",
        );
        let d: Vec<(String, DefKind, bool)> = definitions(&s)
            .into_iter()
            .map(|d| (d.name, d.kind, d.associated))
            .collect();
        let has = |n: &str, k: DefKind, a: bool| d.contains(&(n.to_string(), k, a));
        assert!(has("A", DefKind::Const, false));
        assert!(has("B", DefKind::Const, true));
        assert!(has("C", DefKind::Const, false));
        assert!(has("V1", DefKind::Variant, false));
        assert!(has("V2", DefKind::Variant, false));
        assert!(has("V3", DefKind::Variant, false));
        assert!(has("f1", DefKind::Field, false));
        assert!(has("f2", DefKind::Field, false));
        assert!(has("h", DefKind::Fn, false));
        assert!(!d.iter().any(|x| x.0 == "N" || x.0 == "u8" || x.0 == "x"));
    }

    #[test]
    fn words_are_whole() {
        assert!(contains_word("a SOME_NAME=1", "SOME_NAME"));
        assert!(!contains_word("SOME_NAMES", "SOME_NAME"));
        assert!(!contains_word("XSOME_NAME", "SOME_NAME"));
    }
}
