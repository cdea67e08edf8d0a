//! The line of a field in a YAML document, as istioctl points at the
//! field a message is about (Istio's `util.ErrorLine` over the parser's
//! field map) rather than at the document's start.
//!
//! Read from the text itself, for block-style YAML: keys by indentation,
//! list items by their `- `. Where the path goes into flow style
//! (`destination: {host: a}`) or cannot be followed, the deepest line it
//! reached is the answer, so a line is never outside the path.

/// One step of a field path: a map key or a list index.
#[derive(Debug, PartialEq)]
enum Step<'p> {
    Key(&'p str),
    Index(usize),
}

/// `spec.http[0].route[1].destination.host` as steps. A key holding dots
/// (an annotation) is written in brackets and quotes:
/// `metadata.annotations["sidecar.istio.io/inject"]`.
fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        rest = rest.trim_start_matches('.');
        if let Some(quoted) = rest.strip_prefix("[\"") {
            let Some(end) = quoted.find("\"]") else { break };
            out.push(Step::Key(&quoted[..end]));
            rest = &quoted[end + 2..];
        } else if let Some(bracket) = rest.strip_prefix('[') {
            let Some(end) = bracket.find(']') else { break };
            let Ok(i) = bracket[..end].parse() else { break };
            out.push(Step::Index(i));
            rest = &bracket[end + 1..];
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            if end == 0 {
                break;
            }
            out.push(Step::Key(&rest[..end]));
            rest = &rest[end..];
        }
    }
    out
}

/// A line's content: the column its key (or item) starts at, whether it
/// opens a list item (`- `), and the text from that column.
fn content(line: &str) -> Option<(usize, bool, &str)> {
    let indent = line.len() - line.trim_start().len();
    let text = line.trim_start();
    if text.is_empty() || text.starts_with('#') {
        return None;
    }
    match text
        .strip_prefix("- ")
        .or_else(|| (text == "-").then_some(""))
    {
        Some(item) => {
            let inner = item.len() - item.trim_start().len();
            Some((indent + 2 + inner, true, item.trim_start()))
        }
        None => Some((indent, false, text)),
    }
}

/// Whether `text` (a line's content) is the key `key`, plain or quoted.
fn is_key(text: &str, key: &str) -> bool {
    [
        format!("{key}:"),
        format!("\"{key}\":"),
        format!("'{key}':"),
    ]
    .iter()
    .any(|k| text.starts_with(k.as_str()))
}

/// The line (1-based) of the field `path` in the document of `text` that
/// starts on line `start` (1-based), or the deepest line of the path
/// found; `None` when not even its first key is there.
pub fn field_line(text: &str, start: usize, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let first = start.checked_sub(1)?;
    let end = (first + 1..lines.len())
        .find(|&i| lines[i].starts_with("---"))
        .unwrap_or(lines.len());
    // The block being searched: its line range and the column of its
    // keys (`None`: the first content line's).
    let (mut from, mut to, mut column) = (first, end, None::<usize>);
    let mut found = None;
    for step in steps(path) {
        let block_column = match column {
            Some(c) => c,
            None => match (from..to).find_map(|i| content(lines[i])) {
                Some((c, _, _)) => c,
                None => break,
            },
        };
        let hit = match step {
            Step::Key(key) => (from..to).find(|&i| {
                content(lines[i]).is_some_and(|(c, _, t)| c == block_column && is_key(t, key))
            }),
            Step::Index(n) => (from..to)
                .filter(|&i| {
                    content(lines[i]).is_some_and(|(c, item, _)| item && c == block_column)
                })
                .nth(n),
        };
        let Some(line) = hit else { break };
        found = Some(line + 1);
        let Some((c, _, _)) = content(lines[line]) else {
            break;
        };
        // What the step's value spans: the lines after it that are deeper
        // (a list under a key is: its items' column is past the `- `);
        // an item's, up to the next item of its list.
        let is_item = matches!(step, Step::Index(_));
        let next = (line + 1..to)
            .find(|&i| match content(lines[i]) {
                None => false,
                Some((ci, item_i, _)) if is_item => ci < c || (item_i && ci == c),
                Some((ci, _, _)) => ci <= c,
            })
            .unwrap_or(to);
        if is_item {
            // An item's keys: the one on its `- ` line, and those under it
            // at the same column.
            from = line;
            column = Some(c);
        } else {
            from = line + 1;
            column = None;
        }
        to = next;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  annotations:
    sidecar.istio.io/inject: \"true\"
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {prefix: /a}
    route:
    - destination:
        host: reviews
        subset: v1
  - route:
    - destination: {host: ratings}
      weight: 50
    - destination:
        host: details
---
kind: Other
spec:
  http: []
";

    #[test]
    fn fields_are_found_by_indentation_and_items() {
        let at = |path: &str| field_line(VS, 1, path);
        assert_eq!(at("spec.http[0].route[0].destination.host"), Some(14));
        assert_eq!(at("spec.http[0].route[0].destination.subset"), Some(15));
        assert_eq!(at("spec.http[0].match[0].uri"), Some(11));
        // Flow style: the line that holds it.
        assert_eq!(at("spec.http[1].route[0].destination.host"), Some(17));
        assert_eq!(at("spec.http[1].route[1].destination.host"), Some(20));
        assert_eq!(at("spec.http[1].route[0].weight"), Some(18));
        assert_eq!(
            at("metadata.annotations[\"sidecar.istio.io/inject\"]"),
            Some(6)
        );
        assert_eq!(at("spec.hosts"), Some(8));
        // Not there: the deepest line reached; never the next document.
        assert_eq!(at("spec.http[2].route"), Some(9));
        assert_eq!(at("spec.tcp"), Some(7));
        assert_eq!(at("status"), None);
        assert_eq!(field_line(VS, 22, "spec.http"), Some(24));
    }

    #[test]
    fn odd_texts_and_paths_never_fail() {
        let crlf = VS.replace('\n', "\r\n");
        assert_eq!(
            field_line(&crlf, 1, "spec.http[0].route[0].destination.host"),
            Some(14)
        );
        // JSON on one line: the path is not followed.
        assert_eq!(
            field_line(r#"{"spec": {"http": []}}"#, 1, "spec.http"),
            None
        );
        // A start past the end, malformed paths, an empty text.
        assert_eq!(field_line(VS, 999, "spec"), None);
        assert_eq!(field_line(VS, 0, "spec"), None);
        for path in ["", "[", "spec[x]", "spec.http[0", "[\"unterminated", ".."] {
            let _ = field_line(VS, 1, path);
        }
        assert_eq!(field_line("", 1, "spec"), None);
    }
}
