//! Every flag README.md and docs/*.md name exists in `weir <command> --help`.
//!
//! What counts as naming a flag of a command:
//! - a command line (in a code block, or an inline code span) that starts with `weir <command>`
//!   (also `cargo run -- <command>`, `target/debug/weir <command>`, env assignments before it): every
//!   `--flag` after it belongs to that command (`weir weights set --for 1h`: `weights set`);
//! - a span like `set --for` in a paragraph that names `weir weights`: that subcommand's flag;
//! - a row of a flag table (first cell `--flag ...`) under a heading that names one command
//!   (`### weir local`): that command's flag;
//! - any other `--flag` in prose: a flag of some weir command, unless it belongs to another tool
//!   (a span that starts with `cargo`, `kubectl`, `envoy`, ..., or an external-dns flag in a
//!   paragraph that names external-dns).
//!
//! A failure names the doc, the line and the flag.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// external-dns's flags that the docs compare weir's with (each only in a paragraph naming it).
const EXTERNAL_DNS_FLAGS: &[&str] =
    &["txt-owner-id", "txt-prefix", "txt-suffix", "txt-encrypt-enabled", "txt-wildcard-replacement", "domain-filter"];

/// Flags of `weir` itself, by command path (`""`, `xds`, `weights set`), from `--help`.
struct Help {
    flags: BTreeMap<String, BTreeSet<String>>,
}

impl Help {
    fn load() -> Self {
        let mut flags = BTreeMap::new();
        let top = help(&[]);
        let top_flags = options(&top);
        flags.insert(String::new(), top_flags.clone());
        for cmd in subcommands(&top) {
            let text = help(&[&cmd]);
            let mut own = options(&text);
            own.extend(top_flags.iter().cloned());
            for sub in subcommands(&text) {
                let mut sub_flags = options(&help(&[&cmd, &sub]));
                sub_flags.extend(own.iter().cloned());
                flags.insert(format!("{cmd} {sub}"), sub_flags);
            }
            flags.insert(cmd, own);
        }
        Self { flags }
    }

    fn command(&self, path: &str) -> Option<&BTreeSet<String>> {
        self.flags.get(path)
    }

    fn is_subcommand(&self, path: &str) -> bool {
        !path.is_empty() && self.flags.contains_key(path)
    }

    fn any(&self, flag: &str) -> bool {
        self.flags.values().any(|f| f.contains(flag))
    }
}

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weir")).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "weir {args:?} --help: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The long options of a help text (`  -c, --cluster-name <NAME>  ...`).
fn options(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = if l.starts_with('-') && l.as_bytes().get(2) == Some(&b',') { l[3..].trim_start() } else { l };
            let name = l.strip_prefix("--")?;
            Some(name.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).next()?.to_string())
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// The names under `Commands:` (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

/// One use of a flag that does not hold.
#[derive(Debug)]
struct Bad {
    doc: String,
    line: usize,
    flag: String,
    why: String,
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: --{}: {}", self.doc, self.line, self.flag, self.why)
    }
}

/// The `--flag` names in `text` (`--to=50` → `to`).
fn flags_in(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("--") {
        let at = i + pos;
        let before_ok = at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'-');
        let name: String =
            text[at + 2..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-').collect();
        if before_ok && name.starts_with(|c: char| c.is_ascii_lowercase()) {
            out.push(name.trim_end_matches('-').to_string());
        }
        i = at + 2 + name.len();
    }
    out
}

/// What a command segment starts with.
enum Head {
    /// `weir <path>`: its flags belong to that command.
    Weir(String),
    /// Another program: its flags are not weir's.
    Foreign,
    /// Text that starts with a flag or a plain word: prose.
    Prose,
}

const FOREIGN_TOOLS: &[&str] = &[
    "cargo",
    "kubectl",
    "helm",
    "envoy",
    "aws",
    "soak",
    "docker",
    "python",
    "python3",
    "curl",
    "dig",
    "promtool",
    "external-dns",
    "moto_server",
    "git",
    "sqlite3",
    "kind",
    "nice",
    "grpcurl",
    "jq",
    "make",
    // The integration-tests package's test binaries (`integration-tests --test k8s_fencing`).
    "integration-tests",
];

