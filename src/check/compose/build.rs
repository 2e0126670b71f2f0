//! `build:` of a service: the short form (a context) or the mapping, turned
//! into a [`Build`] whose context is the files of the commit's snapshot —
//! so what is built is what is committed — with `.dockerignore` applied.
//!
//! A git (or other) URL context is left to the engine (the build API's
//! `remote` parameter). A context or Dockerfile outside the repository is
//! an error at its line. The engine's classic builder is what driftless
//! drives, so a Dockerfile that needs BuildKit (`# syntax=`, `RUN --mount`,
//! heredocs, `COPY --chmod` and the like) is refused naming its line.

use std::sync::Arc;

use super::Ctx;
use crate::diag::Diagnostic;
use crate::model::compose::{Build, BuildContext, ContextFile, SYMLINK_MODE};
use crate::source::{SourceError, join_relative};
use crate::yaml::{Node, Value};

/// Build keys only BuildKit (or the Compose CLI around it) implements: the
/// Engine API's classic builder has no parameter for them.
fn buildkit_only(key: &str) -> Option<&'static str> {
    Some(match key {
        "additional_contexts" => "named build contexts",
        "ssh" => "SSH agent forwarding into the build",
        "secrets" => "build secrets",
        "cache_to" => "cache export",
        "platforms" => "multi-platform builds",
        "privileged" => "privileged builds",
        "entitlements" => "build entitlements",
        "provenance" => "provenance attestations",
        "sbom" => "SBOM attestations",
        "ulimits" => "build ulimits",
        _ => return None,
    })
}

