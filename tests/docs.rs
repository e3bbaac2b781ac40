//! The user documentation stays in step with the code it describes:
//! `docs/configuration.md` documents exactly the keys of
//! `gateway.toml.example` (which lists every key the config accepts), section
//! by section, and every relative link in `README.md` and `docs/*.md` points
//! to a file or directory inside the repository (never to `../shared` or
//! anywhere else users cannot see).
//!
//! Plain text scanning, std only: no TOML or Markdown parser is needed for
//! the two line shapes these files use.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

/// Keys per section, e.g. `"server.tls" -> {"cert", "key"}`.
type Sections = BTreeMap<String, BTreeSet<String>>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A bare TOML key as the example and the docs write it.
fn is_key(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The section a header line opens: `[x]`, `[[x]]`, or either commented out
/// as `# [x]` (an optional section shown with its keys).
fn section_header(line: &str) -> Option<String> {
    let rest = line.strip_prefix("# ").unwrap_or(line);
    let rest = rest.strip_prefix('[')?;
    let rest = rest.strip_prefix('[').unwrap_or(rest);
    let end = rest.find(']')?;
    let name = &rest[..end];
    let valid = !name.is_empty() && name.split('.').all(is_key);
    valid.then(|| name.to_string())
}

/// The key a line sets: `key = ...` or `# key = ...`, at the start of the
/// line (indented lines are comment continuations, not keys).
fn key_line(line: &str) -> Option<String> {
    let rest = line.strip_prefix("# ").unwrap_or(line);
    let (key, _) = rest.split_once('=')?;
    if key.starts_with(char::is_whitespace) {
        return None;
    }
    let key = key.trim_end();
    is_key(key).then(|| key.to_string())
}

/// Every key of `gateway.toml.example`, by section, commented-out ones included.
fn example_sections(text: &str) -> Sections {
    let mut sections = Sections::new();
    let mut current: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        if let Some(name) = section_header(line) {
            sections.entry(name.clone()).or_default();
            current = Some(name);
        } else if let Some(key) = key_line(line) {
            let section = current.as_ref().unwrap_or_else(|| {
                panic!(
                    "gateway.toml.example line {}: key `{key}` before any section",
                    i + 1
                )
            });
            sections.get_mut(section).expect("opened above").insert(key);
        }
    }
    sections
}

