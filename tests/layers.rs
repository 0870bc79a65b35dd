//! The module imports of `src/` point down only: `cli` → `supervise` →
//! `lock`, and no circle anywhere (issue 29 §1).
//!
//! A text scan, std only: every `src/**/*.rs` is stripped of comments,
//! strings and char literals, then every path that starts with `crate::`,
//! `super::`, `self::`, `llmlb::` (how `src/cli` names the library) or a
//! child module's name is resolved to the file module it reaches. Nodes are
//! file modules with their own submodules folded in (`supervise::proxy::linux`
//! counts as `supervise::proxy`); a child using its parent is not an edge
//! (the parent re-exports what its children define), a parent using its
//! child is.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where a reference was seen, for messages: `src/lock/error.rs:104`.
type Site = String;

/// `from` node → `to` node → the first place `from` names `to`.
type Graph = BTreeMap<String, BTreeMap<String, Site>>;

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
    out
}

/// The module path of a file under `src/`: `lock/mod.rs` → `["lock"]`,
/// `lock/info/json.rs` → `["lock", "info", "json"]`, `lib.rs` → `[]` (the
/// crate root), `main.rs` → `["main"]` (the binary, its own root).
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_str().expect("a UTF-8 file name under src/").to_owned())
        .collect();
    let file = parts.pop().unwrap();
    let stem = file.strip_suffix(".rs").unwrap();
    match (parts.is_empty(), stem) {
        (true, "lib") => {}
        (_, "mod") => {}
        _ => parts.push(stem.to_owned()),
    }
    parts
}

/// The node a module belongs to: its first two segments (a file module of
/// `lock`, `supervise` or `cli`, with its own submodules folded in).
fn node_of(module: &[String]) -> String {
    module[..module.len().min(2)].join("::")
}

/// The code of a Rust source without comments, and with every string, raw
/// string and char literal emptied (`""`, `' '`): what is left is only
/// identifiers, punctuation and line breaks (kept, for line numbers).
fn strip(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    // Skips to after position `end` in the input, keeping its line breaks.
    let skip = |out: &mut String, from: usize, to: usize| {
        for &c in &chars[from..to.min(chars.len())] {
            if c == '\n' {
                out.push('\n');
            }
        }
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let prev_ident = i > 0 && ident(chars[i - 1]);
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let (start, mut depth) = (i, 0);
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            skip(&mut out, start, i);
        } else if (c == 'r' || (c == 'b' && next == Some('r'))) && !prev_ident && {
            let r = if c == 'b' { i + 1 } else { i };
            let mut j = r + 1;
            while chars.get(j) == Some(&'#') {
                j += 1;
            }
            chars.get(j) == Some(&'"')
        } {
            // A raw string: r"…", r#"…"#, br"…".
            let start = i;
            let r = if c == 'b' { i + 1 } else { i };
            let mut j = r + 1;
            let mut hashes = 0;
            while chars[j] == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1; // the opening quote
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            skip(&mut out, start, j);
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            let start = i;
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            skip(&mut out, start, i);
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1b}', b'{'), or a lifetime ('a).
            if next == Some('\\') {
                // From after the escaped character: '\'' ends at the third quote.
                let mut j = i + 3;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Semi,
    Other,
}

/// Tokens of stripped code, each with its line (1-based).
fn tokens(code: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((Token::Ident(chars[start..i].iter().collect()), line));
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push((Token::PathSep, line));
            i += 2;
        } else {
            let token = match c {
                '{' => Token::Open,
                '}' => Token::Close,
                ',' => Token::Comma,
                ';' => Token::Semi,
                _ => Token::Other,
            };
            out.push((token, line));
            i += 1;
        }
    }
    out
}

/// A path as written, from where it is written: `(current module, segments,
/// line)`. `current` includes inline modules (`mod tests { … }`), so that
/// `super::` inside one means the file's own module.
type Written = (Vec<String>, Vec<String>, usize);

