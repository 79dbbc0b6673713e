//! The report: a markdown table, a JSON file and an SVG chart of the scale curves.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// Which direction is better for a scenario's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

/// One system's figure in one scenario.
#[derive(Debug, Clone)]
pub struct Figure {
    pub system: &'static str,
    pub value: Option<f64>,
    pub note: Option<String>,
}

/// One scenario row.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub id: &'static str,
    pub title: String,
    pub unit: &'static str,
    pub better: Better,
    pub figures: Vec<Figure>,
}

impl Scenario {
    pub fn new(
        id: &'static str,
        title: impl Into<String>,
        unit: &'static str,
        better: Better,
    ) -> Self {
        Self {
            id,
            title: title.into(),
            unit,
            better,
            figures: Vec::new(),
        }
    }

    pub fn add(&mut self, system: &'static str, value: f64) {
        self.figures.push(Figure {
            system,
            value: Some(value),
            note: None,
        });
    }

    pub fn skip(&mut self, system: &'static str, why: impl Into<String>) {
        self.figures.push(Figure {
            system,
            value: None,
            note: Some(why.into()),
        });
    }

    pub fn value(&self, system: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.system == system)
            .and_then(|f| f.value)
    }

    /// leasepool's figure divided by `peer`'s.
    pub fn ratio(&self, peer: &str) -> Option<f64> {
        let r = self.value(crate::LEASEPOOL)? / self.value(peer)?;
        r.is_finite().then_some(r)
    }
}

/// A point on a scale curve.
#[derive(Debug, Clone)]
pub struct Curve {
    pub title: &'static str,
    pub x_label: &'static str,
    pub y_label: &'static str,
    pub log_x: bool,
    pub series: Vec<(&'static str, Vec<(f64, f64)>)>,
}

/// A target check.
#[derive(Debug, Clone)]
pub struct Target {
    pub what: String,
    pub measured: Option<f64>,
    pub limit: String,
    pub met: Option<bool>,
}

fn fmt_value(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

pub fn markdown(header: &str, scenarios: &[Scenario], targets: &[Target]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "{header}\n");
    let _ = writeln!(
        md,
        "| scenario | unit | system | figure | leasepool ÷ system |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for s in scenarios {
        for f in &s.figures {
            let figure = match (f.value, &f.note) {
                (Some(v), _) => fmt_value(v),
                (None, Some(n)) => format!("— ({n})"),
                (None, None) => "—".to_owned(),
            };
            let ratio = if f.system == crate::LEASEPOOL {
                String::new()
            } else {
                s.ratio(f.system)
                    .map(|r| format!("{r:.3}"))
                    .unwrap_or_default()
            };
            let better = match s.better {
                Better::Lower => "lower is better",
                Better::Higher => "higher is better",
            };
            let _ = writeln!(
                md,
                "| {} {} | {} ({better}) | {} | {figure} | {ratio} |",
                s.id, s.title, s.unit, f.system
            );
        }
    }
    let _ = writeln!(md, "\n## Targets\n");
    let _ = writeln!(md, "| target | measured | limit | met |");
    let _ = writeln!(md, "|---|---|---|---|");
    for t in targets {
        let measured = t.measured.map(fmt_value).unwrap_or_else(|| "—".to_owned());
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(md, "| {} | {measured} | {} | {met} |", t.what, t.limit);
    }
    md
}

pub fn json(header: &Value, scenarios: &[Scenario], curves: &[Curve], targets: &[Target]) -> Value {
    json!({
        "run": header,
        "scenarios": scenarios.iter().map(|s| json!({
            "id": s.id,
            "title": s.title,
            "unit": s.unit,
            "better": match s.better { Better::Lower => "lower", Better::Higher => "higher" },
            "figures": s.figures.iter().map(|f| json!({
                "system": f.system,
                "value": f.value,
                "note": f.note,
                "leasepool_ratio": if f.system == crate::LEASEPOOL { None } else { s.ratio(f.system) },
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "curves": curves.iter().map(|c| json!({
            "title": c.title, "x": c.x_label, "y": c.y_label,
            "series": c.series.iter().map(|(name, pts)| json!({"system": name, "points": pts})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "targets": targets.iter().map(|t| json!({
            "target": t.what, "measured": t.measured, "limit": t.limit, "met": t.met,
        })).collect::<Vec<_>>(),
    })
}

const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Panels side by side, one per curve; log-x where asked.
pub fn svg(curves: &[Curve]) -> String {
    let (pw, ph, m) = (460.0, 320.0, 60.0);
    let width = pw * curves.len() as f64;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{ph}" font-family="sans-serif" font-size="12">"#
    );
    out.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, c) in curves.iter().enumerate() {
        let x0 = pw * i as f64;
        let pts: Vec<(f64, f64)> = c
            .series
            .iter()
            .flat_map(|(_, p)| p.iter().copied())
            .collect();
        if pts.is_empty() {
            continue;
        }
        let fx = |x: f64| if c.log_x { x.max(1e-9).log10() } else { x };
        let (xmin, xmax) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
            (a.min(fx(p.0)), b.max(fx(p.0)))
        });
        let ymax = pts.iter().fold(0.0f64, |a, p| a.max(p.1)) * 1.1;
        let sx = |x: f64| x0 + m + (fx(x) - xmin) / (xmax - xmin).max(1e-9) * (pw - 2.0 * m);
        let sy = |y: f64| ph - m - y / ymax.max(1e-9) * (ph - 2.0 * m);
        let _ = write!(
            out,
            r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
            x0 + pw / 2.0,
            c.title
        );
        let _ = write!(
            out,
            r#"<line x1="{a}" y1="{b}" x2="{c2}" y2="{b}" stroke="black"/><line x1="{a}" y1="{b}" x2="{a}" y2="{t}" stroke="black"/>"#,
            a = x0 + m,
            b = ph - m,
            c2 = x0 + pw - m,
            t = m
        );
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="{}" y="{}" transform="rotate(-90 {} {})" text-anchor="middle">{}</text>"#,
            x0 + pw / 2.0,
            ph - 15.0,
            c.x_label,
            x0 + 15.0,
            ph / 2.0,
            x0 + 15.0,
            ph / 2.0,
            c.y_label
        );
        for k in 0..=4 {
            let y = ymax * k as f64 / 4.0;
            let _ = write!(
                out,
                r##"<text x="{}" y="{}" text-anchor="end" font-size="10">{}</text><line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#ddd"/>"##,
                x0 + m - 4.0,
                sy(y) + 3.0,
                fmt_value(y),
                x0 + m,
                sy(y),
                x0 + pw - m,
                sy(y)
            );
        }
        let mut xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
        xs.sort_by(|a, b| a.total_cmp(b));
        xs.dedup();
        for x in xs {
            let _ = write!(
                out,
                r#"<text x="{}" y="{}" text-anchor="middle" font-size="10">{}</text>"#,
                sx(x),
                ph - m + 14.0,
                if x.fract() == 0.0 {
                    format!("{x:.0}")
                } else {
                    fmt_value(x)
                }
            );
        }
        for (j, (name, points)) in c.series.iter().enumerate() {
            let color = COLORS[j % COLORS.len()];
            let line: Vec<String> = points
                .iter()
                .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1)))
                .collect();
            let _ = write!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                line.join(" ")
            );
            for p in points {
                let _ = write!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                    sx(p.0),
                    sy(p.1)
                );
            }
            let _ = write!(
                out,
                r#"<text x="{}" y="{}" fill="{color}">{name}</text>"#,
                x0 + m + 10.0,
                m + 14.0 * j as f64
            );
        }
    }
    out.push_str("</svg>\n");
    out
}
