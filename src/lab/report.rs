//! The lab's result: every sample of every metric, the nodes' counters, and the ways to show
//! them (a text table with ratios to the kernel's VXLAN, an SVG bar chart, JSON).

use std::fmt;
use std::path::Path;

use crate::error::Error;

/// One measured quantity of one scenario, with every repetition's sample.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Metric {
    /// The scenario, e.g. `fustian-udp/uring`, `kernel-vxlan`, `underlay`.
    pub scenario: String,
    /// The quantity, e.g. `tcp x1 a->b`.
    pub name: String,
    /// Its unit.
    pub unit: &'static str,
    /// One sample per repetition.
    pub samples: Vec<f64>,
}

impl Metric {
    /// Returns the median sample.
    pub fn median(&self) -> f64 {
        let mut v = self.samples.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }

    /// Returns the smallest sample.
    pub fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// Returns the largest sample.
    pub fn max(&self) -> f64 {
        self.samples
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// One node's counters, as `(name, value)` pairs.
pub type NodeCounters = Vec<(String, u64)>;

/// The lab's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Every metric of every scenario, in run order.
    pub metrics: Vec<Metric>,
    /// For each fustian scenario, each node's non-zero counters after its run.
    pub counters: Vec<(String, Vec<NodeCounters>)>,
    /// Repetitions per metric.
    pub repeat: u32,
    /// Seconds of each bulk transfer and flood.
    pub duration: f64,
}

impl Report {
    /// Returns the scenarios in run order.
    pub fn scenarios(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for m in &self.metrics {
            if !out.contains(&m.scenario.as_str()) {
                out.push(&m.scenario);
            }
        }
        out
    }

    /// Returns the metric names in run order.
    pub fn names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for m in &self.metrics {
            if !out.contains(&m.name.as_str()) {
                out.push(&m.name);
            }
        }
        out
    }

    /// Returns one metric.
    pub fn get(&self, scenario: &str, name: &str) -> Option<&Metric> {
        self.metrics
            .iter()
            .find(|m| m.scenario == scenario && m.name == name)
    }

