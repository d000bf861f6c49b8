//! Aggregates the transfers into cells (system × WAN × data set), refuses cells with a
//! failed transfer, and writes `report.md`, `report.json` and SVG bar charts.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use super::{DataSet, Options, Record, System, Wan};

/// One cell: medians over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// The system.
    pub system: System,
    /// Its label.
    pub label: &'static str,
    /// The WAN setting.
    pub wan: Wan,
    /// The data set.
    pub data: DataSet,
    /// Transfers measured.
    pub samples: usize,
    /// Why the cell is not reported (a transfer failed); the figures are then absent.
    pub failed: Option<String>,
    /// Median goodput, Mbit/s.
    pub goodput_mbps: Option<f64>,
    /// Lowest and highest goodput over the rounds.
    pub goodput_range: Option<(f64, f64)>,
    /// Median Ethernet bytes site A → site B on the WAN.
    pub wan_bytes: Option<u64>,
    /// Median Ethernet bytes site B → site A (acknowledgements).
    pub wan_bytes_reverse: Option<u64>,
    /// Median CPU seconds of both sites' tunnel processes per GB of data moved.
    pub tunnel_cpu_s_per_gb: Option<f64>,
    /// Median CPU seconds of the whole machine (everything that ran) per GB.
    pub machine_cpu_s_per_gb: Option<f64>,
    /// Of which softirq, per GB.
    pub softirq_s_per_gb: Option<f64>,
    /// Goodput divided by plain forwarding's in the same cell column.
    pub goodput_vs_plain: Option<f64>,
    /// WAN bytes divided by plain forwarding's.
    pub wan_bytes_vs_plain: Option<f64>,
    /// Goodput divided by the best other tunnel's (third-party tunnels, not this one).
    pub goodput_vs_best_other: Option<f64>,
    /// WAN bytes divided by the fewest of the other tunnels.
    pub wan_bytes_vs_best_other: Option<f64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What ran.
    pub title: String,
    /// When (UTC, RFC 3339).
    pub finished_at: String,
    /// Wall time of the run, seconds.
    pub duration_secs: f64,
    /// CPU model, cores, kernel.
    pub machine: String,
    /// Bytes per transfer (unlimited, limited).
    pub bytes_per_transfer: (usize, usize),
    /// Rounds.
    pub rounds: usize,
    /// Versions of the third-party tunnels.
    pub versions: Vec<(String, String)>,
    /// The cells.
    pub cells: Vec<Cell>,
    /// Every transfer.
    pub records: Vec<RecordOut>,
}

/// A transfer as written to the JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct RecordOut {
    #[serde(flatten)]
    record: Record,
    goodput_mbps: Option<f64>,
    seconds: Option<f64>,
    bytes: Option<u64>,
    wan_bytes: Option<u64>,
    wan_bytes_reverse: Option<u64>,
    tunnel_cpu_s: Option<f64>,
    machine_cpu_s: Option<f64>,
    softirq_s: Option<f64>,
}

impl Report {
    /// Builds the cells from the records.
    pub fn build(options: &Options, records: &[Record], took: Duration) -> Self {
        let mut cells = Vec::new();
        for &wan in &options.wans {
            for data in DataSet::ALL {
                let mut column: Vec<Cell> = options
                    .systems
                    .iter()
                    .map(|&system| cell(system, wan, data, records))
                    .collect();
                ratios(&mut column);
                cells.extend(column);
            }
        }
        Self {
            title: options.title.clone(),
            finished_at: now_utc(),
            duration_secs: took.as_secs_f64(),
            machine: machine(),
            bytes_per_transfer: (options.bytes_unlimited, options.bytes_limited),
            rounds: options.rounds,
            versions: super::systems::versions(&options.systems),
            cells,
            records: records.iter().map(record_out).collect(),
        }
    }

    /// Cells that failed.
    pub fn failures(&self) -> Vec<&Cell> {
        self.cells.iter().filter(|c| c.failed.is_some()).collect()
    }

