//! A small SVG renderer for the load sweep: delivered rate against offered
//! load (left) and p99 latency against offered load on a log scale (right).
//! Plain SVG text, so the project needs no plotting dependency.

use std::fmt::Write;

pub struct Series {
    pub label: String,
    /// (offered msg/s, delivered msg/s, p99 ms)
    pub points: Vec<(f64, f64, Option<f64>)>,
}

const COLOURS: [&str; 5] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"];
const W: f64 = 460.0;
const H: f64 = 320.0;
const PAD_L: f64 = 70.0;
const PAD_R: f64 = 20.0;
const PAD_T: f64 = 40.0;
const PAD_B: f64 = 50.0;

struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Axis {
    fn frac(&self, v: f64) -> f64 {
        if self.log {
            (v.max(self.lo).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }

    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let mut t = Vec::new();
            let mut v = 10f64.powf(self.lo.log10().floor());
            while v <= self.hi * 1.0001 {
                if v >= self.lo * 0.9999 {
                    t.push(v);
                }
                v *= 10.0;
            }
            t
        } else {
            let step = nice_step(self.hi - self.lo);
            (0..=20)
                .map(|i| self.lo + step * i as f64)
                .take_while(|v| *v <= self.hi * 1.0001)
                .collect()
        }
    }
}

fn nice_step(span: f64) -> f64 {
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

fn label(v: f64) -> String {
    if v >= 1000.0 {
        format!("{}k", v / 1000.0)
    } else if v >= 1.0 || v == 0.0 {
        format!("{v}")
    } else {
        format!("{v:.3}").trim_end_matches('0').to_string()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One panel at horizontal offset `ox`.
fn panel(
    out: &mut String,
    ox: f64,
    title: &str,
    x: &Axis,
    y: &Axis,
    series: &[(usize, Vec<(f64, f64)>)],
) {
    let px = |v: f64| ox + PAD_L + x.frac(v) * (W - PAD_L - PAD_R);
    let py = |v: f64| PAD_T + (1.0 - y.frac(v)) * (H - PAD_T - PAD_B);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="24" font-size="14" text-anchor="middle">{}</text>"#,
        ox + W / 2.0,
        escape(title)
    );
    for t in x.ticks() {
        let _ = writeln!(
            out,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#ddd"/><text x="{0:.1}" y="{3:.1}" font-size="11" text-anchor="middle">{4}</text>"##,
            px(t),
            PAD_T,
            H - PAD_B,
            H - PAD_B + 16.0,
            label(t)
        );
    }
    for t in y.ticks() {
        let _ = writeln!(
            out,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="#ddd"/><text x="{3:.1}" y="{4:.1}" font-size="11" text-anchor="end">{5}</text>"##,
            ox + PAD_L,
            py(t),
            ox + W - PAD_R,
            ox + PAD_L - 6.0,
            py(t) + 4.0,
            label(t)
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#333"/>"##,
        ox + PAD_L,
        PAD_T,
        W - PAD_L - PAD_R,
        H - PAD_T - PAD_B
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">offered load, messages/s</text>"#,
        ox + PAD_L + (W - PAD_L - PAD_R) / 2.0,
        H - 12.0
    );
    for (colour, pts) in series {
        let path: Vec<String> = pts
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", px(*a), py(*b)))
            .collect();
        let c = COLOURS
            .get(*colour % COLOURS.len())
            .copied()
            .unwrap_or("#000");
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for p in &path {
            let mut xy = p.split(',');
            let (cx, cy) = (xy.next().unwrap_or("0"), xy.next().unwrap_or("0"));
            let _ = writeln!(out, r#"<circle cx="{cx}" cy="{cy}" r="3" fill="{c}"/>"#);
        }
    }
}

pub fn render(title: &str, series: &[Series]) -> String {
    let max_x = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0.max(p.1)))
        .fold(1.0, f64::max);
    let x = Axis {
        lo: 0.0,
        hi: max_x * 1.05,
        log: false,
    };
    let rate_y = Axis {
        lo: 0.0,
        hi: max_x * 1.05,
        log: false,
    };
    let lat: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|p| p.2))
        .filter(|v| *v > 0.0)
        .collect();
    let lat_lo = lat.iter().copied().fold(f64::INFINITY, f64::min);
    let lat_hi = lat.iter().copied().fold(0.0, f64::max);
    let lat_y = Axis {
        lo: if lat_lo.is_finite() {
            10f64.powf(lat_lo.log10().floor())
        } else {
            0.01
        },
        hi: if lat_hi > 0.0 {
            10f64.powf(lat_hi.log10().ceil())
        } else {
            1000.0
        },
        log: true,
    };
    let mut out = String::new();
    let total_h = H + 30.0 + 18.0 * series.len() as f64;
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{:.0}" height="{total_h:.0}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>"#,
        2.0 * W
    );
    let rates: Vec<(usize, Vec<(f64, f64)>)> = series
        .iter()
        .enumerate()
        .map(|(i, s)| (i, s.points.iter().map(|p| (p.0, p.1)).collect()))
        .collect();
    let lats: Vec<(usize, Vec<(f64, f64)>)> = series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                i,
                s.points
                    .iter()
                    .filter_map(|p| p.2.map(|l| (p.0, l)))
                    .collect(),
            )
        })
        .collect();
    panel(&mut out, 0.0, "delivered messages/s", &x, &rate_y, &rates);
    panel(
        &mut out,
        W,
        "p99 latency, ms (log scale)",
        &x,
        &lat_y,
        &lats,
    );
    for (i, s) in series.iter().enumerate() {
        let y = H + 14.0 + 18.0 * i as f64;
        let c = COLOURS.get(i % COLOURS.len()).copied().unwrap_or("#000");
        let _ = writeln!(
            out,
            r#"<line x1="{0}" y1="{y:.1}" x2="{1}" y2="{y:.1}" stroke="{c}" stroke-width="3"/><text x="{2}" y="{3:.1}" font-size="12">{4}</text>"#,
            PAD_L,
            PAD_L + 24.0,
            PAD_L + 30.0,
            y + 4.0,
            escape(&s.label)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.0}" y="{:.1}" font-size="12" text-anchor="end">{}</text></svg>"#,
        2.0 * W - PAD_R,
        H + 18.0,
        escape(title)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_and_axis() {
        let s = vec![
            Series {
                label: "a<b".into(),
                points: vec![(1000.0, 1000.0, Some(0.5)), (2000.0, 1900.0, Some(3.0))],
            },
            Series {
                label: "c".into(),
                points: vec![(1000.0, 900.0, None), (2000.0, 1000.0, Some(40.0))],
            },
        ];
        let svg = render("t", &s);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("a&lt;b"));
        // Log axis spans 0.1 .. 100 ms.
        assert!(svg.contains(">0.1<") && svg.contains(">100<"));
    }
}