fn head(help: &Help, tokens: &[&str]) -> Head {
    let tokens: Vec<&str> = tokens
        .iter()
        .copied()
        .skip_while(|t| t.contains('=') && t.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        .skip_while(|t| *t == "$" || *t == "sudo")
        .collect();
    let Some(first) = tokens.first() else { return Head::Prose };
    let rest: &[&str] = if *first == "weir" || first.ends_with("/weir") {
        &tokens[1..]
    } else if *first == "cargo" && tokens.get(1) == Some(&"run") {
        match tokens.iter().position(|t| *t == "--") {
            // `cargo run -p integration-tests --bin soak -- ...` runs another binary.
            Some(p) if !tokens[..p].iter().any(|t| *t == "--bin" || *t == "-p") => &tokens[p + 1..],
            _ => return Head::Foreign,
        }
    } else if FOREIGN_TOOLS.contains(first) || first.starts_with("scripts/") || first.starts_with("./") {
        return Head::Foreign;
    } else {
        return Head::Prose;
    };
    let mut path = String::new();
    for t in rest.iter().take(2) {
        let candidate = if path.is_empty() { t.to_string() } else { format!("{path} {t}") };
        if help.is_subcommand(&candidate) {
            path = candidate;
        } else {
            break;
        }
    }
    if path.is_empty() && !rest.first().is_some_and(|t| t.starts_with("--")) {
        // `weir xDS holds 10000 ADS streams`: a message that starts with weir's name.
        return Head::Prose;
    }
    Head::Weir(path)
}

struct Checker<'a> {
    help: &'a Help,
    doc: String,
    bad: Vec<Bad>,
    checked: usize,
    /// The section (since the last heading) so far names external-dns.
    section_names_external_dns: bool,
}

impl Checker<'_> {
    fn fail(&mut self, line: usize, flag: &str, why: String) {
        self.bad.push(Bad { doc: self.doc.clone(), line, flag: flag.to_string(), why });
    }

    /// Flags of the command `path` named on `line` in `text`.
    fn command(&mut self, line: usize, path: &str, text: &str) {
        let Some(known) = self.help.command(path) else { return };
        let missing: Vec<String> = flags_in(text).into_iter().filter(|f| !known.contains(f)).collect();
        self.checked += 1;
        for flag in missing {
            self.fail(line, &flag, format!("not in `weir {path} --help` (in `{}`)", text.trim()));
        }
    }

    /// A flag in prose: some weir command's, or another tool's by context.
    fn prose(&mut self, line: usize, flag: &str, paragraph: &str) {
        self.checked += 1;
        if self.help.any(flag) {
            return;
        }
        if EXTERNAL_DNS_FLAGS.contains(&flag) && (paragraph.contains("external-dns") || self.section_names_external_dns)
        {
            return;
        }
        self.fail(line, flag, "no weir command has it (and it is no other tool's here)".into());
    }

    /// One command segment (of a code line or an inline span).
    fn segment(&mut self, line: usize, segment: &str, paragraph: &str, weights_named: bool) {
        let segment = &without_placeholders(segment);
        let tokens: Vec<&str> = segment.split_whitespace().collect();
        match head(self.help, &tokens) {
            Head::Weir(path) => self.command(line, &path, segment),
            Head::Foreign => {}
            Head::Prose => {
                // `set --for`, `ramp --to` in a paragraph about `weir weights`.
                if let Some(first) = tokens.first() {
                    let sub = format!("weights {first}");
                    if weights_named && self.help.is_subcommand(&sub) && tokens.len() > 1 {
                        return self.command(line, &sub, segment);
                    }
                }
                for flag in flags_in(segment) {
                    self.prose(line, &flag, paragraph);
                }
            }
        }
    }
}

/// `<dir with a copy>` → `<>`: a placeholder is one token.
fn without_placeholders(text: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            // `<dir ...>`, not `x < y`.
            '<' if depth > 0 || chars.peek().is_some_and(|c| c.is_ascii_alphanumeric()) => {
                depth += 1;
                if depth == 1 {
                    out.push_str("<>");
                }
            }
            '>' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            _ => out.push(ch),
        }
    }
    out
}

fn split_segments(text: &str) -> Vec<String> {
    // `\|` is a pipe inside a table cell, not a shell pipe.
    let text = text.replace("\\|", "\u{1}");
    text.split(['|', ';']).flat_map(|s| s.split("&&")).map(|s| s.replace('\u{1}', "|")).collect()
}

/// The commands a heading names (`### \`weir local\``).
fn heading_commands(help: &Help, heading: &str) -> Vec<String> {
    let mut out = Vec::new();
    for span in heading.split('`').skip(1).step_by(2) {
        if let Head::Weir(path) = head(help, &span.split_whitespace().collect::<Vec<_>>()) {
            if !path.is_empty() {
                out.push(path);
            }
        }
    }
    out
}

