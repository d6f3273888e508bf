//! The guide's runnable blocks (```` ```sh ```` in README.md and docs/*.md) name
//! commands that exist as written: each `analytics-stack …` line is parsed by the CLI
//! itself (its arguments, then `--help`: clap refuses an unknown subcommand, option or
//! a missing value before it prints help, and nothing runs), and each script of the
//! repository a block runs exists and is executable. Running them needs a stack; the
//! end-to-end tests run the same commands against one.

use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The guide's Markdown files.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The command lines of a page's ```` ```sh ```` blocks (continuations joined,
/// comments dropped), with the line each starts on.
fn runnable_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut pending: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            in_block = !in_block && trimmed.trim_start_matches('`').trim() == "sh";
            continue;
        }
        if !in_block {
            continue;
        }
        // A comment starts at `#` at the beginning or after a space (not inside a
        // word, as in `$#` or a URL's fragment).
        let code = match line.find(" #") {
            Some(i) => &line[..i],
            None if trimmed.starts_with('#') => "",
            None => line,
        };
        let (start, mut joined) = pending.take().unwrap_or((n + 1, String::new()));
        joined.push_str(code.trim_end_matches('\\').trim());
        joined.push(' ');
        if code.trim_end().ends_with('\\') {
            pending = Some((start, joined));
        } else if !joined.trim().is_empty() {
            out.push((start, joined.trim().to_string()));
        }
    }
    out
}

/// A command line's words up to the first shell operator (a pipe, a redirection, a
/// list), quotes removed; leading `VAR=value` assignments dropped.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => quote = Some(c),
            (None, '|' | '<' | '>' | ';' | '&') => break,
            (None, c) if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            (None, c) => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let assignments = words
        .iter()
        .take_while(|w| {
            w.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            })
        })
        .count();
    words.split_off(assignments)
}

#[test]
fn every_command_in_the_guides_runnable_blocks_exists_as_written() {
    let cli = env!("CARGO_BIN_EXE_analytics-stack");
    let mut checked = 0;
    let mut scripts = 0;
    let mut wrong = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let name = page.strip_prefix(repo()).unwrap().display().to_string();
        for (line, command) in runnable_lines(&text) {
            let words = words(&command);
            let Some(program) = words.first() else {
                continue;
            };
            if program == "analytics-stack" {
                let out = std::process::Command::new(cli)
                    .args(&words[1..])
                    .arg("--help")
                    .output()
                    .unwrap();
                if !out.status.success() {
                    wrong.push(format!(
                        "{name}:{line}: `{command}`: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                checked += 1;
            } else if ["scripts/", "tests/", "packaging/"]
                .iter()
                .any(|d| program.starts_with(d))
            {
                use std::os::unix::fs::PermissionsExt;
                let path = repo().join(program);
                let executable = std::fs::metadata(&path)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
                if !executable {
                    wrong.push(format!(
                        "{name}:{line}: `{program}` is not an executable of the repository"
                    ));
                }
                scripts += 1;
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "commands of the guide that do not exist as written:\n{}",
        wrong.join("\n")
    );
    // The guide shows its commands: a walk that finds none is a broken walk.
    assert!(
        checked >= 20 && scripts >= 3,
        "{checked} commands, {scripts} scripts"
    );
    eprintln!(
        "[figure] commands of the guide checked: {checked} analytics-stack, {scripts} scripts"
    );
}

#[test]
fn the_walk_reads_blocks_as_a_shell_would() {
    let page = "text\n```sh\nanalytics-stack apply   # comment\n# a comment line\nFOO=1 scripts/up.sh \\\n  --x\nanalytics-stack join 10.0.0.1 --token-file - < w1.token\n```\n```\nanalytics-stack not-runnable\n```\n";
    let lines = runnable_lines(page);
    let commands: Vec<Vec<String>> = lines.iter().map(|(_, l)| words(l)).collect();
    assert_eq!(
        commands,
        [
            vec!["analytics-stack", "apply"],
            vec!["scripts/up.sh", "--x"],
            vec!["analytics-stack", "join", "10.0.0.1", "--token-file", "-"],
        ]
        .map(|v| v.into_iter().map(String::from).collect::<Vec<_>>())
    );
    assert_eq!(lines[1].0, 5, "a continued line is named by its first");
}
