//! Finding a wheel's download URL on a "simple" Python package index: PyPI by default, or the
//! mirror named by `PIP_INDEX_URL`.
//!
//! Asks for the JSON form (PEP 691) and falls back to the HTML form (PEP 503) when a mirror only
//! serves that. Invariant: the URL handed back is absolute and comes with the hash the index
//! lists for exactly the requested file name; the caller compares that hash with its pin before
//! downloading. Cost: one small GET per pull.

use serde::Deserialize;
use std::collections::BTreeMap;

use crate::error::{ModelStoreError, Result};
use crate::http::{HttpClient, Page};

/// The public index.
pub const PYPI_SIMPLE_URL: &str = "https://pypi.org/simple/";
/// The variable pip uses for a mirror; we honour it so one setting serves both.
pub const INDEX_URL_ENV: &str = "PIP_INDEX_URL";

const ACCEPT: &str = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1";

/// A package index and the client that talks to it.
#[derive(Debug, Clone)]
pub struct PackageIndex {
    base: String,
    client: HttpClient,
}

/// One file as the index lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexFile {
    pub filename: String,
    /// Absolute download URL, fragment removed.
    pub url: String,
    /// Lower-case hex, when the index lists one.
    pub sha256: Option<String>,
    pub size: Option<u64>,
}

impl PackageIndex {
    /// The index named by `PIP_INDEX_URL`, else PyPI, with a client that honours proxy variables.
    pub fn from_env() -> Result<Self> {
        Ok(Self::new(
            index_base(std::env::var(INDEX_URL_ENV).ok()),
            HttpClient::new()?,
        ))
    }

    /// An index rooted at `base` (e.g. `https://pypi.org/simple/`).
    pub fn new(base: impl Into<String>, client: HttpClient) -> Self {
        Self {
            base: base.into(),
            client,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn client(&self) -> &HttpClient {
        &self.client
    }

    /// The project's page: `<base>/<normalized name>/`.
    pub fn project_url(&self, project: &str) -> String {
        format!("{}/{}/", self.base.trim_end_matches('/'), normalize_project(project))
    }

    /// The listing of `filename` in `project`.
    pub(crate) fn find_file(&self, project: &str, filename: &str) -> Result<IndexFile> {
        let url = self.project_url(project);
        let page = self.client.get_page(&url, ACCEPT)?;
        let index_error = |reason: String| ModelStoreError::Index {
            url: redact_url(&url),
            reason,
        };
        let files = parse_listing(&page).map_err(index_error)?;
        if let Some(file) = files.iter().find(|f| f.filename == filename) {
            return Ok(file.clone());
        }
        let listed: Vec<&str> = files.iter().rev().take(8).map(|f| f.filename.as_str()).collect();
        Err(index_error(format!(
            "no file `{filename}` listed ({} files; latest: {})",
            files.len(),
            if listed.is_empty() {
                "none".to_owned()
            } else {
                listed.join(", ")
            }
        )))
    }
}

/// `PIP_INDEX_URL` if set and non-empty, else PyPI.
pub(crate) fn index_base(env_value: Option<String>) -> String {
    env_value
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| PYPI_SIMPLE_URL.to_owned())
}

/// PEP 503 name normalization: lower case, runs of `-`, `_`, `.` become one `-`.
pub(crate) fn normalize_project(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_separator = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_separator {
                out.push('-');
            }
            in_separator = true;
        } else {
            out.push(c.to_ascii_lowercase());
            in_separator = false;
        }
    }
    out
}

/// Hides `user:password@` in a URL so it can appear in messages.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    match url[authority_start..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..authority_start], &url[authority_start + at..]),
        None => url.to_owned(),
    }
}

#[derive(Deserialize)]
struct JsonProject {
    files: Vec<JsonFile>,
}

#[derive(Deserialize)]
struct JsonFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: BTreeMap<String, String>,
    size: Option<u64>,
}

