//! README.md's commands, run as written: every ```sh block, in order, on a simulated node in a
//! scratch folder that holds the repository's `examples/`, with `carve` the binary under test.
//! Each line runs in `bash` and must exit 0, unless the table below says otherwise (one place,
//! each entry with its reason). ```console blocks are checked too: each `$ command` runs, and
//! the lines after it are what it prints, up to a line `...` (the rest not shown).
//! ```text blocks are synopses and are not run.

use carve_test_support::{fresh_dir, repo_root};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Commands that do not run to completion on their own: (the start of the command, how long to
/// let it run, why). They are started in the background; they must still be running when the
/// rest of their block has run (or after the time given), then Ctrl-C stops them and they must
/// exit 0.
const SERVERS: &[(&str, u64, &str)] = &[
    ("carve up", 4, "the node agent: runs until Ctrl-C"),
    ("carve agent", 4, "the node agent: runs until Ctrl-C"),
    (
        "carve sched serve",
        1,
        "the scheduler daemon: runs until Ctrl-C",
    ),
];

/// Commands not run here: (the start of the command, why).
const NOT_RUN: &[(&str, &str)] = &[
    (
        "cargo test --workspace",
        "it is the command that runs this test",
    ),
    (
        "deploy/install.sh /usr/local",
        "a release build installed into /usr/local; tests/install.rs runs the script into a \
         temporary prefix and the installed carve",
    ),
    (
        "carve run --socket gpu0.sock --tenant search --token-file examples/tokens/search -- python serve.py",
        "needs the reader's own CUDA program (carve run itself is tested in tests/sched.rs)",
    ),
];

/// How a command of the README maps onto this test: `cargo run ... -p carve-cli -- ARGS` and
/// `target/debug/carve ARGS` are the binary under test (cargo has built it), run in the scratch
/// folder; other `cargo` commands run in the repository (they build; the binary they build is
/// the one under test); everything else runs in the scratch folder. `a && b` runs `a`, then `b`.
fn parts(cmd: &str) -> Vec<(bool, String)> {
    cmd.split(" && ")
        .map(|part| {
            let part = part.trim();
            if part.starts_with("cargo run ") && part.contains("-p carve-cli") {
                let args = part.split_once(" -- ").map(|x| x.1).unwrap_or("");
                return (false, format!("carve {args}").trim().to_string());
            }
            for prefix in ["./target/debug/carve", "target/debug/carve"] {
                if let Some(rest) = part.strip_prefix(prefix) {
                    return (false, format!("carve{rest}"));
                }
            }
            (part.starts_with("cargo "), part.to_string())
        })
        .collect()
}

/// Commands whose exit status is not 0 by design: (the start of the command, status, why).
const EXIT_STATUS: &[(&str, i32, &str)] = &[(
    "carve fit H100-80GB 3g.40gb=3",
    1,
    "the answer is no: it shows the proof",
)];

struct Block {
    /// `sh` or `console`.
    kind: String,
    /// 1-based line of the opening fence.
    line: usize,
    lines: Vec<String>,
}

fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, l) in text.lines().enumerate() {
        if let Some(fence) = l.strip_prefix("```") {
            match open.take() {
                Some(b) => out.push(b),
                None => {
                    open = Some(Block {
                        kind: fence.trim().to_string(),
                        line: i + 1,
                        lines: Vec::new(),
                    })
                }
            }
        } else if let Some(b) = open.as_mut() {
            b.lines.push(l.to_string());
        }
    }
    out
}

/// A command line without its trailing `# comment`.
fn command(line: &str) -> String {
    let mut quote: Option<char> = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if i == 0 || line[..i].ends_with(' ') => return line[..i].trim().into(),
            _ => {}
        }
    }
    line.trim().to_string()
}

struct Scratch {
    dir: PathBuf,
    bin: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = fresh_dir("carve-readme");
        let bin = dir.join(".bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_carve"), bin.join("carve")).unwrap();
        copy_dir(&repo_root().join("examples"), &dir.join("examples"));
        // `target/` as in the repository: the build folder this test's carve was built in.
        let target = Path::new(env!("CARGO_BIN_EXE_carve"))
            .parent()
            .and_then(Path::parent)
            .expect("carve in <target>/<profile>/");
        std::os::unix::fs::symlink(target, dir.join("target")).unwrap();
        Scratch { dir, bin }
    }

    fn bash(&self, cmd: &str) -> Command {
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new("bash");
        c.args(["-c", cmd])
            .current_dir(&self.dir)
            .env("PATH", path)
            .env("CARVE_STATE_DIR", self.dir.join(".state"))
            .env("HOME", &self.dir)
            .env("XDG_CONFIG_HOME", self.dir.join(".config"))
            .env_remove("CARVE_CATALOG")
            .env_remove("CARVE_SIM_CRASH_AFTER");
        c
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn starts(cmd: &str, prefix: &str) -> bool {
    cmd == prefix || cmd.starts_with(&format!("{prefix} "))
}

/// Stops a background command with Ctrl-C; it must exit 0.
fn stop(mut child: Child, what: &str, problems: &mut Vec<String>) {
    // SAFETY: kill(2) with a pid this test started and has not reaped, and a valid signal.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                if !st.success() {
                    let out = child.wait_with_output().ok();
                    problems.push(format!(
                        "{what}: exited with {st} after Ctrl-C: {}",
                        out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                            .unwrap_or_default()
                    ));
                }
                return;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                problems.push(format!("{what}: did not stop within 10 s of Ctrl-C"));
                return;
            }
        }
    }
}

