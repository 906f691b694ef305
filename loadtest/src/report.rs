//! A run's outputs: `run.json` (the campaign, every stage summary, every request), `report.md` (tables of the
//! summaries, faults, links to the plots) and the plots; and `compare`, two runs side by side.
//!
//! Invariant: the Markdown is derived only from what `run.json` holds, so a report can be rebuilt from the JSON.
//! Cost: writing the files; the JSON is about 200 bytes per request plus its inter-token latencies.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::LoadError;
use crate::metrics::StageSummary;
use crate::plot;
use crate::run::RunReport;

/// Writes `run.json`, `report.md` and `plots/*.{svg,png}` into `out_dir` (created when missing).
pub fn write_outputs(report: &RunReport, out_dir: &Path) -> Result<(), LoadError> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoadError::Write { path, source }
    };
    std::fs::create_dir_all(out_dir).map_err(write_err(out_dir))?;
    let json_path = out_dir.join("run.json");
    let json = serde_json::to_vec(report).map_err(|source| LoadError::Json {
        path: json_path.clone(),
        source,
    })?;
    std::fs::write(&json_path, json).map_err(write_err(&json_path))?;
    let plots = plot::write_plots(report, &out_dir.join("plots"))?;
    let md_path = out_dir.join("report.md");
    let mut md = markdown(report);
    if !plots.is_empty() {
        md.push_str("\n## Plots\n\n");
        for p in plots {
            let _ = writeln!(md, "![{p}](plots/{p}.svg)\n");
        }
    }
    std::fs::write(&md_path, md).map_err(write_err(&md_path))
}

pub fn read_run(path: &Path) -> Result<RunReport, LoadError> {
    let path = if path.is_dir() {
        path.join("run.json")
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&path).map_err(|source| LoadError::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| LoadError::Json { path, source })
}