/// Every file on a project page, in the index's order, with absolute URLs.
pub(crate) fn parse_listing(page: &Page) -> Result<Vec<IndexFile>, String> {
    let content_type = page.content_type.as_deref().unwrap_or("");
    let is_json =
        content_type.contains("json") || (!content_type.contains("html") && page.body.trim_start().starts_with('{'));
    if is_json {
        let project: JsonProject =
            serde_json::from_str(&page.body).map_err(|e| format!("malformed JSON project page: {e}"))?;
        Ok(project
            .files
            .into_iter()
            .map(|f| IndexFile {
                url: join_url(&page.url, strip_fragment(&f.url)),
                sha256: f.hashes.get("sha256").map(|h| h.to_ascii_lowercase()),
                size: f.size,
                filename: f.filename,
            })
            .collect())
    } else {
        Ok(parse_html_anchors(&page.body)
            .into_iter()
            .map(|(href, text)| {
                let (link, fragment) = href.split_once('#').unwrap_or((&href, ""));
                IndexFile {
                    url: join_url(&page.url, link),
                    sha256: fragment.strip_prefix("sha256=").map(|h| h.to_ascii_lowercase()),
                    size: None,
                    filename: text,
                }
            })
            .collect())
    }
}

fn strip_fragment(url: &str) -> &str {
    url.split_once('#').map_or(url, |(before, _)| before)
}

/// `(href, text)` of every `<a …>text</a>` in a PEP 503 page, entities decoded. PEP 503 pages
/// are machine-generated and flat, so a scan for anchors suffices; no general HTML parser.
fn parse_html_anchors(body: &str) -> Vec<(String, String)> {
    let lower = body.to_ascii_lowercase();
    let mut anchors = Vec::new();
    let mut pos = 0;
    while let Some(found) = lower[pos..].find("<a") {
        let tag_start = pos + found;
        pos = tag_start + 2;
        if !lower[pos..].starts_with(|c: char| c.is_ascii_whitespace()) {
            continue;
        }
        let Some(tag_len) = lower[pos..].find('>') else {
            break;
        };
        let tag_end = pos + tag_len;
        let Some(text_len) = lower[tag_end..].find("</a") else {
            break;
        };
        let text = &body[tag_end + 1..tag_end + text_len];
        if let Some(href) = attribute(&body[pos..tag_end], &lower[pos..tag_end], "href") {
            anchors.push((unescape_html(href), unescape_html(text.trim())));
        }
        pos = tag_end + text_len;
    }
    anchors
}

/// The value of attribute `name` in a tag's attribute text (`lower` is its lower-cased copy).
fn attribute<'a>(attrs: &'a str, lower: &str, name: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(i) = lower[from..].find(name) {
        let start = from + i;
        from = start + name.len();
        let preceded_ok = start == 0 || lower.as_bytes()[start - 1].is_ascii_whitespace();
        let rest = lower[from..].trim_start();
        if !preceded_ok || !rest.starts_with('=') {
            continue;
        }
        let value_start = lower.len() - rest[1..].trim_start().len();
        let value = &attrs[value_start..];
        return Some(match value.chars().next() {
            Some(quote @ ('"' | '\'')) => value[1..].split(quote).next().unwrap_or(""),
            _ => value.split(|c: char| c.is_ascii_whitespace()).next().unwrap_or(""),
        });
    }
    None
}

fn unescape_html(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

/// Resolves `reference` against the absolute URL `base` (RFC 3986, for the forms indexes use:
/// absolute, scheme-relative, host-relative and path-relative with `.`/`..`).
pub(crate) fn join_url(base: &str, reference: &str) -> String {
    if reference.contains("://") {
        return reference.to_owned();
    }
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    if let Some(rest) = reference.strip_prefix("//") {
        return format!("{}{rest}", &base[..scheme_end]);
    }
    let base = strip_fragment(base);
    let base = base.split_once('?').map_or(base, |(before, _)| before);
    let authority_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let origin = &base[..authority_end];
    let path = if reference.starts_with('/') {
        reference.to_owned()
    } else {
        let base_path = &base[authority_end..];
        let dir = base_path.rfind('/').map_or("/", |i| &base_path[..=i]);
        format!("{dir}{reference}")
    };
    format!("{origin}{}", remove_dot_segments(&path))
}

fn remove_dot_segments(path: &str) -> String {
    let (path, query) = path.split_once('?').map_or((path, None), |(p, q)| (p, Some(q)));
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match *part {
            "." => {
                if last {
                    segments.push("");
                }
            }
            ".." => {
                if segments.len() > 1 {
                    segments.pop();
                }
                if last {
                    segments.push("");
                }
            }
            other => segments.push(other),
        }
    }
    let mut joined = segments.join("/");
    if !joined.starts_with('/') {
        joined.insert(0, '/');
    }
    match query {
        Some(q) => format!("{joined}?{q}"),
        None => joined,
    }
}

#[cfg(test)]
mod tests;