/// Reads `build:` at `node` (`path` is its object path).
pub(crate) fn build(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Build> {
    let mut context = None;
    let mut dockerfile: Option<(String, &Node)> = None;
    let mut inline: Option<(String, &Node)> = None;
    let mut b = Build::new(BuildContext::Remote { url: String::new() }, "");
    let mut ok = true;
    match &node.value {
        Value::Map(fields) => {
            for (k, v) in fields {
                let Some(key) = ctx.key(k, path) else {
                    continue;
                };
                let fp = format!("{path}.{key}");
                match key {
                    "context" => context = ctx.text(v, &fp).map(|c| (c, v)),
                    "dockerfile" => dockerfile = ctx.text(v, &fp).map(|d| (d, v)),
                    "dockerfile_inline" => inline = ctx.text(v, &fp).map(|d| (d, v)),
                    "args" => {
                        for e in ctx.entries(v, &fp, '=') {
                            // Like `--build-arg KEY`: a bare key takes the
                            // variable, and is not passed when there is none.
                            if let Some(value) = e.value.or_else(|| ctx.vars.get(&e.key).cloned()) {
                                b.args.insert(e.key, value);
                            }
                        }
                    }
                    "target" => b.target = ctx.text(v, &fp).filter(|t| !t.is_empty()),
                    "labels" => b.labels = ctx.labels(v, &fp),
                    "network" => b.network = ctx.text(v, &fp).filter(|n| !n.is_empty()),
                    "extra_hosts" => b.extra_hosts = super::service::extra_hosts(ctx, v, &fp),
                    "tags" => {
                        for (tag, at) in ctx.texts(v, &fp) {
                            if let Some(why) = super::reference::problem(&tag) {
                                ctx.report(
                                    Diagnostic::error(format!("invalid image reference `{tag}`: {why}"))
                                        .hint("write `[registry/]repository[:tag]`, the name the built image is also tagged with"),
                                    at,
                                    &fp,
                                );
                            } else if !b.tags.contains(&tag) {
                                b.tags.push(tag);
                            }
                        }
                    }
                    "shm_size" => b.shm_size = ctx.bytes(v, &fp),
                    "cache_from" => {
                        b.cache_from = ctx.texts(v, &fp).into_iter().map(|(t, _)| t).collect()
                    }
                    "no_cache" => b.no_cache = ctx.bool(v, &fp).unwrap_or(false),
                    "pull" => b.pull = ctx.bool(v, &fp).unwrap_or(false),
                    "isolation" => ctx.cannot_apply(
                        k,
                        &fp,
                        "build.isolation",
                        "only Windows engines isolate builds",
                    ),
                    x if x.starts_with("x-") => {}
                    other => match buildkit_only(other) {
                        Some(what) => {
                            ok = false;
                            ctx.unsupported_with(
                                k,
                                &fp,
                                &format!(
                                    "`{other}` ({what}) needs BuildKit, and driftless builds with the Engine API's classic builder; \
                                     build this image in CI and reference it with `image:`"
                                ),
                            )
                        }
                        None => ctx.unsupported(k, &fp),
                    },
                }
            }
        }
        _ => context = ctx.text(node, path).map(|c| (c, node)),
    }
    if !ok {
        return None;
    }
    let (context, at) = context.unwrap_or_else(|| (".".to_owned(), node));
    let file = at.file.as_deref().unwrap_or(ctx.input.file).to_owned();
    let object = format!("{path}.context");

    if is_remote(&context) {
        if let Some((_, n)) = inline {
            ctx.report(
                Diagnostic::error("`dockerfile_inline` cannot be used with a remote context")
                    .hint("the engine fetches a remote context itself; commit the Dockerfile to it, or use a context in this repository"),
                n,
                &format!("{path}.dockerfile_inline"),
            );
            return None;
        }
        b.dockerfile = dockerfile.map_or_else(|| "Dockerfile".to_owned(), |(d, _)| d);
        b.context = BuildContext::Remote { url: context };
        return Some(b);
    }

    let dir = match context_dir(&file, &context) {
        Ok(dir) => dir,
        Err(e) => {
            ctx.report(
                Diagnostic::error(format!("build context `{context}` is outside the repository: {e}"))
                    .hint("what is built is what is committed: put the context in the repository, relative to the Compose file"),
                at,
                &object,
            );
            return None;
        }
    };
    let listed = (ctx.input.is_dir)(&dir);
    if listed.is_empty() {
        ctx.report(
            Diagnostic::error(format!(
                "build context `{context}` (`{}`) is not a directory in the repository",
                display_dir(&dir)
            ))
            .hint("commit the context directory, or point `context:` at it"),
            at,
            &object,
        );
        return None;
    }
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let ignore_path = format!("{prefix}.dockerignore");
    let ignore = match ctx.read_text(&ignore_path, None, &object) {
        Some(text) => match Ignore::parse(&text) {
            Ok(ignore) => ignore,
            Err((line, e)) => {
                ctx.diags.push(
                    Diagnostic::error(format!("invalid `.dockerignore` pattern: {e}"))
                        .file(ignore_path)
                        .line(line),
                );
                return None;
            }
        },
        None => Ignore::default(),
    };

    // The Dockerfile: inline, in the context, or elsewhere in the repo.
    let mut extra: Option<ContextFile> = None;
    let (dockerfile_text, dockerfile_repo_path) = match (inline, dockerfile) {
        (Some((text, n)), _) => {
            let file = generated(&text);
            b.dockerfile = file.path.clone();
            extra = Some(file);
            (Some(text), Err(n))
        }
        (None, given) => {
            let (rel, n) = given.map_or_else(|| ("Dockerfile".to_owned(), at), |(d, n)| (d, n));
            let dp = format!("{path}.dockerfile");
            let joined = if rel.starts_with('/') {
                crate::source::normalize(&rel)
            } else {
                crate::source::normalize(&format!("{prefix}{rel}"))
            };
            let repo_path = match joined {
                Ok(p) => p,
                Err(e) => {
                    ctx.report(
                        Diagnostic::error(format!("Dockerfile `{rel}` is outside the repository: {e}"))
                            .hint("give the Dockerfile's path relative to the build context, inside the repository"),
                        n,
                        &dp,
                    );
                    return None;
                }
            };
            if (ctx.input.read)(&repo_path).is_none() {
                ctx.report(
                    Diagnostic::error(format!(
                        "Dockerfile `{repo_path}` is not in the repository"
                    ))
                    .hint("commit it, or name it with `dockerfile:` (relative to the context) or give it inline with `dockerfile_inline:`"),
                    n,
                    &dp,
                );
                return None;
            }
            let text = ctx.read_text(&repo_path, Some(n), &dp)?;
            match repo_path.strip_prefix(&prefix) {
                Some(inside) => {
                    b.dockerfile = inside.to_owned();
                }
                None => {
                    let file = generated(&text);
                    b.dockerfile = file.path.clone();
                    extra = Some(file);
                }
            }
            (Some(text), Ok(repo_path))
        }
    };
    if let Some(text) = &dockerfile_text {
        for (line, problem) in buildkit_syntax(text) {
            let d = Diagnostic::error(format!(
                "{problem} needs BuildKit, and driftless builds with the Engine API's classic builder"
            ))
            .hint("rewrite the step in classic Dockerfile syntax, or build the image in CI and reference it with `image:`");
            match &dockerfile_repo_path {
                Ok(repo_path) => ctx
                    .diags
                    .push(d.file(repo_path.clone()).line(line).object(path.to_owned())),
                Err(n) => ctx.report(d, n, &format!("{path}.dockerfile_inline")),
            }
            ok = false;
        }
    }
    if !ok {
        return None;
    }

    // Symlinks go as links, as the docker CLI sends them: not as a copy
    // of the file a link names, nor as the files of a directory it names.
    // A link named as the Dockerfile is read through, as the builder reads it.
    let links: Vec<(String, String)> = (ctx.input.links_under)(&dir)
        .into_iter()
        .filter_map(|(p, target)| Some((p.strip_prefix(&prefix)?.to_owned(), target)))
        .filter(|(rel, _)| *rel != b.dockerfile)
        .collect();
    let through_link = |rel: &str| {
        links.iter().any(|(link, _)| {
            rel.strip_prefix(link.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    };
    let mut files = Vec::new();
    for (rel, target) in &links {
        if rel != ".dockerignore" && ignore.excludes(rel) {
            continue;
        }
        files.push(ContextFile {
            path: rel.clone(),
            mode: SYMLINK_MODE,
            content: Arc::from(target.as_bytes()),
        });
    }
    for repo_path in listed {
        let Some(rel) = repo_path.strip_prefix(&prefix) else {
            continue;
        };
        if through_link(rel) {
            continue;
        }
        // The Dockerfile and `.dockerignore` are always sent, as the docker
        // CLI sends them (the builder needs them; `COPY` still skips them).
        if rel != b.dockerfile && rel != ".dockerignore" && ignore.excludes(rel) {
            continue;
        }
        let Some(content) = ctx.read_bytes(&repo_path, Some(at), &object) else {
            continue;
        };
        files.push(ContextFile {
            path: rel.to_owned(),
            mode: mode_of((ctx.input.is_executable)(&repo_path)),
            content,
        });
    }
    files.extend(extra);
    files.sort_by(|a, b| a.path.cmp(&b.path));
    b.context = BuildContext::Snapshot { dir, files };
    Some(b)
}

/// Whether a context is a URL the engine fetches: git URLs as the docker
/// CLI recognises them (`git://`, `git@`, `github.com/`, `https://….git`)
/// and other `http(s)://` URLs (a tarball or a Dockerfile).
pub(crate) fn is_remote(context: &str) -> bool {
    [
        "git://",
        "git@",
        "github.com/",
        "http://",
        "https://",
        "ssh://",
    ]
    .iter()
    .any(|p| context.starts_with(p))
}

/// The repo directory a context names, relative to the Compose file
/// (`""`: the repository root).
fn context_dir(file: &str, context: &str) -> Result<String, SourceError> {
    let trimmed = context.trim_end_matches('/');
    let probe = if trimmed.is_empty() {
        // `/` alone: the host's root directory.
        return crate::source::normalize("/");
    } else {
        format!("{trimmed}/.")
    };
    // A path ending in `/.` normalises to the directory itself; the repo
    // root normalises to "empty path", which here means the root.
    match join_relative(file, &probe) {
        Ok(dir) => Ok(dir),
        Err(SourceError::BadPath {
            reason: "empty path",
            ..
        }) => Ok(String::new()),
        Err(e) => Err(e),
    }
}

fn display_dir(dir: &str) -> &str {
    if dir.is_empty() { "." } else { dir }
}

/// A Dockerfile from outside the context (or inline) as a context file,
/// named by its content as the docker CLI names it.
fn generated(text: &str) -> ContextFile {
    use sha2::{Digest, Sha256};
    ContextFile {
        path: format!(".dockerfile.{}", &hex::encode(Sha256::digest(text))[..12]),
        mode: 0o644,
        content: Arc::from(text.as_bytes()),
    }
}

/// The mode a repo file is sent with, from the execute bit git records
/// for it: 0755 for mode 100755, else 0644 (what a checkout gives it with
/// the usual umask, and what the docker CLI would then send).
pub(crate) fn mode_of(executable: bool) -> u32 {
    if executable { 0o755 } else { 0o644 }
}

/// `.dockerignore`: patterns in order, `!` re-includes, a pattern that
/// matches a directory excludes what is under it (moby's patternmatcher).
#[derive(Debug, Default)]
pub(crate) struct Ignore {
    patterns: Vec<(crate::glob::Glob, bool)>,
}

impl Ignore {
    /// Parses the file; an invalid pattern is (line, reason).
    pub(crate) fn parse(text: &str) -> Result<Ignore, (u32, String)> {
        let mut patterns = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exclusion, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let pattern = pattern.trim_start_matches('/');
            let cleaned: Vec<&str> = pattern
                .split('/')
                .filter(|p| !p.is_empty() && *p != ".")
                .collect();
            if cleaned.is_empty() {
                continue;
            }
            let glob = crate::glob::Glob::new(&cleaned.join("/"))
                .map_err(|e| (i as u32 + 1, format!("`{line}`: {e}")))?;
            patterns.push((glob, exclusion));
        }
        Ok(Ignore { patterns })
    }

    /// Whether the context path `path` is left out of the context.
    pub(crate) fn excludes(&self, path: &str) -> bool {
        let mut matched = false;
        let parts: Vec<&str> = path.split('/').collect();
        for (glob, exclusion) in &self.patterns {
            // An inclusion cannot add to a match, an exclusion cannot
            // remove what did not match.
            if *exclusion != matched {
                continue;
            }
            let hit = glob.is_match(path)
                || (1..parts.len()).any(|n| glob.is_match(&parts[..n].join("/")));
            if hit {
                matched = !exclusion;
            }
        }
        matched
    }
}

/// Dockerfile syntax only BuildKit understands, as (line, what).
pub(crate) fn buildkit_syntax(text: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let mut escape = '\\';
    let mut in_directives = true;
    let mut instruction = String::new();
    let mut start = 0u32;
    for (i, raw) in text.lines().enumerate() {
        let n = i as u32 + 1;
        let line = raw.trim();
        if in_directives {
            if let Some(body) = line.strip_prefix('#')
                && let Some((key, value)) = body.split_once('=')
            {
                let key = key.trim().to_ascii_lowercase();
                match key.as_str() {
                    "escape" => {
                        if let Some(c) = value.trim().chars().next() {
                            escape = c;
                        }
                        continue;
                    }
                    "syntax" | "check" => {
                        out.push((n, format!("the `# {key}=` parser directive")));
                        continue;
                    }
                    _ => {}
                }
            }
            in_directives = false;
        }
        if instruction.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if !instruction.is_empty() && line.starts_with('#') {
            continue;
        }
        if instruction.is_empty() {
            start = n;
        }
        match line.strip_suffix(escape) {
            Some(rest) => {
                instruction.push_str(rest);
                instruction.push(' ');
            }
            None => {
                instruction.push_str(line);
                if let Some(problem) = instruction_problem(&instruction) {
                    out.push((start, problem));
                }
                instruction.clear();
            }
        }
    }
    if let Some(problem) = instruction_problem(&instruction) {
        out.push((start, problem));
    }
    out
}

/// What in one (joined) instruction needs BuildKit.
fn instruction_problem(instruction: &str) -> Option<String> {
    let mut words = instruction.split_whitespace();
    let keyword = words.next()?.to_ascii_uppercase();
    let allowed: &[&str] = match keyword.as_str() {
        "RUN" => &[],
        "COPY" => &["chown", "from"],
        "ADD" => &["chown"],
        "FROM" => &["platform"],
        _ => return None,
    };
    let mut rest = words.peekable();
    while let Some(word) = rest.peek() {
        let Some(flag) = word.strip_prefix("--") else {
            break;
        };
        let name = flag.split('=').next().unwrap_or(flag);
        if !allowed.contains(&name) {
            return Some(format!("`{keyword} --{name}`"));
        }
        rest.next();
    }
    if keyword != "FROM" {
        for word in rest {
            if let Some(tag) = word.strip_prefix("<<") {
                let tag = tag.trim_start_matches('-').trim_start_matches(['"', '\'']);
                if tag
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                {
                    return Some(format!("a heredoc (`{keyword} <<{tag}`)"));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_follows_the_pattern_matcher() {
        let ignore =
            Ignore::parse("# comment\n/node_modules\n*.log\n!keep.log\ndocs/**/*.md\ntmp\n\n")
                .unwrap();
        assert!(ignore.excludes("node_modules/a/b.js"));
        assert!(ignore.excludes("debug.log"));
        assert!(!ignore.excludes("keep.log"));
        assert!(
            !ignore.excludes("src/debug.log"),
            "`*` stays in one directory"
        );
        assert!(ignore.excludes("docs/a/b/c.md"));
        assert!(ignore.excludes("docs/c.md"));
        assert!(
            ignore.excludes("tmp/x"),
            "a matched directory excludes its files"
        );
        assert!(!ignore.excludes("src/main.rs"));
        // A later exclusion re-includes a file under an excluded directory.
        let ignore = Ignore::parse("assets\n!assets/keep.txt\n").unwrap();
        assert!(ignore.excludes("assets/a.png"));
        assert!(!ignore.excludes("assets/keep.txt"));
    }

    #[test]
    fn buildkit_only_syntax_is_found_with_its_line() {
        let text = "# syntax=docker/dockerfile:1\nFROM --platform=linux/amd64 busybox AS base\n\
                    RUN echo ok\nRUN --mount=type=cache,target=/root/.cache \\\n    echo cached\n\
                    COPY --chown=1:1 a /a\nCOPY --chmod=755 b /b\nCOPY <<EOF /c\nhello\nEOF\n\
                    RUN echo '<<not a heredoc' && true\n";
        let found = buildkit_syntax(text);
        assert_eq!(
            found,
            vec![
                (1, "the `# syntax=` parser directive".to_owned()),
                (4, "`RUN --mount`".to_owned()),
                (7, "`COPY --chmod`".to_owned()),
                (8, "a heredoc (`COPY <<EOF`)".to_owned()),
            ]
        );
        assert!(buildkit_syntax("FROM scratch\nCOPY a /\nCMD [\"sh\"]\n").is_empty());
        // A directive is only one before the first instruction.
        assert!(buildkit_syntax("FROM scratch\n# syntax=x\n").is_empty());
    }

    #[test]
    fn contexts_resolve_inside_the_repository() {
        assert_eq!(context_dir("compose.yaml", ".").unwrap(), "");
        assert_eq!(context_dir("stacks/a.yaml", ".").unwrap(), "stacks");
        assert_eq!(
            context_dir("stacks/a.yaml", "./app/").unwrap(),
            "stacks/app"
        );
        assert_eq!(context_dir("stacks/a.yaml", "..").unwrap(), "");
        assert!(context_dir("stacks/a.yaml", "../..").is_err());
        assert!(context_dir("a.yaml", "/srv/app").is_err());
        assert!(is_remote("https://github.com/docker/rootfs.git#main"));
        assert!(is_remote("git@github.com:a/b.git"));
        assert!(!is_remote("./app"));
    }
}