fn errors(s: &StageSummary) -> String {
    if s.errors.is_empty() {
        return "0".into();
    }
    s.errors
        .iter()
        .map(|(code, n)| format!("{n} {code}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One value of a percentile set, or "–" when the set was empty.
fn ms(p: &crate::metrics::Percentiles, value: f64) -> String {
    if p.count == 0 {
        "–".into()
    } else {
        format!("{value:.1}")
    }
}

/// The report's Markdown: one table row per stage, then latency percentiles, then faults.
pub fn markdown(report: &RunReport) -> String {
    let c = &report.campaign;
    let mut md = String::new();
    let _ = writeln!(md, "# Load test: {}\n", c.name);
    let _ = writeln!(
        md,
        "Started at Unix time {}; SLO: TTFT ≤ {} ms and TPOT ≤ {} ms; generator on {} cores. Targets: {}.\n",
        report.started_unix_s,
        c.slo.ttft_ms,
        c.slo.tpot_ms,
        report.generator_cores,
        c.targets
            .iter()
            .map(|t| format!("{} ({})", t.name, t.url))
            .collect::<Vec<_>>()
            .join(", ")
    );
    md.push_str("## Throughput and goodput\n\n");
    md.push_str("| stage | workload | arrival | requests | errors | req/s | input tok/s | output tok/s | goodput req/s | SLO met | cache hit | generator CPU |\n");
    md.push_str("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for st in &report.stages {
        let s = &st.summary;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.2} | {:.1} | {:.1} | {:.2} | {:.1}% | {:.1}% | {:.2} s ({:.0}%) |",
            s.name,
            s.workload,
            s.arrival,
            s.requests,
            errors(s),
            s.request_rate,
            s.input_tokens_per_s,
            s.output_tokens_per_s,
            s.goodput,
            s.slo_attainment * 100.0,
            s.cache_hit_ratio * 100.0,
            s.generator_cpu_s,
            s.generator_cpu_share * 100.0,
        );
    }
    md.push_str("\n## Latency (ms): p50 / p90 / p99 / max\n\n");
    md.push_str("| stage | TTFT | TPOT | inter-token | end-to-end | prompt tokens p50 | output tokens p50 |\n");
    md.push_str("|---|---|---|---|---|---:|---:|\n");
    let p = |x: &crate::metrics::Percentiles| format!("{:.2} / {:.2} / {:.2} / {:.2}", x.p50, x.p90, x.p99, x.max);
    for st in &report.stages {
        let s = &st.summary;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.0} | {:.0} |",
            s.name,
            p(&s.ttft_ms),
            p(&s.tpot_ms),
            p(&s.itl_ms),
            p(&s.e2e_ms),
            s.prompt_tokens.p50,
            s.output_tokens.p50
        );
    }
    let faults: Vec<_> = report
        .stages
        .iter()
        .flat_map(|s| s.summary.faults.iter().map(move |f| (s, f)))
        .collect();
    if !faults.is_empty() {
        md.push_str("\n## Faults\n\n");
        md.push_str("| stage | process | action | at (s) | errors after | recovery (s) | TTFT before p50 | TTFT during recovery p50 / p99 | e2e during recovery p99 |\n");
        md.push_str("|---|---|---|---:|---|---:|---:|---:|---:|\n");
        for (st, f) in faults {
            let errs = if f.errors.is_empty() {
                "0".to_string()
            } else {
                f.errors
                    .iter()
                    .map(|(c, n)| format!("{n} {c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.2} | {} | {} | {} | {} / {} | {} |",
                st.summary.name,
                f.process,
                f.action,
                f.at_s,
                errs,
                f.recovery_s.map_or("not recovered".into(), |r| format!("{r:.2}")),
                ms(&f.ttft_before_ms, f.ttft_before_ms.p50),
                ms(&f.ttft_during_ms, f.ttft_during_ms.p50),
                ms(&f.ttft_during_ms, f.ttft_during_ms.p99),
                ms(&f.e2e_during_ms, f.e2e_during_ms.p99)
            );
        }
    }
    md
}

/// Two runs side by side, stage by stage (matched by name, else by position): B's value and its change from A.
pub fn compare(a: &RunReport, b: &RunReport, a_name: &str, b_name: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Compare: A = {a_name}, B = {b_name}\n");
    md.push_str("| stage | metric | A | B | change |\n|---|---|---:|---:|---:|\n");
    for (i, sa) in a.stages.iter().enumerate() {
        let sa = &sa.summary;
        let Some(sb) = b
            .stages
            .iter()
            .find(|s| s.summary.name == sa.name)
            .or_else(|| b.stages.get(i))
            .map(|s| &s.summary)
        else {
            continue;
        };
        let rows: [(&str, f64, f64); 10] = [
            ("req/s", sa.request_rate, sb.request_rate),
            ("output tok/s", sa.output_tokens_per_s, sb.output_tokens_per_s),
            ("goodput req/s", sa.goodput, sb.goodput),
            ("SLO met %", sa.slo_attainment * 100.0, sb.slo_attainment * 100.0),
            ("TTFT p50 ms", sa.ttft_ms.p50, sb.ttft_ms.p50),
            ("TTFT p99 ms", sa.ttft_ms.p99, sb.ttft_ms.p99),
            ("TPOT p50 ms", sa.tpot_ms.p50, sb.tpot_ms.p50),
            ("TPOT p99 ms", sa.tpot_ms.p99, sb.tpot_ms.p99),
            ("e2e p99 ms", sa.e2e_ms.p99, sb.e2e_ms.p99),
            (
                "errors",
                (sa.requests - sa.succeeded) as f64,
                (sb.requests - sb.succeeded) as f64,
            ),
        ];
        let name = if sa.name == sb.name {
            sa.name.clone()
        } else {
            format!("{} / {}", sa.name, sb.name)
        };
        for (metric, x, y) in rows {
            let change = if x != 0.0 {
                format!("{:+.1}%", (y - x) / x * 100.0)
            } else {
                "–".into()
            };
            let _ = writeln!(md, "| {name} | {metric} | {x:.2} | {y:.2} | {change} |");
        }
    }
    md
}