fn check_doc(help: &Help, root: &Path, path: &Path) -> (Vec<Bad>, usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let doc = path.strip_prefix(root).unwrap().display().to_string();
    let mut c = Checker { help, doc, bad: Vec::new(), checked: 0, section_names_external_dns: false };
    let lines: Vec<&str> = text.lines().collect();
    let mut scope: Vec<(usize, Vec<String>)> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if let Some(lang) = trimmed.strip_prefix("```") {
            let lang = lang.trim().to_string();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                let start = i;
                let mut logical = lines[i].to_string();
                while logical.ends_with('\\') && i + 1 < lines.len() {
                    logical.pop();
                    i += 1;
                    logical.push(' ');
                    logical.push_str(lines[i]);
                }
                let (code, comment) = match logical.find('#') {
                    Some(p) if p == 0 || logical[..p].ends_with(' ') => (&logical[..p], &logical[p..]),
                    _ => (logical.as_str(), ""),
                };
                if matches!(lang.as_str(), "yaml" | "json") {
                    for flag in flags_in(code) {
                        c.prose(start + 1, &flag, code);
                    }
                } else {
                    for seg in code.split(['|', ';']).flat_map(|s| s.split("&&")).flat_map(|s| s.split("$(")) {
                        let tokens: Vec<&str> = seg.split_whitespace().collect();
                        if let Head::Weir(path) = head(help, &tokens) {
                            c.command(start + 1, &path, seg);
                        }
                    }
                }
                for flag in flags_in(comment) {
                    c.prose(start + 1, &flag, comment);
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        if let Some(level) = trimmed.strip_prefix('#').map(|_| trimmed.chars().take_while(|c| *c == '#').count()) {
            scope.retain(|(l, _)| *l < level);
            scope.push((level, heading_commands(help, trimmed)));
            c.section_names_external_dns = trimmed.contains("external-dns");
            i += 1;
            continue;
        }
        if trimmed.is_empty() {
            i += 1;
            continue;
        }
        // A paragraph: up to a blank line, a heading, a fence, or the next list item or table row.
        let starts_block = |l: &str| {
            let t = l.trim_start();
            t.starts_with('|')
                || t.starts_with("- ")
                || t.starts_with("* ")
                || t.starts_with('#')
                || t.starts_with("```")
                || t.split_once(". ").is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        };
        let first = i;
        let mut para = vec![line];
        i += 1;
        while !trimmed.starts_with('|') && i < lines.len() && !lines[i].trim().is_empty() && !starts_block(lines[i]) {
            para.push(lines[i]);
            i += 1;
        }
        let joined = para.join("\n");
        c.section_names_external_dns |= joined.contains("external-dns");
        let line_of = |offset: usize| first + 1 + joined[..offset].matches('\n').count();
        let weights_named = joined.contains("weir weights");
        // A flag table row under a heading that names one command.
        let heading_cmd = scope.iter().rev().find(|(_, cmds)| !cmds.is_empty()).map(|(_, cmds)| cmds.clone());
        if let (Some(cmds), Some(cell)) = (heading_cmd, trimmed.strip_prefix('|')) {
            let cell = cell.split('|').next().unwrap_or_default().trim().trim_matches('`');
            if cmds.len() == 1 && cell.starts_with("--") {
                c.command(first + 1, &cmds[0], cell);
            }
        }
        let mut rest = String::new();
        let mut spans = joined.split('`');
        let mut offset = 0;
        let mut in_span = false;
        for part in spans.by_ref() {
            if in_span {
                let span = part.replace('\n', " ");
                for seg in split_segments(&span) {
                    c.segment(line_of(offset), &seg, &joined, weights_named);
                }
            } else {
                rest.push_str(part);
                rest.push(' ');
                for flag in flags_in(part) {
                    let at = part.find(&format!("--{flag}")).unwrap_or(0);
                    c.prose(line_of(offset + at), &flag, &joined);
                }
            }
            offset += part.len() + 1;
            in_span = !in_span;
        }
    }
    let mut seen = BTreeSet::new();
    c.bad.retain(|b| seen.insert((b.line, b.flag.clone())));
    (c.bad, c.checked)
}

fn docs(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    out.extend(docs);
    out
}

#[test]
fn every_flag_the_docs_name_is_in_the_help_of_its_command() {
    let help = Help::load();
    assert!(help.command("weights set").is_some_and(|f| f.contains("for")), "{:?}", help.flags.keys());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut bad = Vec::new();
    let mut checked = 0;
    for doc in docs(root) {
        let (b, n) = check_doc(&help, root, &doc);
        bad.extend(b);
        checked += n;
    }
    // The parser must see the docs' commands at all (a broken parser would pass vacuously).
    assert!(checked > 400, "only {checked} flag uses found");
    eprintln!("{checked} flag uses checked");
    assert!(
        bad.is_empty(),
        "{} flag uses do not hold:\n{}",
        bad.len(),
        bad.iter().map(|b| format!("  {b}\n")).collect::<String>()
    );
}

#[test]
fn a_command_line_is_checked_against_its_own_command() {
    let help = Help::load();
    let root = std::env::temp_dir().join(format!("weir-docs-flags-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let doc = root.join("x.md");
    std::fs::write(
        &doc,
        "Run `weir xds --db d` and\n`weir weights set eu 0 --for 10m\n--reson drill`.\n\n\
         ### `weir local`\n\n| `--cluster-name N` | x |\n| `--xds-state P` | x |\n\n\
         ```sh\nweir plan \\\n  --dns-provider embedded --bogus\n```\n\nexternal-dns's `--txt-owner-id`; `--nonesuch`.\n",
    )
    .unwrap();
    let (bad, _) = check_doc(&help, &root, &doc);
    let got: Vec<String> = bad.iter().map(|b| format!("{}:{} {}", b.doc, b.line, b.flag)).collect();
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(got, ["x.md:1 db", "x.md:2 reson", "x.md:8 xds-state", "x.md:11 bogus", "x.md:15 nonesuch"]);
}