    /// The cell of `system`, `wan`, `data`.
    pub fn cell(&self, system: System, wan: Wan, data: DataSet) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.system == system && c.wan == wan && c.data == data)
    }

    /// Writes report.md, report.json and the SVG charts into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
        };
        write("report.md", self.markdown())?;
        write(
            "report.json",
            serde_json::to_string_pretty(self).context("report to JSON")?,
        )?;
        let wans: Vec<Wan> = dedup(self.cells.iter().map(|c| c.wan));
        for wan in wans {
            let slug = match wan {
                Wan::Unlimited => "unlimited",
                Wan::Mbit50Delay20 => "50mbit-20ms",
            };
            write(
                &format!("goodput-{slug}.svg"),
                self.chart(wan, "Goodput, Mbit/s", |c| c.goodput_mbps),
            )?;
            write(
                &format!("wan-bytes-{slug}.svg"),
                self.chart(wan, "WAN bytes A→B, MB", |c| {
                    c.wan_bytes.map(|b| b as f64 / 1e6)
                }),
            )?;
        }
        Ok(())
    }

    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Shunt end-to-end benchmark\n");
        let wans: Vec<Wan> = dedup(self.cells.iter().map(|c| c.wan));
        let sizes: Vec<String> = wans
            .iter()
            .map(|w| {
                let bytes = match w {
                    Wan::Unlimited => self.bytes_per_transfer.0,
                    Wan::Mbit50Delay20 => self.bytes_per_transfer.1,
                };
                format!(
                    "{} MB per transfer on the {} WAN",
                    bytes / 1_000_000,
                    w.label()
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "{}. Finished {} after {:.0} s on {}. {} round(s); {}. Medians over the rounds.\n",
            self.title,
            self.finished_at,
            self.duration_secs,
            self.machine,
            self.rounds,
            sizes.join(", "),
        );
        for (name, version) in &self.versions {
            let _ = writeln!(s, "- {name}: {version}");
        }
        let _ = writeln!(
            s,
            "\nColumns: goodput (min–max over rounds); WAN bytes A→B (Ethernet frames \
             counted by the WAN emulator); tunnel CPU = user+system seconds of both \
             sites' tunnel processes per GB moved; machine CPU = all cores busy per GB \
             (every process and softirq, the traffic generator and the WAN emulator \
             included); ratios against plain forwarding and against the best \
             third-party tunnel (highest goodput, fewest WAN bytes) of the same column.\n"
        );
        for wan in wans {
            for data in DataSet::ALL {
                let _ = writeln!(s, "## WAN {}, data {}\n", wan.label(), data.label());
                let _ = writeln!(
                    s,
                    "| system | goodput Mbit/s | WAN MB A→B | tunnel CPU s/GB | machine CPU s/GB | goodput ÷ plain | WAN bytes ÷ plain | goodput ÷ best other | WAN bytes ÷ best other |"
                );
                let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
                for c in self.cells.iter().filter(|c| c.wan == wan && c.data == data) {
                    if let Some(why) = &c.failed {
                        let _ = writeln!(
                            s,
                            "| {} | **not reported: {}** | | | | | | | |",
                            c.label,
                            why.replace('|', "/").replace('\n', " ")
                        );
                        continue;
                    }
                    let (lo, hi) = c.goodput_range.unwrap_or((0.0, 0.0));
                    let _ = writeln!(
                        s,
                        "| {} | {} ({:.0}–{:.0}) | {} | {} | {} | {} | {} | {} | {} |",
                        c.label,
                        num(c.goodput_mbps, 1),
                        lo,
                        hi,
                        num(c.wan_bytes.map(|b| b as f64 / 1e6), 2),
                        if c.system == System::Plain {
                            "—".into()
                        } else {
                            num(c.tunnel_cpu_s_per_gb, 1)
                        },
                        num(c.machine_cpu_s_per_gb, 1),
                        num(c.goodput_vs_plain, 2),
                        num(c.wan_bytes_vs_plain, 3),
                        num(c.goodput_vs_best_other, 2),
                        num(c.wan_bytes_vs_best_other, 3),
                    );
                }
                let _ = writeln!(s);
            }
        }
        s
    }

    /// A grouped bar chart: one group per data set, one bar per system.
    fn chart(&self, wan: Wan, title: &str, value: impl Fn(&Cell) -> Option<f64>) -> String {
        let systems: Vec<System> = dedup(self.cells.iter().map(|c| c.system));
        let max = self
            .cells
            .iter()
            .filter(|c| c.wan == wan)
            .filter_map(&value)
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let (bar, gap, left, top, height) = (22.0, 30.0, 70.0, 40.0, 300.0);
        let group = bar * systems.len() as f64 + gap;
        let width = left + group * 3.0 + 20.0;
        let legend_top = top + height + 40.0;
        let total_height = legend_top + 18.0 * systems.len() as f64 + 10.0;
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{total_height:.0}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(
            svg,
            r#"<text x="{left}" y="20" font-size="14">{} — WAN {}</text>"#,
            escape(title),
            escape(wan.label())
        );
        for i in 0..=4 {
            let v = max * f64::from(i) / 4.0;
            let y = top + height - height * f64::from(i) / 4.0;
            let _ = writeln!(
                svg,
                "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.0}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                width - 10.0,
                left - 5.0,
                y + 4.0,
                short(v)
            );
        }
        for (g, data) in DataSet::ALL.iter().enumerate() {
            let x0 = left + gap / 2.0 + group * g as f64;
            for (k, &system) in systems.iter().enumerate() {
                let x = x0 + bar * k as f64;
                let Some(c) = self.cell(system, wan, *data) else {
                    continue;
                };
                match value(c) {
                    Some(v) => {
                        let h = height * v / max;
                        let _ = writeln!(
                            svg,
                            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                            top + height - h,
                            bar - 2.0,
                            color(k),
                            escape(system.label()),
                            short(v)
                        );
                    }
                    None => {
                        let _ = writeln!(
                            svg,
                            r#"<text x="{:.1}" y="{:.1}" fill="red">✗</text>"#,
                            x + 4.0,
                            top + height - 4.0
                        );
                    }
                }
            }
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x0 + bar * systems.len() as f64 / 2.0,
                top + height + 18.0,
                data.label()
            );
        }
        for (k, system) in systems.iter().enumerate() {
            let y = legend_top + 18.0 * k as f64;
            let _ = writeln!(
                svg,
                r#"<rect x="{left}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.0}" y="{:.1}">{}</text>"#,
                y - 10.0,
                color(k),
                left + 18.0,
                y,
                escape(system.label())
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

fn cell(system: System, wan: Wan, data: DataSet, records: &[Record]) -> Cell {
    let mine: Vec<&Record> = records
        .iter()
        .filter(|r| r.system == system && r.wan == wan && r.data == data)
        .collect();
    let failed = if mine.is_empty() {
        Some("no transfer measured".to_owned())
    } else {
        mine.iter().find_map(|r| r.error.clone())
    };
    let samples: Vec<_> = mine.iter().filter_map(|r| r.sample).collect();
    let mut c = Cell {
        system,
        label: system.label(),
        wan,
        data,
        samples: samples.len(),
        failed: failed.clone(),
        goodput_mbps: None,
        goodput_range: None,
        wan_bytes: None,
        wan_bytes_reverse: None,
        tunnel_cpu_s_per_gb: None,
        machine_cpu_s_per_gb: None,
        softirq_s_per_gb: None,
        goodput_vs_plain: None,
        wan_bytes_vs_plain: None,
        goodput_vs_best_other: None,
        wan_bytes_vs_best_other: None,
    };
    if failed.is_some() || samples.is_empty() {
        return c;
    }
    let per_gb = |f: fn(&super::Sample) -> f64| {
        median(
            samples
                .iter()
                .map(|s| f(s) / (s.bytes as f64 / 1e9))
                .collect(),
        )
    };
    let goodputs: Vec<f64> = samples.iter().map(|s| s.goodput_mbps()).collect();
    c.goodput_range = Some((
        goodputs.iter().copied().fold(f64::INFINITY, f64::min),
        goodputs.iter().copied().fold(0.0, f64::max),
    ));
    c.goodput_mbps = Some(median(goodputs));
    c.wan_bytes = Some(median(samples.iter().map(|s| s.wan_bytes_fwd as f64).collect()) as u64);
    c.wan_bytes_reverse =
        Some(median(samples.iter().map(|s| s.wan_bytes_rev as f64).collect()) as u64);
    c.tunnel_cpu_s_per_gb = Some(per_gb(|s| s.tunnel_cpu));
    c.machine_cpu_s_per_gb = Some(per_gb(|s| s.machine_cpu));
    c.softirq_s_per_gb = Some(per_gb(|s| s.softirq_cpu));
    c
}

fn ratios(column: &mut [Cell]) {
    let plain = column
        .iter()
        .find(|c| c.system == System::Plain)
        .map(|c| (c.goodput_mbps, c.wan_bytes));
    let others: Vec<(System, f64, u64)> = column
        .iter()
        .filter(|c| c.system.is_other_tunnel())
        .filter_map(|c| Some((c.system, c.goodput_mbps?, c.wan_bytes?)))
        .collect();
    for c in column.iter_mut() {
        let (Some(g), Some(w)) = (c.goodput_mbps, c.wan_bytes) else {
            continue;
        };
        if let Some((Some(pg), Some(pw))) = plain {
            c.goodput_vs_plain = Some(g / pg);
            c.wan_bytes_vs_plain = Some(w as f64 / pw.max(1) as f64);
        }
        let rest = others.iter().filter(|(s, _, _)| *s != c.system);
        let best_goodput = rest
            .clone()
            .map(|o| o.1)
            .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))));
        let fewest_bytes = rest.map(|o| o.2).min();
        c.goodput_vs_best_other = best_goodput.map(|b| g / b);
        c.wan_bytes_vs_best_other = fewest_bytes.map(|b| w as f64 / b.max(1) as f64);
    }
}

fn record_out(r: &Record) -> RecordOut {
    let s = r.sample;
    RecordOut {
        record: r.clone(),
        goodput_mbps: s.map(|s| s.goodput_mbps()),
        seconds: s.map(|s| s.elapsed.as_secs_f64()),
        bytes: s.map(|s| s.bytes),
        wan_bytes: s.map(|s| s.wan_bytes_fwd),
        wan_bytes_reverse: s.map(|s| s.wan_bytes_rev),
        tunnel_cpu_s: s.map(|s| s.tunnel_cpu),
        machine_cpu_s: s.map(|s| s.machine_cpu),
        softirq_s: s.map(|s| s.softirq_cpu),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.digits$}"))
}

fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn color(k: usize) -> &'static str {
    const PALETTE: [&str; 8] = [
        "#7f7f7f", "#1f77b4", "#2ca02c", "#17becf", "#9467bd", "#8c564b", "#d62728", "#bcbd22",
    ];
    PALETTE[k % PALETTE.len()]
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn dedup<T: PartialEq + Copy>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {kernel}, load average at the end {load}")
}

fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