/// Every path in `code` (a file of module `module`), with use-tree groups
/// expanded (`use super::{a, b::c}` → `super::a`, `super::b::c`).
fn paths(module: &[String], code: &str) -> Vec<Written> {
    let toks = tokens(code);
    let mut out = Vec::new();
    // (brace depth at which an inline module opened, its name)
    let mut inline: Vec<(usize, String)> = Vec::new();
    let mut depth = 0usize;
    let current = |inline: &[(usize, String)]| {
        let mut m = module.to_vec();
        m.extend(inline.iter().map(|(_, n)| n.clone()));
        m
    };
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].0 {
            Token::Open => depth += 1,
            Token::Close => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(d, _)| *d == depth) {
                    inline.pop();
                }
            }
            Token::Ident(word) if word == "mod" => {
                if let (Some((Token::Ident(name), _)), Some((Token::Open, _))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    inline.push((depth, name.clone()));
                }
            }
            // The first segment of a path (not one inside it).
            Token::Ident(_)
                if (i == 0 || toks[i - 1].0 != Token::PathSep)
                    && toks.get(i + 1).map(|t| &t.0) == Some(&Token::PathSep) =>
            {
                let here = current(&inline);
                i = path_tree(&toks, i, Vec::new(), &here, &mut out);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Reads the path (or use tree) starting at `toks[i]`, prefixed by
/// `prefix`, into `out`; returns the index after it.
fn path_tree(
    toks: &[(Token, usize)],
    mut i: usize,
    mut prefix: Vec<String>,
    here: &[String],
    out: &mut Vec<Written>,
) -> usize {
    let line = toks[i].1;
    loop {
        match toks.get(i).map(|t| &t.0) {
            Some(Token::Ident(word)) => {
                prefix.push(word.clone());
                i += 1;
                if toks.get(i).map(|t| &t.0) != Some(&Token::PathSep) {
                    break;
                }
                i += 1;
            }
            Some(Token::Open) => {
                // A group: each item is a tree of its own under `prefix`.
                i += 1;
                loop {
                    match toks.get(i).map(|t| &t.0) {
                        Some(Token::Close) => return i + 1,
                        Some(Token::Comma) => i += 1,
                        // `e as f`: the new name is not a path.
                        Some(Token::Ident(word)) if word == "as" => i += 2,
                        Some(Token::Ident(_)) | Some(Token::Open) => {
                            i = path_tree(toks, i, prefix.clone(), here, out);
                        }
                        None => return i,
                        _ => i += 1, // `*`, `as` renames' punctuation
                    }
                }
            }
            _ => break, // `*`, `<` of a turbofish: the path ends here
        }
    }
    out.push((here.to_vec(), prefix, line));
    i
}

/// The absolute module path a written path starts from, or `None` for a
/// path that leaves this crate's tree (`std::…`, a local name).
fn absolute(
    here: &[String],
    segments: &[String],
    is_main: bool,
    modules: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let first = segments.first()?;
    let mut base: Vec<String> = match first.as_str() {
        "crate" if is_main => vec!["main".to_owned()],
        "crate" | "llmlb" => Vec::new(),
        "self" => here.to_vec(),
        "super" => {
            let mut m = here.to_vec();
            m.pop()?;
            m
        }
        // A child module named without `self::` (2018 paths: `use dir::…`
        // in a mod.rs).
        name => {
            let mut child = here.to_vec();
            child.push(name.to_owned());
            if !modules.contains(&child) {
                return None;
            }
            return Some(
                child
                    .into_iter()
                    .chain(segments[1..].iter().cloned())
                    .collect(),
            );
        }
    };
    let mut rest = &segments[1..];
    while rest.first().is_some_and(|s| s == "super") {
        base.pop()?;
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The graph of `src/` (see the module doc).
fn graph(src: &Path) -> Graph {
    let files = rust_files(src);
    let modules: BTreeSet<Vec<String>> = files
        .iter()
        .map(|f| module_of(f.strip_prefix(src).unwrap()))
        .collect();
    let mut graph = Graph::new();
    for file in &files {
        let relative = file.strip_prefix(src).unwrap();
        let module = module_of(relative);
        let from = node_of(&module);
        let is_main = relative == Path::new("main.rs");
        let source = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        for (here, segments, line) in paths(&module, &strip(&source)) {
            let Some(target) = absolute(&here, &segments, is_main, &modules) else {
                continue;
            };
            // The longest prefix that is a file module is what it reaches.
            let Some(reached) = (0..=target.len())
                .rev()
                .map(|n| target[..n].to_vec())
                .find(|m| modules.contains(m))
            else {
                continue;
            };
            let to = node_of(&reached);
            // The crate root, itself, or an ancestor (a child using its parent).
            let ancestor = from == to || to.is_empty() || from.starts_with(&format!("{to}::"));
            if ancestor {
                continue;
            }
            graph
                .entry(from.clone())
                .or_default()
                .entry(to)
                .or_insert_with(|| format!("src/{}:{line}", relative.display()));
        }
    }
    graph
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// One cycle through each strongly connected component of more than one
/// node, as `a -> b (src/a.rs:3) -> a (src/b.rs:9)`.
fn cycles(graph: &Graph) -> Vec<String> {
    // Tarjan's algorithm, recursive: the graph has a few dozen nodes.
    struct Tarjan<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        components: Vec<Vec<&'g str>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flat_map(|m| m.keys()) {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    self.on_stack.remove(w);
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                self.components.push(component);
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    let mut found = Vec::new();
    for component in t.components.iter().filter(|c| c.len() > 1) {
        let members: BTreeSet<&str> = component.iter().copied().collect();
        // A shortest way back to the start, inside the component (BFS).
        let start = *members.iter().next().unwrap();
        let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut last = None;
        'search: while let Some(v) = queue.pop_front() {
            for w in graph[v].keys().map(String::as_str) {
                if w == start {
                    last = Some(v);
                    break 'search;
                }
                if members.contains(w) && !came_from.contains_key(w) {
                    came_from.insert(w, v);
                    queue.push_back(w);
                }
            }
        }
        // Walked back from the last hop: [last, …, first hop].
        let mut back = Vec::new();
        let mut v = last.expect("a component of two or more has a cycle through each node");
        while v != start {
            back.push(v);
            v = came_from[v];
        }
        let path: Vec<&str> = std::iter::once(start)
            .chain(back.into_iter().rev())
            .chain(std::iter::once(start))
            .collect();
        let mut text = start.to_owned();
        for pair in path.windows(2) {
            let _ = write!(text, " -> {} ({})", pair[1], graph[pair[0]][pair[1]]);
        }
        if members.len() > path.len() - 1 {
            let all: Vec<&str> = members.iter().copied().collect();
            let _ = write!(text, " [one circle of a knot of {}]", all.join(", "));
        }
        found.push(text);
    }
    found
}

/// Layer rule: `lock` names nothing of `supervise` or `cli`, `supervise`
/// nothing of `cli`.
#[test]
fn lower_layers_never_reference_higher_ones() {
    let graph = graph(&src());
    let mut wrong = Vec::new();
    for (from, targets) in &graph {
        let from_top = from.split("::").next().unwrap();
        let above: &[&str] = match from_top {
            "lock" => &["supervise", "cli"],
            "supervise" => &["cli"],
            _ => &[],
        };
        for (to, site) in targets {
            if above.contains(&to.split("::").next().unwrap()) {
                wrong.push(format!("{from} -> {to} ({site})"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "a lower layer reaches up (src/lock must not use supervise or cli, src/supervise not cli); \
         move the piece down or pass it in:\n  {}",
        wrong.join("\n  ")
    );
}

/// No circle among the modules of `src/`.
#[test]
fn no_module_cycle() {
    let found = cycles(&graph(&src()));
    assert!(
        found.is_empty(),
        "module cycles in src/ (move the shared piece into the lower module or a new one):\n  {}",
        found.join("\n  ")
    );
}

/// The scan sees what it must (so the two tests above cannot pass by
/// seeing nothing): known edges of the real tree.
#[test]
fn the_scan_finds_known_references() {
    let graph = graph(&src());
    let has = |from: &str, to: &str| graph.get(from).is_some_and(|m| m.contains_key(to));
    // `use super::notify_socket::{…}` in a file module.
    assert!(
        has("supervise::ready", "supervise::notify_socket"),
        "{graph:#?}"
    );
    // `llmlb::supervise::ready::…` from src/cli/mod.rs.
    assert!(has("cli", "supervise::ready"), "{graph:#?}");
    // `crate::lock::sys::…` from a submodule (notify_socket/linux.rs).
    assert!(has("supervise::notify_socket", "lock::sys"), "{graph:#?}");
    // A parent re-exporting a child (`pub use error::…` in lock/mod.rs).
    assert!(has("lock", "lock::error"), "{graph:#?}");
}

/// Comments, strings and char literals hide nothing and invent nothing;
/// `super::` inside an inline module is the file's own module.
#[test]
fn the_scan_reads_rust_not_text() {
    let source = r##"
        //! crate::cli::a in a doc comment
        use super::{b, c::{d, e as f}}; // crate::cli::x
        /* crate::cli::y /* nested */ crate::cli::z */
        fn g() {
            let _ = "crate::cli::s \" crate::cli::t";
            let _ = r#"crate::cli::raw "# ;
            let _ = ('{', '\'', b'{', '\u{7b}');
            let _: &'static str = self::h::i();
            crate::lock::sys::j();
        }
        #[cfg(test)]
        mod tests {
            use super::*;
            use super::super::k;
        }
        fn after() { llmlb::supervise::ready::x(); }
    "##;
    let module = vec!["supervise".to_owned(), "m".to_owned()];
    let found: Vec<(String, String)> = paths(&module, &strip(source))
        .into_iter()
        .map(|(here, segments, _)| (here.join("::"), segments.join("::")))
        .collect();
    let here = "supervise::m";
    let tests = "supervise::m::tests";
    let expected = [
        (here, "super::b"),
        (here, "super::c::d"),
        (here, "super::c::e"),
        (here, "self::h::i"),
        (here, "crate::lock::sys::j"),
        (tests, "super"),
        (tests, "super::super::k"),
        (here, "llmlb::supervise::ready::x"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(found, expected);
}