/// Every key documented in `docs/configuration.md`: the first cell of a
/// table row, written as `` `key` ``, under a `## [section]` (or
/// `## [[section]]`) heading. Any other `##` heading ends the section.
fn doc_sections(text: &str) -> Result<Sections, Vec<String>> {
    let mut sections = Sections::new();
    let mut problems = Vec::new();
    let mut current: Option<String> = None;
    let mut in_fence = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if let Some(heading) = line.strip_prefix("## ") {
            let heading = heading.trim();
            current = None;
            if heading.starts_with('[') {
                match section_header(heading) {
                    Some(name) if heading.trim_matches(|c| c == '[' || c == ']') == name => {
                        if sections.insert(name.clone(), BTreeSet::new()).is_some() {
                            problems.push(format!(
                                "docs/configuration.md line {}: section [{name}] has a second heading",
                                i + 1
                            ));
                        }
                        current = Some(name);
                    }
                    _ => problems.push(format!(
                        "docs/configuration.md line {}: heading {heading:?} is not a section name",
                        i + 1
                    )),
                }
            }
            continue;
        }
        let Some(section) = &current else { continue };
        let Some(row) = line.trim_start().strip_prefix('|') else {
            continue;
        };
        let cell = row.split('|').next().unwrap_or("").trim();
        if let Some(key) = cell
            .strip_prefix('`')
            .and_then(|c| c.strip_suffix('`'))
            .filter(|k| is_key(k))
        {
            let keys = sections.get_mut(section).expect("opened above");
            if !keys.insert(key.to_string()) {
                problems.push(format!(
                    "docs/configuration.md line {}: [{section}] `{key}` is documented twice",
                    i + 1
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(sections)
    } else {
        Err(problems)
    }
}

#[test]
fn configuration_doc_covers_exactly_the_example_keys() {
    let example = example_sections(&read("gateway.toml.example"));
    let docs =
        doc_sections(&read("docs/configuration.md")).unwrap_or_else(|p| panic!("{}", p.join("\n")));

    // The parser itself must see the example's shape, or the comparison
    // below proves nothing.
    for (section, key) in [
        ("server", "listen"),
        ("server.tls", "cert"),
        ("server.tls", "key"),
        ("backends", "ca"),
        ("backends", "tls_insecure_skip_verify"),
        ("auth", "reject_with"),
    ] {
        assert!(
            example.get(section).is_some_and(|k| k.contains(key)),
            "the example parser missed [{section}] {key}: {example:?}"
        );
    }

    let mut problems = Vec::new();
    for (section, keys) in &example {
        let Some(documented) = docs.get(section) else {
            problems.push(format!(
                "docs/configuration.md has no `## [{section}]` section"
            ));
            continue;
        };
        for key in keys.difference(documented) {
            problems.push(format!(
                "[{section}] `{key}` is in gateway.toml.example but not documented in docs/configuration.md"
            ));
        }
    }
    for (section, keys) in &docs {
        let Some(known) = example.get(section) else {
            problems.push(format!(
                "docs/configuration.md documents section [{section}], which gateway.toml.example does not have"
            ));
            continue;
        };
        for key in keys.difference(known) {
            problems.push(format!(
                "docs/configuration.md documents [{section}] `{key}`, which gateway.toml.example does not have"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Markdown without fenced code blocks and inline code spans, where
/// link-like text is not a link.
fn prose(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence {
            out.extend(line.split('`').step_by(2));
        }
        out.push('\n');
    }
    out
}

/// Targets of inline links `[text](target)` and images, and of reference
/// definitions `[label]: target`.
fn link_targets(text: &str) -> Vec<String> {
    let text = prose(text);
    let mut targets = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let end = rest.find(')').unwrap_or(rest.len());
        targets.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    for line in text.lines() {
        let line = line.trim_start();
        if let Some(after) = line.strip_prefix('[')
            && let Some((label, target)) = after.split_once("]:")
            && !label.is_empty()
        {
            targets.push(target.to_string());
        }
    }
    targets
        .into_iter()
        .filter_map(|t| {
            // `<path>` and `path "title"` forms: the path alone.
            let t = t.trim().trim_start_matches('<');
            let t = t.split(|c: char| c.is_whitespace() || c == '>').next()?;
            (!t.is_empty()).then(|| t.to_string())
        })
        .collect()
}

/// Whether a link leaves the repository's files: a URL, a mail address, or
/// an anchor on the same page.
fn is_external(target: &str) -> bool {
    target.starts_with('#')
        || target.starts_with("//")
        || target.split_once(':').is_some_and(|(scheme, _)| {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        })
}

/// `target` as a path relative to the repository root, resolved from the
/// directory of the page that links it, or `None` if it climbs out of the
/// repository.
fn resolve(page_dir: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['#', '?']).next().unwrap_or("");
    // A leading `/` means the repository root (as on GitHub).
    let mut parts: Vec<String> = if path.starts_with('/') {
        Vec::new()
    } else {
        page_dir
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect()
    };
    for c in Path::new(path.trim_start_matches('/')).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

#[test]
fn relative_links_point_into_the_repository() {
    let root = root();
    let mut pages = vec![PathBuf::from("README.md")];
    let docs = root.join("docs");
    let mut doc_pages: Vec<PathBuf> = fs::read_dir(&docs)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", docs.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .map(|p| PathBuf::from("docs").join(p.file_name().expect("a file")))
        .collect();
    doc_pages.sort();
    pages.extend(doc_pages);

    let mut checked = 0;
    let mut problems = Vec::new();
    for page in &pages {
        let text = read(page.to_str().expect("UTF-8 path"));
        let dir = page.parent().unwrap_or(Path::new(""));
        for target in link_targets(&text) {
            if is_external(&target) {
                continue;
            }
            checked += 1;
            if target.contains("../shared") {
                problems.push(format!(
                    "{}: link {target:?} points to ../shared, which is outside the repository",
                    page.display()
                ));
                continue;
            }
            match resolve(dir, &target) {
                None => problems.push(format!(
                    "{}: link {target:?} leaves the repository",
                    page.display()
                )),
                Some(rel) if !root.join(&rel).exists() => problems.push(format!(
                    "{}: link {target:?} points to {}, which does not exist",
                    page.display(),
                    rel.display()
                )),
                Some(_) => {}
            }
        }
    }
    assert!(
        checked > 10,
        "only {checked} relative links found in {pages:?}: the link scanner is broken"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn scanners_read_the_shapes_they_claim() {
    assert_eq!(section_header("[server]").as_deref(), Some("server"));
    assert_eq!(section_header("[[backends]]").as_deref(), Some("backends"));
    assert_eq!(
        section_header("# [server.tls]                     # optional").as_deref(),
        Some("server.tls")
    );
    assert_eq!(
        section_header("# Only server.listen and [[backends]]"),
        None
    );
    assert_eq!(key_line("listen = \"x\"").as_deref(), Some("listen"));
    assert_eq!(key_line("# cert = \"/etc/c.pem\"").as_deref(), Some("cert"));
    assert_eq!(
        key_line("                                   # drains = x"),
        None
    );
    assert_eq!(
        key_line("# Validate with:  wsgate check -c gateway.toml"),
        None
    );

    let doc = "## Rules\n| `listen` | x |\n## [server]\n| key | default |\n|---|---|\n| `listen` | required | text |\n```\n| `fenced` | x |\n```\n## [[backends]]\n| `name` | required | x |\n";
    let sections = doc_sections(doc).expect("valid");
    assert_eq!(
        sections,
        Sections::from([
            ("server".to_string(), BTreeSet::from(["listen".to_string()])),
            ("backends".to_string(), BTreeSet::from(["name".to_string()])),
        ])
    );

    let links = link_targets(
        "[a](docs/x.md) `[b](code.md)` [c](https://e.com) [d](../shared/SPEC.md#x \"t\")\n```\n[e](fenced.md)\n```\n[f]: other.md\n",
    );
    assert_eq!(
        links,
        [
            "docs/x.md",
            "https://e.com",
            "../shared/SPEC.md#x",
            "other.md"
        ]
    );
    assert!(is_external("https://e.com") && is_external("#anchor") && is_external("mailto:a@b"));
    assert!(!is_external("docs/x.md"));
    assert_eq!(
        resolve(Path::new("docs"), "../README.md#x"),
        Some(PathBuf::from("README.md"))
    );
    assert_eq!(resolve(Path::new(""), "../shared/SPEC.md"), None);
    assert_eq!(resolve(Path::new("docs"), "../../shared/SPEC.md"), None);
}
