//! Progress bars on a terminal (stderr), silent otherwise and under `--quiet`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where bars are drawn: stderr (indicatif draws only on a terminal), nowhere under `--quiet`.
fn target() -> ProgressDrawTarget {
    if crate::quiet() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    }
}

/// A byte-counting progress bar drawn on stderr when it is a terminal, hidden otherwise.
pub fn bytes(total: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), target());
    let style = ProgressStyle::with_template(
        "{msg:12} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(message.to_owned());
    bar
}

/// A counting progress bar (chunks, points) on stderr when it is a terminal.
pub fn count(total: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), target());
    // A whole number a second (indicatif's own {per_sec} shows four decimals: "1,318.5295/s").
    let style = ProgressStyle::with_template("{msg:12} [{bar:40}] {pos}/{len} {rate} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        )
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(message.to_owned());
    bar
}

/// A spinner with a message, for work whose size is not known ahead.
pub fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, target());
    bar.set_message(message.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// A byte counter on stderr (a terminal only) for work of unknown size, such as a raw stream:
/// bytes done and the rate, no total and no eta. [`set_total`] turns it into a bar.
pub fn stream(message: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, target());
    let style = ProgressStyle::with_template("{msg:12} {bytes} {binary_bytes_per_sec}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_message(message.to_owned());
    bar
}

/// Gives a counter from [`stream`] its total once known: it becomes a bar like [`bytes`].
pub fn set_total(bar: &ProgressBar, total: u64) {
    if bar.length() != Some(total) {
        let style = ProgressStyle::with_template(
            "{msg:12} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_length(total);
    }
}