#[test]
fn every_readme_command_runs_as_written() {
    let text = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let s = Scratch::new();
    let mut problems = Vec::new();
    let mut used_not_run = vec![false; NOT_RUN.len()];
    let mut used_status = vec![false; EXIT_STATUS.len()];
    for b in blocks(&text) {
        let mut background: Vec<(Child, String)> = Vec::new();
        match b.kind.as_str() {
            "sh" => {
                for (k, line) in b.lines.iter().enumerate() {
                    let cmd = command(line);
                    if cmd.is_empty() {
                        continue;
                    }
                    let at = format!("README.md:{}: `{cmd}`", b.line + 1 + k);
                    if let Some(i) = NOT_RUN.iter().position(|(p, _)| starts(&cmd, p)) {
                        used_not_run[i] = true;
                        continue;
                    }
                    for (in_repo, part) in parts(&cmd) {
                        if let Some((_, secs, _)) =
                            SERVERS.iter().find(|(p, _, _)| starts(&part, p))
                        {
                            let mut child = s
                                .bash(&format!("exec {part}"))
                                .stdout(Stdio::null())
                                .stderr(Stdio::piped())
                                .spawn()
                                .unwrap();
                            std::thread::sleep(Duration::from_secs(*secs));
                            match child.try_wait() {
                                Ok(None) => background.push((child, at.clone())),
                                _ => {
                                    let out = child.wait_with_output().unwrap();
                                    problems.push(format!(
                                        "{at}: stopped on its own ({}): {}",
                                        out.status,
                                        String::from_utf8_lossy(&out.stderr)
                                    ));
                                }
                            }
                            continue;
                        }
                        let want = match EXIT_STATUS.iter().position(|(p, _, _)| starts(&part, p)) {
                            Some(i) => {
                                used_status[i] = true;
                                EXIT_STATUS[i].1
                            }
                            None => 0,
                        };
                        let mut c = s.bash(&part);
                        if in_repo {
                            c.current_dir(repo_root());
                        }
                        let out = c.output().unwrap();
                        if out.status.code() != Some(want) {
                            problems.push(format!(
                                "{at}: `{part}`: exit status {:?}, expected {want}:\n{}{}",
                                out.status.code(),
                                String::from_utf8_lossy(&out.stdout),
                                String::from_utf8_lossy(&out.stderr)
                            ));
                        }
                    }
                }
            }
            "console" => {
                let mut k = 0;
                while k < b.lines.len() {
                    let Some(cmd) = b.lines[k].strip_prefix("$ ") else {
                        k += 1;
                        continue;
                    };
                    let at = format!("README.md:{}: `{cmd}`", b.line + 1 + k);
                    let mut expected = Vec::new();
                    let mut rest_hidden = false;
                    k += 1;
                    while k < b.lines.len() && !b.lines[k].starts_with("$ ") {
                        if b.lines[k] == "..." {
                            rest_hidden = true;
                        } else if !rest_hidden {
                            expected.push(b.lines[k].clone());
                        }
                        k += 1;
                    }
                    let want = match EXIT_STATUS.iter().position(|(p, _, _)| starts(cmd, p)) {
                        Some(i) => {
                            used_status[i] = true;
                            EXIT_STATUS[i].1
                        }
                        None if rest_hidden => -1,
                        None => 0,
                    };
                    let out = s.bash(cmd).output().unwrap();
                    if want >= 0 && out.status.code() != Some(want) {
                        problems.push(format!(
                            "{at}: exit status {:?}, expected {want}",
                            out.status.code()
                        ));
                    }
                    // What people see: stdout then stderr, as a terminal shows them here.
                    let shown = format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                    let got: Vec<&str> = shown.lines().collect();
                    let n = expected.len();
                    let matches = if rest_hidden {
                        got.len() >= n && got[..n] == expected[..]
                    } else {
                        got == expected
                    };
                    if !matches {
                        problems.push(format!(
                            "{at}: prints\n{}\nwhere README.md shows\n{}",
                            got.iter()
                                .take(n + 2)
                                .cloned()
                                .collect::<Vec<_>>()
                                .join("\n"),
                            expected.join("\n")
                        ));
                    }
                }
            }
            _ => {}
        }
        for (child, at) in background {
            stop(child, &at, &mut problems);
        }
    }
    for (i, used) in used_not_run.iter().enumerate() {
        if !used {
            problems.push(format!(
                "NOT_RUN: `{}` is in no README block any more: delete the entry",
                NOT_RUN[i].0
            ));
        }
    }
    for (i, used) in used_status.iter().enumerate() {
        if !used {
            problems.push(format!(
                "EXIT_STATUS: `{}` is in no README block any more: delete the entry",
                EXIT_STATUS[i].0
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n\n"));
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn cargo_runs_of_the_cli_are_the_binary_under_test() {
    assert_eq!(
        parts("cargo run -q -p carve-cli -- up --dir x"),
        [(false, "carve up --dir x".to_string())]
    );
    assert_eq!(
        parts("cargo build -p carve-cli -p carve-shim && target/debug/carve up"),
        [
            (true, "cargo build -p carve-cli -p carve-shim".to_string()),
            (false, "carve up".to_string())
        ]
    );
}

#[test]
fn comments_are_cut_outside_quotes() {
    assert_eq!(command("carve status   # the GPUs"), "carve status");
    assert_eq!(command("echo 'a # b'"), "echo 'a # b'");
    assert_eq!(command("carve x#y"), "carve x#y");
}
