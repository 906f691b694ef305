//! A parser for the Prometheus text exposition (classic 0.0.4 and OpenMetrics 1.0): the sample lines only, which
//! is all the planner reads. `# HELP`/`# TYPE`/`# UNIT`/`# EOF` lines, exemplars and timestamps are skipped.
//!
//! Invariant: a line that does not parse is skipped, never fatal — one odd series from a newer component must not
//! blind the planner to the rest. Cost: one pass over the text, one allocation per sample and label.

use std::collections::BTreeMap;

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, or `""` when absent.
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map(String::as_str).unwrap_or("")
    }
}

/// Every sample line of `text`, in order.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if rest.starts_with('{') {
        let (parsed, after) = parse_labels(&rest[1..])?;
        labels = parsed;
        rest = after;
    }
    // The value, then an optional timestamp and (OpenMetrics) an exemplar after `#`.
    let value = rest.split_whitespace().next()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value: parse_value(value)?,
    })
}

/// Parses `a="x",b="y"}` and returns the labels and the text after the closing brace.
fn parse_labels(mut text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        text = text.trim_start_matches([' ', ',']);
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = text.find('=')?;
        let key = text[..eq].trim().to_owned();
        text = text[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = text.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                other => value.push(other),
            }
        };
        labels.insert(key, value);
        text = &text[end + 1..];
    }
}

/// A sample value or label bound: a float, `+Inf`, `-Inf` or `NaN`.
pub(crate) fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        other => other.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_labels_escapes_and_skips_comments() {
        let text = "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"b\",c=\"q\\\"uote\"} 3 1700000000\n\
                    h_bucket{le=\"+Inf\"} 7\nbad line here\ng 1.5e3 # {trace_id=\"1\"} 1\n# EOF\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].name, "x_total");
        assert_eq!(samples[0].label("a"), "b");
        assert_eq!(samples[0].label("c"), "q\"uote");
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[1].label("le"), "+Inf");
        assert_eq!(samples[1].value, 7.0);
        assert_eq!(samples[2].value, 1500.0);
    }
}
