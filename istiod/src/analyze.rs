//! `istiod analyze`: Istio's `istioctl analyze` over YAML files and
//! folders, or over a cluster's objects (with files applied over them),
//! with the [`analysis`] crate's analyzers.

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
    /// Analyse a cluster: its objects read from the API server (this
    /// kubeconfig, else `KUBECONFIG` / `~/.kube/config` / in cluster),
    /// with `paths` applied over them (istioctl's default mode).
    pub cluster: Option<Option<PathBuf>>,
    /// With `cluster`: report on every namespace, not only `namespace`
    /// (istioctl's `--all-namespaces`).
    pub all_namespaces: bool,
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

/// Reads the cluster (with `options.cluster`), then `options.paths` over
/// it, runs every analyzer, and renders the report.
///
/// # Errors
/// A path or mesh config file that cannot be read (named), a mesh config
/// that does not parse, no client configuration, or a collection the API
/// server refuses to list (named).
pub fn run(options: &Options) -> anyhow::Result<Report> {
    let mut input = Input::new(&options.namespace);
    if let Some(kubeconfig) = &options.cluster {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(read_cluster(&mut input, kubeconfig.as_deref()))?;
    }
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
    if options.cluster.is_none() {
        input.add_default_ingress();
    }
    let mut messages = analysis::analyze(&input, analysis::ALL);
    if options.cluster.is_some() && !options.all_namespaces {
        messages.retain(|m| {
            m.resource.as_ref().is_none_or(|r| {
                r.namespace
                    .as_deref()
                    .is_none_or(|ns| ns == options.namespace)
            })
        });
    }
    Ok(report(&messages, options))
}

/// Workload kinds read from a cluster besides what the daemon watches:
/// `(apiVersion, kind, plural)`; each is read as the pod of its template.
const WORKLOADS: [(&str, &str, &str); 5] = [
    ("apps/v1", "Deployment", "deployments"),
    ("apps/v1", "StatefulSet", "statefulsets"),
    ("apps/v1", "DaemonSet", "daemonsets"),
    ("batch/v1", "Job", "jobs"),
    ("batch/v1", "CronJob", "cronjobs"),
];

/// Lists every collection the daemon watches, and the workloads, into
/// `input`, each object referenced by its API path. A collection the
/// server does not serve (`404`, a CRD not installed) is empty.
///
/// # Errors
/// No client configuration; a list refused for another reason (named).
async fn read_cluster(input: &mut Input, kubeconfig: Option<&Path>) -> anyhow::Result<()> {
    use kube::api::{Api, ApiResource, DynamicObject, ListParams};
    let source = crate::sources::kube::KubeSource::infer(kubeconfig, "istio-system".into()).await?;
    let client = kube::Client::try_from(source.config)?;
    let mut collections: Vec<(ApiResource, Option<String>)> = Vec::new();
    for w in crate::sources::kube::watched() {
        for resource in std::iter::once(w.resource).chain(w.fallbacks) {
            collections.push((resource, w.field_selector.clone()));
        }
    }
    for (api_version, kind, plural) in WORKLOADS {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        collections.push((
            ApiResource {
                group: group.into(),
                version: version.into(),
                api_version: api_version.into(),
                kind: kind.into(),
                plural: plural.into(),
            },
            None,
        ));
    }
    let mut served = std::collections::HashSet::new();
    for (resource, field_selector) in collections {
        // A kind read at one version is not read again at its fallback.
        if served.contains(&(resource.group.clone(), resource.kind.clone())) {
            continue;
        }
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let mut params = ListParams::default();
        if let Some(f) = &field_selector {
            params = params.fields(f);
        }
        let list = match api.list(&params).await {
            Ok(l) => l,
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => anyhow::bail!("listing {}: {e}", resource.plural),
        };
        served.insert((resource.group.clone(), resource.kind.clone()));
        for object in list.items {
            let namespace = object.metadata.namespace.clone();
            let name = object.metadata.name.clone().unwrap_or_default();
            let base = match resource.group.as_str() {
                "" => format!("/api/{}", resource.version),
                g => format!("/apis/{g}/{}", resource.version),
            };
            let path = match &namespace {
                Some(ns) => format!("{base}/namespaces/{ns}/{}/{name}", resource.plural),
                None => format!("{base}/{}/{name}", resource.plural),
            };
            let mut value = serde_json::to_value(&object)?;
            if let Some(map) = value.as_object_mut() {
                map.insert("apiVersion".into(), resource.api_version.clone().into());
                map.insert("kind".into(), resource.kind.clone().into());
            }
            input.add_value(value, &path);
        }
    }
    Ok(())
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
    let mut parts: Vec<String> = Vec::new();
    if options.cluster.is_some() {
        parts.push(if options.all_namespaces {
            "all namespaces".to_owned()
        } else {
            format!("namespace: {}", options.namespace)
        });
    }
    parts.extend(options.paths.iter().map(|p| p.display().to_string()));
    parts.join(", ")
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
