//! The soak's PNG plot: one panel per series (RSS, descriptors, allocations,
//! relay ports in use) over time, drawn with embedded-graphics' built-in
//! bitmap fonts (no system fonts needed) and written with the `png` crate.

use std::convert::Infallible;
use std::io::{self, BufWriter};
use std::path::Path;

use embedded_graphics::mono_font::ascii::{FONT_6X10, FONT_8X13};
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Line, Polyline, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Text};

use crate::soak::Row;

/// An RGB image in memory that embedded-graphics draws on.
struct Canvas {
    w: u32,
    h: u32,
    px: Vec<u8>,
}

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.w, self.h)
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(
        &mut self,
        pixels: I,
    ) -> Result<(), Infallible> {
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < self.w && (p.y as u32) < self.h {
                let i = 3 * (p.y as usize * self.w as usize + p.x as usize);
                self.px[i..i + 3].copy_from_slice(&[c.r(), c.g(), c.b()]);
            }
        }
        Ok(())
    }
}

const W: u32 = 1000;
const PANEL_H: i32 = 170;
const LEFT: i32 = 80;
const RIGHT: i32 = 20;
const TOP: i32 = 40;
const GAP: i32 = 30;

type Series = (&'static str, fn(&Row) -> f64, Rgb888);

/// Writes the plot of `rows` to `path`. `warmup_s` and `churn_s` (seconds
/// from the start) are marked with grey lines: the steady phase and the
/// drain lie between and after them.
pub fn soak_png(path: &Path, rows: &[Row], warmup_s: f64, churn_s: f64) -> io::Result<()> {
    let series: [Series; 4] = [
        (
            "turnd RSS (MiB)",
            |r| r.rss_kib as f64 / 1024.0,
            Rgb888::new(200, 40, 40),
        ),
        (
            "open descriptors",
            |r| r.fds as f64,
            Rgb888::new(40, 90, 200),
        ),
        (
            "live allocations",
            |r| r.allocations as f64,
            Rgb888::new(30, 140, 60),
        ),
        (
            "relay ports in use",
            |r| r.ports_in_use as f64,
            Rgb888::new(150, 60, 170),
        ),
    ];
    let h = (TOP + series.len() as i32 * (PANEL_H + GAP) + 20) as u32;
    let mut c = Canvas {
        w: W,
        h,
        px: vec![255; (W * h * 3) as usize],
    };
    let black = MonoTextStyle::new(&FONT_6X10, Rgb888::BLACK);
    let title = MonoTextStyle::new(&FONT_8X13, Rgb888::BLACK);
    let t_max = rows.iter().map(|r| r.t_s).fold(1.0, f64::max);
    let _ = Text::new(
        &format!(
            "turnd soak: {:.1} min of churn, then the drain (grey lines: end of warm-up, end of churn)",
            churn_s / 60.0
        ),
        Point::new(LEFT, 20),
        title,
    )
    .draw(&mut c);
    let plot_w = W as i32 - LEFT - RIGHT;
    let x_of = |t: f64| LEFT + ((t / t_max) * plot_w as f64).round() as i32;
    let grey = PrimitiveStyle::with_stroke(Rgb888::new(170, 170, 170), 1);
    for (k, (name, f, color)) in series.iter().enumerate() {
        let top = TOP + k as i32 * (PANEL_H + GAP);
        let bottom = top + PANEL_H;
        let values: Vec<f64> = rows.iter().map(f).collect();
        let hi = values.iter().copied().fold(0.0, f64::max);
        let y_max = if hi <= 0.0 { 1.0 } else { hi * 1.1 };
        let y_of = |v: f64| bottom - ((v / y_max) * PANEL_H as f64).round() as i32;
        let _ = Rectangle::new(
            Point::new(LEFT, top),
            Size::new(plot_w as u32, PANEL_H as u32),
        )
        .into_styled(PrimitiveStyle::with_stroke(Rgb888::BLACK, 1))
        .draw(&mut c);
        for t in [warmup_s, churn_s] {
            if t > 0.0 && t < t_max {
                let _ = Line::new(Point::new(x_of(t), top), Point::new(x_of(t), bottom))
                    .into_styled(grey)
                    .draw(&mut c);
            }
        }
        // y ticks: 0, half, top.
        for frac in [0.0, 0.5, 1.0] {
            let v = y_max * frac;
            let y = y_of(v);
            let _ = Line::new(Point::new(LEFT - 4, y), Point::new(LEFT, y))
                .into_styled(PrimitiveStyle::with_stroke(Rgb888::BLACK, 1))
                .draw(&mut c);
            let label = if y_max >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            };
            let _ =
                Text::with_alignment(&label, Point::new(LEFT - 6, y + 3), black, Alignment::Right)
                    .draw(&mut c);
        }
        // x ticks every ~tenth of the run, in whole minutes (or seconds when short).
        let step_s = nice_step(t_max / 10.0);
        let mut t = 0.0;
        while t <= t_max + 1e-9 {
            let x = x_of(t);
            let _ = Line::new(Point::new(x, bottom), Point::new(x, bottom + 4))
                .into_styled(PrimitiveStyle::with_stroke(Rgb888::BLACK, 1))
                .draw(&mut c);
            let label = if step_s >= 60.0 {
                format!("{:.0} min", t / 60.0)
            } else {
                format!("{t:.0} s")
            };
            let _ =
                Text::with_alignment(&label, Point::new(x, bottom + 14), black, Alignment::Center)
                    .draw(&mut c);
            t += step_s;
        }
        let first = values.first().copied().unwrap_or(0.0);
        let last = values.last().copied().unwrap_or(0.0);
        let _ = Text::new(
            &format!("{name}: start {first:.1}, max {hi:.1}, end {last:.1}"),
            Point::new(LEFT + 6, top + 14),
            MonoTextStyle::new(&FONT_8X13, *color),
        )
        .draw(&mut c);
        let points: Vec<Point> = rows
            .iter()
            .zip(&values)
            .map(|(r, v)| Point::new(x_of(r.t_s), y_of(*v)))
            .collect();
        let _ = Polyline::new(&points)
            .into_styled(PrimitiveStyle::with_stroke(*color, 2))
            .draw(&mut c);
    }
    let file = std::fs::File::create(path)?;
    let mut enc = png::Encoder::new(BufWriter::new(file), c.w, c.h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(io::Error::other)?;
    w.write_image_data(&c.px).map_err(io::Error::other)?;
    w.finish().map_err(io::Error::other)
}

/// 1, 2 or 5 times a power of ten seconds, or whole minutes (1, 2, 5, 10, 15, 30, 60).
fn nice_step(raw_s: f64) -> f64 {
    if raw_s >= 60.0 {
        let m = raw_s / 60.0;
        let pick = [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0]
            .into_iter()
            .find(|&s| s >= m)
            .unwrap_or(60.0);
        return pick * 60.0;
    }
    let p = 10f64.powf(raw_s.max(1.0).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|k| k * p)
        .find(|&s| s >= raw_s)
        .unwrap_or(10.0 * p)
}