    /// Writes the report as pretty-printed JSON to `path`.
    ///
    /// # Errors
    ///
    /// [`Error::Lab`] when it cannot be encoded or written.
    pub fn write_json(&self, path: &Path) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Lab(format!("cannot encode JSON: {e}")))?;
        std::fs::write(path, text)
            .map_err(|e| Error::Lab(format!("cannot write {}: {e}", path.display())))
    }

    /// Writes [`Self::svg`] to `path`.
    ///
    /// # Errors
    ///
    /// [`Error::Lab`] when it cannot be written.
    pub fn write_svg(&self, path: &Path) -> Result<(), Error> {
        std::fs::write(path, self.svg())
            .map_err(|e| Error::Lab(format!("cannot write {}: {e}", path.display())))
    }

    /// Renders the report as a bar chart: one panel per metric, one bar per scenario.
    pub fn svg(&self) -> String {
        use std::fmt::Write as _;
        let scenarios = self.scenarios();
        let names = self.names();
        let (panel_w, panel_h, bar_w, gap) = (260.0_f64, 180.0_f64, 28.0_f64, 8.0_f64);
        let cols = 3usize;
        let rows = names.len().div_ceil(cols).max(1);
        let width = (panel_w * cols as f64).max(160.0 * scenarios.len() as f64) + 20.0;
        let height = (panel_h + 60.0) * rows as f64 + 60.0;
        let colors = [
            "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
        ];
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
        for (k, s) in scenarios.iter().enumerate() {
            let x = 10.0 + 160.0 * k as f64;
            let _ = writeln!(
                out,
                r#"<rect x="{x:.0}" y="12" width="10" height="10" fill="{}"/><text x="{:.0}" y="21">{}</text>"#,
                colors[k % colors.len()],
                x + 14.0,
                xml_escape(s)
            );
        }
        for (p, name) in names.iter().enumerate() {
            let px = 10.0 + panel_w * (p % cols) as f64;
            let py = 50.0 + (panel_h + 60.0) * (p / cols) as f64;
            let unit = self
                .metrics
                .iter()
                .find(|m| m.name == *name)
                .map_or("", |m| m.unit);
            let top = scenarios
                .iter()
                .filter_map(|s| self.get(s, name))
                .map(Metric::median)
                .fold(0.0_f64, f64::max)
                .max(f64::MIN_POSITIVE);
            let _ = writeln!(
                out,
                r#"<text x="{px:.0}" y="{:.0}" font-weight="bold">{} ({})</text>"#,
                py + 12.0,
                xml_escape(name),
                xml_escape(unit)
            );
            for (k, s) in scenarios.iter().enumerate() {
                let Some(m) = self.get(s, name) else { continue };
                let v = m.median();
                let h = (v / top * (panel_h - 40.0)).max(0.0);
                let x = px + 10.0 + (bar_w + gap) * k as f64;
                let y = py + panel_h - h;
                let _ = writeln!(
                    out,
                    r#"<rect class="bar" data-scenario="{}" data-metric="{}" x="{x:.1}" y="{y:.1}" width="{bar_w:.0}" height="{h:.1}" fill="{}"><title>{}: {v:.3}</title></rect>"#,
                    xml_escape(s),
                    xml_escape(name),
                    colors[k % colors.len()],
                    xml_escape(s)
                );
                let _ = writeln!(
                    out,
                    r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{}</text>"#,
                    x + bar_w / 2.0,
                    y - 3.0,
                    short(v)
                );
            }
            let _ = writeln!(
                out,
                r##"<line x1="{px:.0}" y1="{:.0}" x2="{:.0}" y2="{:.0}" stroke="#444"/>"##,
                py + panel_h,
                px + panel_w - 20.0,
                py + panel_h
            );
        }
        out.push_str("</svg>\n");
        out
    }
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

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.names();
        let scenarios = self.scenarios();
        let cell = |s: &str, n: &str| match self.get(s, n) {
            Some(m) if self.repeat > 1 => {
                format!(
                    "{} ({}-{})",
                    short(m.median()),
                    short(m.min()),
                    short(m.max())
                )
            }
            Some(m) => short(m.median()),
            None => "-".into(),
        };
        let unit = |n: &str| {
            self.metrics
                .iter()
                .find(|m| m.name == n)
                .map_or("", |m| m.unit)
        };
        let widths: Vec<usize> = names
            .iter()
            .map(|n| {
                scenarios
                    .iter()
                    .map(|s| cell(s, n).len())
                    .chain([n.len()])
                    .max()
                    .unwrap_or(8)
            })
            .collect();
        write!(f, "{:<24}", "scenario")?;
        for (n, w) in names.iter().zip(&widths) {
            write!(f, "  {n:>w$}")?;
        }
        writeln!(f)?;
        write!(f, "{:<24}", "")?;
        for (n, w) in names.iter().zip(&widths) {
            write!(f, "  {:>w$}", unit(n))?;
        }
        writeln!(f)?;
        for s in &scenarios {
            write!(f, "{s:<24}")?;
            for (n, w) in names.iter().zip(&widths) {
                write!(f, "  {:>w$}", cell(s, n))?;
            }
            writeln!(f)?;
        }
        let all = self.scenarios();
        let kernels = ["kernel-vxlan", "kernel-vxlan/off"];
        if kernels.iter().any(|k| all.contains(k)) {
            writeln!(
                f,
                "\nratio to kernel VXLAN (median against median, same metric; `/off` rows \
                 against kernel-vxlan/off, `@6` rows against kernel-vxlan@6, when measured):"
            )?;
            for s in all.iter().filter(|s| !kernels.contains(s)) {
                let (base, family) = match s.split_once('@') {
                    Some((b, fam)) => (b, Some(fam)),
                    None => (*s, None),
                };
                let off = base.ends_with("/off") && all.contains(&kernels[1]);
                let plain = if off { kernels[1] } else { kernels[0] };
                let kernel = family
                    .map(|fam| format!("{plain}@{fam}"))
                    .filter(|k| k != s && all.contains(&k.as_str()))
                    .unwrap_or_else(|| plain.to_owned());
                let kernel = kernel.as_str();
                let mut parts = Vec::new();
                for n in names
                    .iter()
                    .filter(|n| n.starts_with("tcp") || n.starts_with("udp64 rate"))
                {
                    if let (Some(a), Some(k)) = (self.get(s, n), self.get(kernel, n))
                        && k.median() > 0.0
                    {
                        parts.push(format!("{n} {:.2}", a.median() / k.median()));
                    }
                }
                writeln!(f, "  {s:<23} {}", parts.join(", "))?;
            }
        }
        for (scenario, nodes) in &self.counters {
            for (i, counters) in nodes.iter().enumerate() {
                let text: Vec<String> = counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
                writeln!(f, "{scenario} node {}: {}", ["a", "b"][i], text.join(" "))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(scenario: &str, name: &str, samples: &[f64]) -> Metric {
        Metric {
            scenario: scenario.into(),
            name: name.into(),
            unit: "Gbit/s",
            samples: samples.to_vec(),
        }
    }

    fn report() -> Report {
        Report {
            metrics: vec![
                metric("fustian-udp/uring", "tcp x1 a->b", &[2.0, 1.0, 3.0]),
                metric("kernel-vxlan", "tcp x1 a->b", &[4.0, 4.0, 4.0]),
                metric("fustian-udp/uring", "rtt p50", &[50.0, 60.0, 55.0]),
            ],
            counters: vec![(
                "fustian-udp/uring".into(),
                vec![vec![("tx_packets".into(), 7)], vec![]],
            )],
            repeat: 3,
            duration: 1.0,
        }
    }

    #[test]
    fn median_min_and_max_of_the_samples() {
        let m = metric("s", "n", &[3.0, 1.0, 2.0]);
        assert_eq!((m.median(), m.min(), m.max()), (2.0, 1.0, 3.0));
        assert_eq!(metric("s", "n", &[]).median(), 0.0);
    }

    #[test]
    fn the_table_has_rows_ranges_ratios_and_counters() {
        let text = report().to_string();
        let row = text
            .lines()
            .find(|l| l.starts_with("fustian-udp/uring"))
            .expect("a row per scenario");
        assert!(row.contains("2.00 (1.00-3.00)"), "{text}");
        assert!(
            text.lines().any(|l| l.starts_with("kernel-vxlan")),
            "{text}"
        );
        assert!(
            text.contains("ratio to kernel VXLAN") && text.contains("tcp x1 a->b 0.50"),
            "{text}"
        );
        assert!(
            text.contains("fustian-udp/uring node a: tx_packets=7"),
            "{text}"
        );
    }

    #[test]
    fn ipv6_rows_are_held_against_the_kernel_of_their_family() {
        let mut r = report();
        r.metrics.extend([
            metric("fustian-udp/uring@6", "tcp x1 a->b", &[3.0]),
            metric("kernel-vxlan@6", "tcp x1 a->b", &[6.0]),
            metric("fustian-udp/uring@6/4", "tcp x1 a->b", &[1.0]),
        ]);
        let text = r.to_string();
        let ratio = |s: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(s) && l.contains("tcp x1 a->b 0"))
                .map(str::to_owned)
        };
        // 3 / 6 against the IPv6 kernel row, not 3 / 4.
        assert!(
            ratio("fustian-udp/uring@6 ").is_some_and(|l| l.contains("0.50")),
            "{text}"
        );
        // No kernel row for 6/4: the plain one, 1 / 4.
        assert!(
            ratio("fustian-udp/uring@6/4").is_some_and(|l| l.contains("0.25")),
            "{text}"
        );
    }

    #[test]
    fn the_svg_has_one_bar_per_scenario_and_metric() {
        let svg = report().svg();
        let doc = roxmltree::Document::parse(&svg).expect("the SVG parses as XML");
        let bars = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("bar"))
            .count();
        // Three measured pairs; kernel-vxlan has no rtt p50.
        assert_eq!(bars, 3);
    }

    #[test]
    fn json_names_every_metric() {
        let path = std::env::temp_dir().join(format!("fustian-report-{}.json", std::process::id()));
        report().write_json(&path).expect("written");
        let text = std::fs::read_to_string(&path).expect("read back");
        let _ = std::fs::remove_file(&path);
        let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value["metrics"].as_array().map(Vec::len), Some(3));
        assert_eq!(value["repeat"], 3);
    }
}
