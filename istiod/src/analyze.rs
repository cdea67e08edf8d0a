//! `istiod analyze`: Istio's `istioctl analyze` over YAML files and
//! folders, with the [`analysis`] crate's analyzers.

use std::path::{Path, PathBuf};

use analysis::{Input, Level, Message};

/// Exit code when analysis finds messages at or above the failure
/// threshold (istioctl's `AnalyzerFoundIssuesError`).
pub const EXIT_ISSUES_FOUND: u8 = 79;

/// How the messages are printed (istioctl's `--output`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per message: `Error [IST0101] (VirtualService default/reviews
    /// file.yaml:3) Referenced host not found: "reviews"`.
    Log,
    /// A JSON array of `{code, documentationUrl, level, message, origin,
    /// reference}`.
    Json,
    /// The same as YAML.
    Yaml,
}

/// What to analyse and how to report it.
#[derive(Clone, Debug)]
pub struct Options {
    /// Files and folders (read recursively: `*.yaml`, `*.yml`, `*.json`);
    /// `-` is standard input.
    pub paths: Vec<PathBuf>,
    /// Namespace of objects written without one.
    pub namespace: String,
    /// A `MeshConfig` YAML file (istioctl's `--meshConfigFile`).
    pub mesh_config: Option<PathBuf>,
    /// Messages below this level are not printed.
    pub output_threshold: Level,
    /// Messages at or above this level make the exit code
    /// [`EXIT_ISSUES_FOUND`].
    pub failure_threshold: Level,
    /// How to print.
    pub format: Format,
    /// `CODE=Kind namespace/name` entries (a `*` in the object matches any
    /// text) whose messages are left out (istioctl's `--suppress`).
    pub suppress: Vec<String>,
}

/// The outcome: what to print on standard output and standard error, and
/// the exit code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The messages in the chosen format (or the all-clear line).
    pub stdout: String,
    /// The summary when the failure threshold is reached.
    pub stderr: String,
    /// 0, or [`EXIT_ISSUES_FOUND`].
    pub code: u8,
}

/// Reads `options.paths`, runs every analyzer, and renders the report.
///
/// # Errors
/// A path or mesh config file that cannot be read (named), or a mesh
/// config that does not parse.
pub fn run(options: &Options) -> anyhow::Result<Report> {
    let mut input = Input::new(&options.namespace);
    if let Some(path) = &options.mesh_config {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        input
            .set_mesh_config(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    for path in &options.paths {
        if path.as_os_str() == "-" {
            input.add_text("-", &std::io::read_to_string(std::io::stdin())?);
            continue;
        }
        for file in files(path)? {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            input.add_text(&file.display().to_string(), &text);
        }
    }
    input.add_default_ingress();
    let messages = analysis::analyze(&input, analysis::ALL);
    Ok(report(&messages, options))
}

/// Renders `messages` as `options` asks.
pub fn report(messages: &[Message], options: &Options) -> Report {
    let kept: Vec<&Message> = messages
        .iter()
        .filter(|m| !options.suppress.iter().any(|s| suppressed(s, m)))
        .collect();
    let failing = kept
        .iter()
        .any(|m| m.kind.level >= options.failure_threshold);
    let shown: Vec<&Message> = kept
        .into_iter()
        .filter(|m| m.kind.level >= options.output_threshold)
        .collect();
    let stdout = match options.format {
        Format::Log if shown.is_empty() => format!(
            "\u{2714} No validation issues found when analyzing {}.\n",
            what(options)
        ),
        Format::Log => shown.iter().map(|m| format!("{m}\n")).collect(),
        Format::Json | Format::Yaml => {
            let values: Vec<serde_json::Value> = shown.iter().map(|m| m.to_json()).collect();
            if options.format == Format::Json {
                serde_json::to_string_pretty(&values).unwrap_or_default() + "\n"
            } else {
                serde_yaml_ng::to_string(&values).unwrap_or_default()
            }
        }
    };
    let stderr = if failing {
        format!(
            "Error: Analyzers found issues when analyzing {}.\nSee {} for more information about causes and resolutions.\n",
            what(options),
            analysis::message::DOCUMENTATION_URL
        )
    } else {
        String::new()
    };
    Report {
        stdout,
        stderr,
        code: if failing { EXIT_ISSUES_FOUND } else { 0 },
    }
}

/// What was analysed, for the summary lines.
fn what(options: &Options) -> String {
    let paths: Vec<String> = options
        .paths
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    paths.join(", ")
}

/// Whether `rule` (`CODE=Kind namespace/name`, `*` matching any text in
/// the object part) suppresses `m`.
fn suppressed(rule: &str, m: &Message) -> bool {
    let Some((code, object)) = rule.split_once('=') else {
        return false;
    };
    let Some(resource) = &m.resource else {
        return false;
    };
    code.trim() == m.kind.code && glob(object.trim(), &resource.friendly_name())
}

/// `pattern` with `*` matching any run of characters, against the whole of
/// `text`.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// `path` itself, or every `*.yaml` / `*.yml` / `*.json` below it, sorted.
fn files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    for entry in entries {
        let p = entry?.path();
        if p.is_dir() {
            out.extend(files(&p)?);
        } else if p
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob(
            "VirtualService default/reviews",
            "VirtualService default/reviews"
        ));
        assert!(glob("VirtualService *", "VirtualService default/reviews"));
        assert!(glob("*/reviews", "VirtualService default/reviews"));
        assert!(glob("*", "anything"));
        assert!(glob("V*default*s", "VirtualService default/reviews"));
        assert!(!glob(
            "VirtualService other/*",
            "VirtualService default/reviews"
        ));
        assert!(!glob("*/review", "VirtualService default/reviews"));
    }
}
