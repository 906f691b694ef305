//! Pull progress on stderr: one indicatif bar per phase (download, extract, verify), so stdout stays clean for
//! generated text and JSON.
//!
//! Invariant: at most one bar is live; a phase's `finish` clears it. When stderr is not a terminal indicatif draws
//! nothing, so each phase is announced with one plain line instead. Cost: redraws are rate-limited by indicatif.

use std::cell::RefCell;

use cleave_modelstore::PullProgress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const BAR_TEMPLATE: &str = "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)";
const SPINNER_TEMPLATE: &str = "{spinner} {msg} {bytes} ({bytes_per_sec})";

#[derive(Debug, Default)]
pub struct BarProgress {
    bar: RefCell<Option<ProgressBar>>,
}

impl PullProgress for BarProgress {
    fn start(&self, total_bytes: Option<u64>, what: &str) {
        let bar =
            match total_bytes {
                Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
                    .with_style(style(BAR_TEMPLATE)),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
                    .with_style(style(SPINNER_TEMPLATE)),
            };
        bar.set_message(what.to_string());
        if bar.is_hidden() {
            eprintln!("{what}...");
        }
        if let Some(previous) = self.bar.replace(Some(bar)) {
            previous.finish_and_clear();
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = self.bar.borrow().as_ref() {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn note(&self, message: &str) {
        match self.bar.borrow().as_ref() {
            Some(bar) if !bar.is_hidden() => bar.println(message),
            _ => eprintln!("{message}"),
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants; should one ever fail to parse, a plain bar is still a progress bar.
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
