//! Aligned text tables, and the cell formats every table shares.
//!
//! Cells read JSON leniently: a field the agent left out or set to `null` shows as `-`,
//! so a CLI a little older or newer than its agent still prints what both know.

use std::fmt::Write as _;

use serde_json::Value;

/// Between columns: wide enough to tell columns apart when a cell is a single digit.
const GAP: &str = "   ";

/// Rows under an upper-case header, each column as wide as its widest cell, left-aligned
/// (as `kubectl` and `ps` print them), without trailing spaces.
pub(super) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub(super) fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len(), "one cell per column");
        self.rows.push(cells);
    }

    pub(super) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            write_line(&mut out, row, &widths);
        }
        out
    }
}

/// `key:   value` lines with the values aligned, for one record (`sockmesh status`).
pub(super) fn record(pairs: &[(&str, String)]) -> String {
    let key_width = pairs.iter().map(|(k, _)| width(k) + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let key = format!("{key}:");
        let _ = writeln!(out, "{key:<key_width$}{GAP}{value}");
    }
    out
}

fn write_line(out: &mut String, cells: &[String], widths: &[usize]) {
    let mut line = String::new();
    for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
        if i > 0 {
            line.push_str(GAP);
        }
        line.push_str(cell);
        // `{:<w$}` pads by chars too, but an explicit loop keeps the last column unpadded.
        if i + 1 < cells.len() {
            line.extend(std::iter::repeat_n(' ', w - width(cell)));
        }
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

/// Columns are counted in chars: label values and paths may hold non-ASCII text.
fn width(cell: &str) -> usize {
    cell.chars().count()
}

/// Any scalar as text: strings as-is, numbers as the agent wrote them, booleans as yes/no,
/// `null` or absent as `-`.
pub(super) fn text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => clean(s),
        Some(Value::Bool(b)) => if *b { "yes" } else { "no" }.to_owned(),
        Some(other) => clean(&other.to_string()),
    }
}

/// A fractional number with `places` decimals (means and durations); an integer stays as
/// the agent wrote it; `-` when absent or `null`.
pub(super) fn decimal(value: Option<&Value>, places: usize) -> String {
    match value {
        Some(Value::Number(n)) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            format!("{x:.places$}")
        }
        other => text(other),
    }
}

/// A percentage without trailing zeros (`25`, `12.5`, `0.0001`: the agent keeps parts per
/// million, four decimals); `-` when absent or `null`.
pub(super) fn percent(value: Option<&Value>) -> String {
    match value.and_then(Value::as_f64) {
        Some(x) => {
            let shown = format!("{x:.4}");
            let shown = shown.trim_end_matches('0').trim_end_matches('.');
            if shown == "-0" { "0" } else { shown }.to_owned()
        }
        None => text(value),
    }
}

/// A number of seconds as a short duration: `4.2s`, `5m05s`, `2h03m`; `-` when absent.
pub(super) fn seconds(value: Option<&Value>) -> String {
    let Some(x) = value.and_then(Value::as_f64) else {
        return text(value);
    };
    let x = x.max(0.0);
    if x < 59.95 {
        return format!("{x:.1}s");
    }
    // Whole seconds from here; rounding 59.95 up lands on 1m00s, not 60.0s.
    let whole = x.round() as u64;
    if whole < 3600 {
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        format!("{}h{:02}m", whole / 3600, whole / 60 % 60)
    }
}

/// A count of items in a JSON array field, `-` when it is not an array.
pub(super) fn count(value: Option<&Value>) -> String {
    match value {
        Some(Value::Array(items)) => items.len().to_string(),
        other => text(other),
    }
}

/// `vip:port`, with an IPv6 VIP in brackets so the port stays readable.
pub(super) fn vip_port(vip: Option<&Value>, port: Option<&Value>) -> String {
    let vip = text(vip);
    let port = text(port);
    if vip.contains(':') {
        format!("[{vip}]:{port}")
    } else {
        format!("{vip}:{port}")
    }
}

/// `k=v,k2=v2` for a labels object, `-` when there are none.
pub(super) fn labels(value: Option<&Value>) -> String {
    match value {
        Some(Value::Object(map)) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{}={}", clean(k), text(Some(v))))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Object(_)) => "-".to_owned(),
        other => text(other),
    }
}

/// Unix milliseconds as UTC ISO 8601 (`2025-11-22T08:26:40.000Z`): the agent and the
/// operator may be in different time zones, and UTC sorts and greps.
pub(super) fn utc_millis(value: Option<&Value>) -> String {
    let Some(ms) = value.and_then(Value::as_i64) else {
        return text(value);
    };
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (year, month, day) = civil_from_days(days);
    let secs = ms_of_day / 1000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ms_of_day % 1000
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`),
/// so the CLI needs no date crate for one timestamp column.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Escapes control characters: a newline would break the table, an escape sequence could
/// drive the terminal, and the text comes from configs and the network.
fn clean(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        s.to_owned()
    }
}
