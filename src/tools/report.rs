//! `miwv report`: a finished run's scores as pictures and one self-contained HTML page.
//!
//! `scores.jsonl` answers "which samples were chosen", but not "does this selection look
//! right": whether the chosen share sits in a clear tail or in the middle of a noisy bulk,
//! whether a few outliers dominate, what the chosen samples actually say. The report shows the
//! MIWV distribution with the selection threshold, zero-shot against one-shot loss, the top and
//! bottom samples with their text, and the samples that could not be scored.
//!
//! Everything is read back from the output directory (and the dataset `run.json` names, for
//! the sample texts), so a report can be made for any finished run, on another machine, without
//! the models. The page embeds its pictures as data URIs and loads nothing, so it can be mailed
//! or archived as one file.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

use ab_glyph::FontRef;
use base64::Engine as _;
use plotters::coord::types::{RangedCoordf64, RangedCoordu32};
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::data::dataset::Sample;
use crate::data::output::{file_sha256, write_atomically, OutputError};
use crate::scoring::score::Unscorable;
use crate::state::schema::{
    self, BudgetRecord, EmbedderRecord, FileRecord, RunRecord, SchemaError, ScoreRow, UnscoredGroup,
};

/// Size in pixels of `miwv-histogram.png`.
pub const HISTOGRAM_SIZE: (u32, u32) = (1200, 700);
/// Size in pixels of `losses-scatter.png`.
pub const SCATTER_SIZE: (u32, u32) = (1000, 900);
/// Characters of a prompt or response shown in the tables.
pub const PREVIEW_CHARS: usize = 160;

/// The text fonts are drawn with: DejaVu Sans, embedded so the pictures look the same on every
/// machine and need no system fonts (licence in `assets/fonts/`).
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Not selected: blue; selected: vermilion (Okabe–Ito, distinguishable with colour blindness).
const BLUE: RGBColor = RGBColor(0, 114, 178);
const VERMILION: RGBColor = RGBColor(213, 94, 0);
const DARK: RGBColor = RGBColor(40, 40, 40);
const GREY: RGBColor = RGBColor(110, 110, 110);

/// Why a report cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// An input file or the output directory is not there.
    #[error("{path}: not found ({what})")]
    Missing {
        /// The missing file or directory.
        path: PathBuf,
        /// What it should have been.
        what: &'static str,
    },
    /// The report's directory could not be made.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `scores.jsonl` or `run.json` cannot be read or does not match its schema.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A picture could not be drawn.
    #[error("{path}: cannot draw the picture: {problem}")]
    Draw {
        /// The picture being drawn.
        path: PathBuf,
        /// What failed.
        problem: String,
    },
    /// A report file could not be written.
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// The files a report wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReportFiles {
    /// `report/miwv-histogram.png`.
    pub histogram: PathBuf,
    /// `report/losses-scatter.png`.
    pub scatter: PathBuf,
    /// `report/report.html`.
    pub html: PathBuf,
    /// Why the sample texts are missing from the page, when they are.
    pub previews_missing: Option<String>,
}

/// The text shown for a sample in the report's tables: its prompt and its response, before
/// shortening. The only place that knows which fields of a [`Sample`] make up its prompt and
/// its response.
/// A conversation shows its first exchange and how many more follow.
pub fn sample_preview(sample: &Sample) -> (String, String) {
    let Some(first) = sample.turns.first() else {
        return (String::new(), String::new());
    };
    let mut response = first.output.clone();
    if sample.turns.len() > 1 {
        response += &format!("\n(+{} more turns)", sample.turns.len() - 1);
    }
    (first.prompt_text(), response)
}

/// Reads the run in `out_dir` and writes `out_dir/report/` with the two pictures and the page;
/// `top` samples are listed from each end of the ranking.
///
/// # Errors
/// [`ReportError`] naming the file that is missing, unreadable or malformed, or that could not
/// be written. A dataset that is gone or changed is not an error: the page says so and shows no
/// sample texts.
pub fn write_report(out_dir: &Path, top: usize) -> Result<ReportFiles, ReportError> {
    let (rows, run) = read_run_dir(out_dir)?;
    let previews = read_previews(&run);
    if let Err(why) = &previews {
        tracing::warn!("the report shows no sample texts: {why}");
    }

    let dir = out_dir.join("report");
    std::fs::create_dir_all(&dir).map_err(|source| ReportError::Io {
        path: dir.clone(),
        source,
    })?;
    let model = model_name(&run);
    let histogram = dir.join("miwv-histogram.png");
    let histogram_png = write_picture(&histogram, HISTOGRAM_SIZE, |area| {
        draw_histogram(area, &rows, &model)
    })?;
    let scatter = dir.join("losses-scatter.png");
    let scatter_png = write_picture(&scatter, SCATTER_SIZE, |area| {
        draw_scatter(area, &rows, &model)
    })?;

    let html = dir.join("report.html");
    let page = render_html(
        out_dir,
        &run,
        &rows,
        previews.as_ref().map_err(String::as_str),
        top,
        &histogram_png,
        &scatter_png,
    );
    write_bytes(&html, page.as_bytes())?;

    Ok(ReportFiles {
        histogram,
        scatter,
        html,
        previews_missing: previews.err(),
    })
}

/// Reads the run's scores and record before anything is written, so a run that cannot be
/// reported leaves no `report/` behind.
fn read_run_dir(out_dir: &Path) -> Result<(Vec<ScoreRow>, RunRecord), ReportError> {
    if !out_dir.is_dir() {
        return Err(ReportError::Missing {
            path: out_dir.to_path_buf(),
            what: "the output directory of `miwv select`",
        });
    }
    let rows = found(
        schema::read_scores(&out_dir.join("scores.jsonl")),
        "written by `miwv select`; is this a finished run?",
    )?;
    let run = found(
        schema::read_run(&out_dir.join("run.json")),
        "`miwv select` writes it last; without it the run has not finished",
    )?;
    Ok((rows, run))
}

/// A schema reader's result, a missing file reported with `what` it should have been.
fn found<T>(read: Result<T, SchemaError>, what: &'static str) -> Result<T, ReportError> {
    read.map_err(|e| {
        if e.is_missing() {
            ReportError::Missing {
                path: e.path().to_path_buf(),
                what,
            }
        } else {
            ReportError::Schema(e)
        }
    })
}

/// Draws a picture and writes it, returning the PNG so the page can embed it.
fn write_picture(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&Area) -> DrawResult,
) -> Result<Vec<u8>, ReportError> {
    let png = draw_png(path, size, draw)?;
    write_bytes(path, &png)?;
    Ok(png)
}

/// Writes a report file whole or not at all.
fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    write_atomically(path, |out| out.write_all(bytes))
}

/// The scoring model's name as its GGUF gives it, for titles and the summary.
fn model_name(run: &RunRecord) -> String {
    run.scoring_model
        .gguf
        .as_ref()
        .and_then(|g| g.name.clone())
        .unwrap_or_else(|| "unknown model".into())
}

/// Shortened (prompt, response) texts by sample id, or why there are none.
type Previews = HashMap<String, (String, String)>;

/// The sample texts for the tables, taken only from the very dataset the run scored.
fn read_previews(run: &RunRecord) -> Result<Previews, String> {
    let path = &run.data.path;
    let (now, _) = file_sha256(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("the dataset {} is gone", path.display()),
        _ => format!("the dataset cannot be read: {}: {e}", path.display()),
    })?;
    if !now.eq_ignore_ascii_case(&run.data.sha256) {
        return Err(format!(
            "the dataset {} has changed since the run (its sha256 differs from run.json's)",
            path.display()
        ));
    }
    let (_, dataset) = crate::data::records::read_samples(path, &run.read)
        .map_err(|e| format!("the dataset cannot be read: {e}"))?;
    Ok(dataset
        .samples
        .iter()
        .map(|sample| {
            let (prompt, response) = sample_preview(sample);
            (
                sample.id.clone(),
                (
                    shorten(&prompt, PREVIEW_CHARS),
                    shorten(&response, PREVIEW_CHARS),
                ),
            )
        })
        .collect())
}

/// `text` with blank lines dropped and runs of spaces and tabs made one space, cut to `max`
/// characters with an ellipsis.
pub fn shorten(text: &str, max: usize) -> String {
    let lines: Vec<String> = text
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| !line.is_empty())
        .collect();
    let flat = lines.join("\n");
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

/// Whether the row is in `selected.jsonl`.
fn is_selected(row: &ScoreRow) -> bool {
    row.selected == Some(true)
}

/// A loss or MIWV as the pictures and tables take it: `None` where undefined (NaN).
fn defined(v: f32) -> Option<f64> {
    v.is_finite().then(|| f64::from(v))
}

/// Scored rows, best first (the selection's order: higher MIWV first, ties to the lower index).
fn ranked(rows: &[ScoreRow]) -> Vec<&ScoreRow> {
    let mut scored: Vec<&ScoreRow> = rows.iter().filter(|r| r.score().is_some()).collect();
    scored.sort_by(|a, b| b.miwv.total_cmp(&a.miwv).then(a.index.cmp(&b.index)));
    scored
}

/// The lowest MIWV among the selected samples: every sample at or above it was selected.
fn threshold(rows: &[ScoreRow]) -> Option<f64> {
    rows.iter()
        .filter(|r| is_selected(r))
        .filter_map(ScoreRow::score)
        .min_by(f32::total_cmp)
        .map(f64::from)
}

// ---------------------------------------------------------------------------------------------
// Pictures

/// Registers the embedded font with plotters, which uses it to measure text (the label areas).
fn register_font() -> Result<FontRef<'static>, String> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let registered = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    match FontRef::try_from_slice(FONT) {
        Ok(font) if registered => Ok(font),
        _ => Err("the embedded font is not a valid TrueType font".into()),
    }
}

mod canvas {
    use ab_glyph::{Font as _, FontRef, ScaleFont as _};
    use plotters::backend::{BitMapBackend, DrawingBackend};
    use plotters::style::text_anchor::{HPos, VPos};
    use plotters_backend::{
        BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
    };

    /// A bitmap that draws text itself: plotters 0.3.7's ab_glyph renderer ignores each glyph's
    /// side bearing, which spaces letters unevenly ("l oss"). Text is laid out exactly as plotters
    /// measures it (advances and kerning), so anchors and label areas agree; everything else is
    /// the bitmap's own drawing.
    pub(super) struct Canvas<'a> {
        pub(super) bitmap: BitMapBackend<'a>,
        pub(super) font: FontRef<'static>,
    }

    type BitmapError = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

    impl DrawingBackend for Canvas<'_> {
        type ErrorType = BitmapError;

        fn get_size(&self) -> (u32, u32) {
            self.bitmap.get_size()
        }

        fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<BitmapError>> {
            self.bitmap.ensure_prepared()
        }

        fn present(&mut self) -> Result<(), DrawingErrorKind<BitmapError>> {
            self.bitmap.present()
        }

        fn draw_pixel(
            &mut self,
            point: BackendCoord,
            color: BackendColor,
        ) -> Result<(), DrawingErrorKind<BitmapError>> {
            self.bitmap.draw_pixel(point, color)
        }

        fn draw_line<S: BackendStyle>(
            &mut self,
            from: BackendCoord,
            to: BackendCoord,
            style: &S,
        ) -> Result<(), DrawingErrorKind<BitmapError>> {
            self.bitmap.draw_line(from, to, style)
        }

        fn draw_rect<S: BackendStyle>(
            &mut self,
            upper_left: BackendCoord,
            bottom_right: BackendCoord,
            style: &S,
            fill: bool,
        ) -> Result<(), DrawingErrorKind<BitmapError>> {
            self.bitmap.draw_rect(upper_left, bottom_right, style, fill)
        }

        fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
            &mut self,
            path: I,
            style: &S,
        ) -> Result<(), DrawingErrorKind<BitmapError>> {
            self.bitmap.draw_path(path, style)
        }

        fn draw_circle<S: BackendStyle>(
            &mut self,
            center: BackendCoord,
            radius: u32,
            style: &S,
            fill: bool,
        ) -> Result<(), DrawingErrorKind<BitmapError>> {
            self.bitmap.draw_circle(center, radius, style, fill)
        }

        fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
            &mut self,
            vert: I,
            style: &S,
        ) -> Result<(), DrawingErrorKind<BitmapError>> {
            self.bitmap.fill_polygon(vert, style)
        }

        fn draw_text<S: BackendTextStyle>(
            &mut self,
            text: &str,
            style: &S,
            pos: BackendCoord,
        ) -> Result<(), DrawingErrorKind<BitmapError>> {
            let color = style.color();
            if color.alpha == 0.0 {
                return Ok(());
            }
            let size = style.size() as f32;
            let scaled = self.font.as_scaled(size);
            let mut glyphs = Vec::with_capacity(text.len());
            let mut caret = 0f32;
            let mut previous = None;
            for c in text.chars() {
                let id = scaled.glyph_id(c);
                if let Some(previous) = previous {
                    caret += scaled.kern(previous, id);
                }
                glyphs.push(id.with_scale_and_position(size, ab_glyph::point(caret, 0.0)));
                caret += scaled.h_advance(id);
                previous = Some(id);
            }
            // The box plotters measures: the advances wide, size / 1.24 high.
            let (width, height) = (caret.round() as i32, (style.size() / 1.24) as i32);
            let anchor = style.anchor();
            let dx = match anchor.h_pos {
                HPos::Left => 0,
                HPos::Center => -width / 2,
                HPos::Right => -width,
            };
            let dy = match anchor.v_pos {
                VPos::Top => 0,
                VPos::Center => -height / 2,
                VPos::Bottom => -height,
            };
            // Capitals centred in that box, so labels line up with ticks and legend swatches.
            let cap = self
                .font
                .outline_glyph(scaled.glyph_id('H').with_scale(size))
                .map_or(scaled.ascent(), |o| -o.px_bounds().min.y);
            let dy = dy + ((height as f32 + cap) / 2.0).round() as i32;
            let transform = style.transform();
            for glyph in glyphs {
                let Some(outline) = self.font.outline_glyph(glyph) else {
                    continue;
                };
                let bounds = outline.px_bounds();
                let mut drawn = Ok(());
                outline.draw(|x, y, coverage| {
                    if drawn.is_err() || coverage <= 0.0 {
                        return;
                    }
                    let (x, y) = transform.transform(
                        bounds.min.x as i32 + x as i32 + dx,
                        bounds.min.y as i32 + y as i32 + dy,
                    );
                    let pixel = BackendColor {
                        alpha: color.alpha * f64::from(coverage.min(1.0)),
                        rgb: color.rgb,
                    };
                    drawn = self.bitmap.draw_pixel((pos.0 + x, pos.1 + y), pixel);
                });
                drawn?;
            }
            Ok(())
        }
    }
}

use canvas::Canvas;

type Area<'a> = DrawingArea<Canvas<'a>, Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error + 'static>>;

/// Draws into an RGB buffer of `size` and encodes it as PNG.
fn draw_png(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&Area) -> DrawResult,
) -> Result<Vec<u8>, ReportError> {
    let fail = |problem: String| ReportError::Draw {
        path: path.to_path_buf(),
        problem,
    };
    let font = register_font().map_err(fail)?;
    let mut rgb = vec![255u8; width as usize * height as usize * 3];
    {
        let area = Canvas {
            bitmap: BitMapBackend::with_buffer(&mut rgb, (width, height)),
            font,
        }
        .into_drawing_area();
        area.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        draw(&area).map_err(|e| fail(e.to_string()))?;
        area.present().map_err(|e| fail(e.to_string()))?;
    }
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Best);
    let mut writer = encoder
        .write_header()
        .map_err(|e| fail(format!("PNG: {e}")))?;
    writer
        .write_image_data(&rgb)
        .and_then(|()| writer.finish())
        .map_err(|e| fail(format!("PNG: {e}")))?;
    Ok(png)
}

fn font(size: u32) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&DARK)
}

/// Draws a title and a subtitle across the top and returns the area below them.
fn titled<'a>(
    area: &Area<'a>,
    title: &str,
    subtitle: &str,
) -> Result<Area<'a>, Box<dyn std::error::Error>> {
    let (top, body) = area.split_vertically(78);
    let (width, _) = top.dim_in_pixel();
    let centre = |style: TextStyle<'static>| style.pos(Pos::new(HPos::Center, VPos::Top));
    top.draw_text(title, &centre(font(26)), (width as i32 / 2, 14))?;
    top.draw_text(
        subtitle,
        &centre(font(17).color(&GREY)),
        (width as i32 / 2, 50),
    )?;
    Ok(body)
}

/// `n` with thousands separated by commas: 52,002.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn count_label(n: usize, one: &str) -> String {
    match n {
        1 => format!("1 {one}"),
        n => format!("{} {one}s", thousands(n)),
    }
}

/// Bin edges for the histogram: about Freedman–Diaconis wide (10 to 60 bins), and aligned so
/// the selection threshold (or 0) is an edge, so bars are wholly selected or not.
fn bins(values: &[f64], anchor: f64) -> (f64, f64, usize) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (lo, hi) = (sorted[0], sorted[sorted.len() - 1]);
    let span = (hi - lo).max(1e-3);
    let quantile = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let iqr = quantile(0.75) - quantile(0.25);
    let n = sorted.len() as f64;
    let fd = 2.0 * iqr / n.cbrt();
    let count = if fd > 0.0 {
        (span / fd).ceil()
    } else {
        n.sqrt().ceil()
    };
    let width = span / count.clamp(10.0, 60.0);
    let start = anchor - ((anchor - lo) / width).ceil() * width;
    let count = ((hi - start) / width).floor() as usize + 1;
    (start, width, count)
}

/// The margins and label areas both pictures' charts share.
fn chart_frame<'a, 'b, 'c>(body: &'a Area<'c>) -> ChartBuilder<'a, 'b, Canvas<'c>> {
    let mut builder = ChartBuilder::on(body);
    builder
        .margin_left(24)
        .margin_right(36)
        .margin_bottom(16)
        .margin_top(8)
        .x_label_area_size(64)
        .y_label_area_size(76);
    builder
}

/// Draws the series' legend in the upper left, the same way in both pictures.
fn draw_legend<'a, 'c: 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, Canvas<'c>, CT>,
) -> DrawResult {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .margin(14)
        .legend_area_size(26)
        .label_font(font(17))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(200, 200, 200))
        .draw()?;
    Ok(())
}

/// The histogram's chart: MIWV across, sample counts up.
type HistogramChart<'a, 'c> =
    ChartContext<'a, Canvas<'c>, Cartesian2d<RangedCoordf64, RangedCoordu32>>;

/// The histogram's bars: per bin, how many samples were not selected and how many were.
struct Stacks {
    /// The first bin's left edge.
    start: f64,
    /// Every bin's width.
    width: f64,
    /// (not selected, selected) per bin.
    counts: Vec<(u32, u32)>,
}

impl Stacks {
    /// Counts (MIWV, selected) pairs into bins with an edge at the threshold `cut` (or 0).
    fn new(scored: &[(f64, bool)], cut: Option<f64>) -> Self {
        let values: Vec<f64> = scored.iter().map(|(m, _)| *m).collect();
        let (start, width, count) = if values.is_empty() {
            (-1.0, 0.1, 20)
        } else {
            bins(&values, cut.unwrap_or(0.0))
        };
        let mut counts = vec![(0u32, 0u32); count];
        for &(m, sel) in scored {
            let bin = (((m - start) / width + 1e-6).floor().max(0.0) as usize).min(count - 1);
            if sel {
                counts[bin].1 += 1;
            } else {
                counts[bin].0 += 1;
            }
        }
        Self {
            start,
            width,
            counts,
        }
    }

    /// The y axis's top: room above the tallest bar for the legend, and at least 4.
    fn y_max(&self) -> u32 {
        let top = self.counts.iter().map(|(a, b)| a + b).max().unwrap_or(0);
        (top + 1).max((f64::from(top) * 1.12).ceil() as u32).max(4)
    }

    /// The x axis: every bin and MIWV = 0, with a little room either side.
    fn x_range(&self) -> Range<f64> {
        let end = self.start + self.width * self.counts.len() as f64;
        let pad = (end - self.start) * 0.02;
        (self.start.min(0.0) - pad)..(end.max(0.0) + pad)
    }

    /// Bin `i`'s bar from count `from` to `to`, with a gap either side.
    fn bar(&self, i: usize, from: u32, to: u32, colour: RGBColor) -> Rectangle<(f64, u32)> {
        let gap = self.width * 0.06;
        let x0 = self.start + self.width * i as f64;
        Rectangle::new(
            [(x0 + gap, from), (x0 + self.width - gap, to)],
            colour.filled(),
        )
    }
}

/// Draws the MIWV histogram: counts per bin, the selected share stacked on top.
fn draw_histogram(area: &Area, rows: &[ScoreRow], model: &str) -> DrawResult {
    let scored: Vec<(f64, bool)> = rows
        .iter()
        .filter_map(|r| defined(r.miwv).map(|m| (m, is_selected(r))))
        .collect();
    let selected = scored.iter().filter(|(_, s)| *s).count();
    let cut = threshold(rows);
    let subtitle = histogram_subtitle(rows.len(), scored.len(), selected, cut);
    let body = titled(area, &format!("MIWV distribution — {model}"), &subtitle)?;

    let stacks = Stacks::new(&scored, cut);
    let y_max = stacks.y_max();
    let mut chart = chart_frame(&body).build_cartesian_2d(stacks.x_range(), 0u32..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(TRANSPARENT)
        .axis_style(GREY)
        .x_labels(12)
        .y_labels(8)
        .x_label_formatter(&|v| format_tick(*v))
        .label_style(font(17))
        .axis_desc_style(font(19))
        .x_desc("MIWV = one-shot loss − zero-shot loss (nats)")
        .y_desc("samples")
        .draw()?;
    draw_bars(&mut chart, &stacks, scored.len() - selected, selected)?;
    draw_markers(&mut chart, cut, y_max)?;
    draw_legend(&mut chart)
}

/// The histogram's subtitle: how many were scored and selected, and from which MIWV on.
fn histogram_subtitle(samples: usize, scored: usize, selected: usize, cut: Option<f64>) -> String {
    match cut {
        Some(t) => format!(
            "{} of {} scored; {} selected (MIWV ≥ {t:.3})",
            thousands(scored),
            count_label(samples, "sample"),
            thousands(selected),
        ),
        None => format!(
            "{} of {} scored; none selected",
            thousands(scored),
            count_label(samples, "sample"),
        ),
    }
}

/// Draws the stacked bars, not selected below and selected on top, with their legend entries.
fn draw_bars(
    chart: &mut HistogramChart,
    stacks: &Stacks,
    not_selected: usize,
    selected: usize,
) -> DrawResult {
    chart
        .draw_series(
            stacks
                .counts
                .iter()
                .enumerate()
                .filter(|(_, (n, _))| *n > 0)
                .map(|(i, &(n, _))| stacks.bar(i, 0, n, BLUE)),
        )?
        .label(format!("not selected ({})", thousands(not_selected)))
        .legend(|(x, y)| Rectangle::new([(x, y - 7), (x + 16, y + 7)], BLUE.filled()));
    chart
        .draw_series(
            stacks
                .counts
                .iter()
                .enumerate()
                .filter(|(_, (_, s))| *s > 0)
                .map(|(i, &(n, s))| stacks.bar(i, n, n + s, VERMILION)),
        )?
        .label(format!("selected ({})", thousands(selected)))
        .legend(|(x, y)| Rectangle::new([(x, y - 7), (x + 16, y + 7)], VERMILION.filled()));
    Ok(())
}

/// Draws MIWV = 0 (dashed) and the selection threshold (solid), so the chosen tail reads
/// against both.
fn draw_markers(chart: &mut HistogramChart, cut: Option<f64>, y_max: u32) -> DrawResult {
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, 0), (0.0, y_max)],
            8,
            6,
            GREY.stroke_width(2),
        ))?
        .label("MIWV = 0")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], GREY.stroke_width(2)));
    if let Some(t) = cut {
        chart
            .draw_series(LineSeries::new([(t, 0), (t, y_max)], DARK.stroke_width(2)))?
            .label(format!("selection threshold {t:.3}"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], DARK.stroke_width(2)));
    }
    Ok(())
}

/// A tick label with as few decimals as the value needs (at most 3).
fn format_tick(v: f64) -> String {
    let text = format!("{v:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    match text {
        "-0" => "0".into(),
        t => t.replace('-', "−"),
    }
}

/// The scatter plot's chart: zero-shot loss across, one-shot loss up.
type ScatterChart<'a, 'c> =
    ChartContext<'a, Canvas<'c>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws zero-shot against one-shot loss per scored sample, with the diagonal MIWV = 0.
fn draw_scatter(area: &Area, rows: &[ScoreRow], model: &str) -> DrawResult {
    let points = loss_points(rows);
    let selected = points.iter().filter(|p| p.2).count();
    let above = points.iter().filter(|p| p.1 > p.0).count();
    let body = titled(
        area,
        &format!("Zero-shot vs one-shot loss — {model}"),
        &format!(
            "{}; {} above the diagonal (MIWV > 0), {} selected",
            count_label(points.len(), "scored sample"),
            thousands(above),
            thousands(selected),
        ),
    )?;

    let range = loss_range(&points);
    let mut chart = chart_frame(&body).build_cartesian_2d(range.clone(), range.clone())?;
    chart
        .configure_mesh()
        .bold_line_style(RGBColor(230, 230, 230))
        .light_line_style(TRANSPARENT)
        .axis_style(GREY)
        .x_labels(10)
        .y_labels(10)
        .x_label_formatter(&|v| format_tick(*v))
        .y_label_formatter(&|v| format_tick(*v))
        .label_style(font(17))
        .axis_desc_style(font(19))
        .x_desc("zero-shot loss L0 (nats per response token)")
        .y_desc("one-shot loss L1 (nats per response token)")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            [(range.start, range.start), (range.end, range.end)],
            GREY.stroke_width(2),
        ))?
        .label("L1 = L0 (MIWV = 0)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], GREY.stroke_width(2)));
    draw_points(&mut chart, &points, selected)?;
    draw_legend(&mut chart)
}

/// (zero-shot loss, one-shot loss, selected) of every scored sample with both losses defined.
fn loss_points(rows: &[ScoreRow]) -> Vec<(f64, f64, bool)> {
    rows.iter()
        .filter(|r| r.score().is_some())
        .filter_map(|r| {
            Some((
                defined(r.loss_zero_shot)?,
                defined(r.loss_one_shot)?,
                is_selected(r),
            ))
        })
        .collect()
}

/// One range for both axes, so the diagonal runs at 45°: every loss with a little room, from
/// 0 at the lowest.
fn loss_range(points: &[(f64, f64, bool)]) -> Range<f64> {
    let (mut lo, mut hi) = points
        .iter()
        .flat_map(|&(x, y, _)| [x, y])
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.04).max(0.05);
    (lo - pad).max(0.0)..hi + pad
}

/// Draws the points, smaller and fainter when there are many so dense regions stay readable;
/// the selected ones larger, outlined and on top.
fn draw_points(
    chart: &mut ScatterChart,
    points: &[(f64, f64, bool)],
    selected: usize,
) -> DrawResult {
    let (radius, opacity) = match points.len() {
        0..=2000 => (4, 0.55),
        2001..=20000 => (3, 0.35),
        _ => (2, 0.2),
    };
    chart
        .draw_series(
            points
                .iter()
                .filter(|p| !p.2)
                .map(|&(x, y, _)| Circle::new((x, y), radius, BLUE.mix(opacity).filled())),
        )?
        .label(format!(
            "not selected ({})",
            thousands(points.len() - selected)
        ))
        .legend(|(x, y)| Circle::new((x + 9, y), 5, BLUE.mix(0.55).filled()));
    let large = if points.len() > 2000 { 4 } else { 6 };
    chart
        .draw_series(points.iter().filter(|p| p.2).flat_map(|&(x, y, _)| {
            [
                Circle::new((x, y), large, VERMILION.filled()),
                Circle::new((x, y), large, DARK.stroke_width(1)),
            ]
        }))?
        .label(format!("selected ({})", thousands(selected)))
        .legend(|(x, y)| Circle::new((x + 9, y), 6, VERMILION.filled()));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The page

/// `text` with the characters HTML gives a meaning replaced by references.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn number(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "—".into(),
    }
}

fn data_uri(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', 'DejaVu Sans', sans-serif; color: #222;
       margin: 2em auto; max-width: 1240px; padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 0.3em 0.6em; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { max-width: 26em; overflow-wrap: anywhere; white-space: pre-line; }
tr.selected td:first-child { border-left: 4px solid #d55e00; }
table.summary th { background: none; font-weight: 600; width: 11em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e4e4; }
figcaption { color: #555; font-size: 0.9em; }
.note { background: #fff6e5; border-left: 4px solid #e69f00; padding: 0.5em 0.8em; }
";

/// The whole page: the run's summary, the pictures, both ends of the ranking and the samples
/// that could not be scored.
fn render_html(
    out_dir: &Path,
    run: &RunRecord,
    rows: &[ScoreRow],
    previews: Result<&Previews, &str>,
    top: usize,
    histogram_png: &[u8],
    scatter_png: &[u8],
) -> String {
    let ranking = ranked(rows);
    let unscorable: Vec<&ScoreRow> = rows.iter().filter(|r| r.score().is_none()).collect();
    let mut page = page_head(out_dir, &model_name(run));
    let groups = UnscoredGroup::of(rows.iter().map(|r| r.reason), |i| rows[i].id.clone());
    let summary = summary_rows(run, rows, ranking.len(), &groups);
    summary_section(&mut page, &summary, previews);
    pictures_section(&mut page, histogram_png, scatter_png);
    ranking_sections(&mut page, &ranking, top, previews);
    unscorable_section(&mut page, &unscorable, &groups, run, previews);
    page.push_str("</body>\n</html>\n");
    page
}

/// The document's head and heading, naming the run and its model.
fn page_head(out_dir: &Path, model: &str) -> String {
    let dir = escape_html(&out_dir.display().to_string());
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>MIWV report: {dir}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>MIWV report</h1>\n<p>{dir} · scored with {}</p>\n",
        escape_html(model)
    )
}

/// What the run read, how it chose and what it found, as (heading, HTML cell) rows.
fn summary_rows(
    run: &RunRecord,
    rows: &[ScoreRow],
    scored: usize,
    unscorable: &[UnscoredGroup],
) -> Vec<(&'static str, String)> {
    let mut summary = vec![("Scoring model", model_cell(run))];
    if let Some(name) = embedder_name(&run.embedder) {
        summary.push(("Embedder", escape_html(&name)));
    }
    summary.extend([
        ("Data", data_cell(&run.data)),
        ("Template", escape_html(&run.template_name)),
        ("Samples", rows.len().to_string()),
        ("Scored", scored.to_string()),
        ("Unscorable", unscorable_cell(unscorable)),
        ("Context", context_cell(run)),
        ("Budget", budget_cell(&run.budget)),
        ("Selected", selected_cell(rows)),
        ("Made by", escape_html(&run.tool)),
    ]);
    summary
}

/// The scoring model: its name, quantisation and file.
fn model_cell(run: &RunRecord) -> String {
    let model = &run.scoring_model;
    let mut cell = escape_html(&model_name(run));
    if let Some(q) = model.gguf.as_ref().and_then(|g| g.quantisation.as_deref()) {
        let _ = write!(cell, " ({})", escape_html(q));
    }
    let path = model.path.display().to_string();
    let _ = write!(cell, "<br><small>{}</small>", escape_html(&path));
    cell
}

/// Which model embedded the samples for retrieval, when its name is known.
fn embedder_name(embedder: &EmbedderRecord) -> Option<String> {
    if embedder.uses_scoring_model {
        Some("the scoring model (mean-pooled)".to_string())
    } else {
        embedder.model.as_ref()?.gguf.as_ref()?.name.clone()
    }
}

/// The dataset: its file and the sha256 it had when scored.
fn data_cell(data: &FileRecord) -> String {
    format!(
        "{}<br><small>sha256 {}</small>",
        escape_html(&data.path.display().to_string()),
        escape_html(&data.sha256)
    )
}

/// The budget as it was given: a count, or a ratio with its percentage.
fn budget_cell(budget: &BudgetRecord) -> String {
    match (budget.count, budget.ratio) {
        (Some(c), _) => format!("count {c}"),
        (None, Some(r)) => format!("ratio {r} ({}%)", r * 100.0),
        (None, None) => "—".into(),
    }
}

/// How many were selected, and the lowest MIWV among them.
fn selected_cell(rows: &[ScoreRow]) -> String {
    let selected = rows.iter().filter(|r| is_selected(r)).count();
    match threshold(rows) {
        Some(t) => format!("{selected} (MIWV ≥ {})", number(Some(t), 4)),
        None => selected.to_string(),
    }
}

/// The summary table, and a note when the sample texts cannot be shown.
fn summary_section(
    page: &mut String,
    summary: &[(&str, String)],
    previews: Result<&Previews, &str>,
) {
    page.push_str("<h2>Run</h2>\n<table class=\"summary\">\n");
    for (key, value) in summary {
        let _ = writeln!(page, "<tr><th>{key}</th><td>{value}</td></tr>");
    }
    page.push_str("</table>\n");
    if let Err(why) = previews {
        let _ = writeln!(
            page,
            "<p class=\"note\">Sample texts are not shown: {}.</p>",
            escape_html(why)
        );
    }
}

/// Both pictures, embedded as data URIs so the page loads nothing, with captions saying how to
/// read them.
fn pictures_section(page: &mut String, histogram_png: &[u8], scatter_png: &[u8]) {
    let _ = write!(
        page,
        "<h2>Scores</h2>\n<figure><img alt=\"Histogram of MIWV over the scored samples, \
         selected samples highlighted\" src=\"{}\">\n<figcaption>MIWV of every scored sample. \
         The selected samples (vermilion) are those with the highest MIWV: a relevant one-shot \
         example made their response harder to predict.</figcaption></figure>\n\
         <figure><img alt=\"Zero-shot loss against one-shot loss per sample\" src=\"{}\">\n\
         <figcaption>Each sample's loss without (x) and with (y) its neighbour as a one-shot \
         example. Points above the diagonal have MIWV &gt; 0.</figcaption></figure>\n",
        data_uri(histogram_png),
        data_uri(scatter_png)
    );
}

/// The `top` best and `top` worst of the ranking with their texts; a sample is listed once.
fn ranking_sections(
    page: &mut String,
    ranking: &[&ScoreRow],
    top: usize,
    previews: Result<&Previews, &str>,
) {
    let shown_top = top.min(ranking.len());
    let shown_bottom = top.min(ranking.len() - shown_top);
    let _ = writeln!(
        page,
        "<h2>Top {shown_top} by MIWV</h2>\n<p>Selected first. A left bar marks a selected \
         sample.</p>"
    );
    sample_table(page, &ranking[..shown_top], 0, previews);
    if shown_bottom > 0 {
        let from = ranking.len() - shown_bottom;
        let _ = writeln!(
            page,
            "<h2>Bottom {shown_bottom} by MIWV</h2>\n<p>The one-shot example lowered the loss \
             most here.</p>"
        );
        sample_table(page, &ranking[from..], from, previews);
    }
}

/// `16 (14 example_too_long, 2 too_long)`.
fn unscorable_cell(groups: &[UnscoredGroup]) -> String {
    let total: usize = groups.iter().map(|g| g.count).sum();
    if total == 0 {
        return "0".into();
    }
    format!("{total} ({})", UnscoredGroup::tally(groups))
}

/// The context the run decoded with, and how it was chosen.
fn context_cell(run: &RunRecord) -> String {
    let tokens = run.context.ctx_per_sequence;
    match &run.context_fit {
        Some(fit) => format!(
            "{tokens} tokens per sequence (--ctx-size {}; longest sequence {}, at most {})",
            fit.asked, fit.longest_sequence, fit.limit
        ),
        None => format!("{tokens} tokens per sequence"),
    }
}

/// The samples without a MIWV, counted by reason and each listed with its reason, so none
/// drops out of the selection unexplained.
fn unscorable_section(
    page: &mut String,
    unscorable: &[&ScoreRow],
    groups: &[UnscoredGroup],
    run: &RunRecord,
    previews: Result<&Previews, &str>,
) {
    let _ = writeln!(page, "<h2>Unscorable ({})</h2>", unscorable.len());
    if unscorable.is_empty() {
        page.push_str("<p>Every sample was scored.</p>\n");
        return;
    }
    let limit = run
        .context_fit
        .map_or(run.context.ctx_per_sequence, |fit| fit.limit);
    page.push_str("<ul>\n");
    for group in groups {
        let _ = writeln!(
            page,
            "<li><b>{}</b>: {} ({})</li>",
            group.reason.name(),
            group.count,
            escape_html(&group.reason.explain(limit))
        );
    }
    page.push_str("</ul>\n");
    page.push_str(
        "<table>\n<tr><th>index</th><th>id</th><th>reason</th><th>prompt</th>\
         <th>response</th></tr>\n",
    );
    for row in unscorable {
        let (prompt, response) = preview_cells(row, previews);
        let _ = writeln!(
            page,
            "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td>\
             <td class=\"text\">{prompt}</td><td class=\"text\">{response}</td></tr>",
            row.index,
            escape_html(&row.id),
            escape_html(&row.reason.map_or("—".into(), Unscorable::name)),
        );
    }
    page.push_str("</table>\n");
}

/// A row's shortened prompt and response, escaped; dashes when the texts are not shown.
fn preview_cells(row: &ScoreRow, previews: Result<&Previews, &str>) -> (String, String) {
    match previews.ok().and_then(|p| p.get(&row.id)) {
        Some((prompt, response)) => (escape_html(prompt), escape_html(response)),
        None => ("—".into(), "—".into()),
    }
}

/// A table of ranked rows with their scores and texts; `first` is the 0-based rank of the
/// first row, for rows that record none.
fn sample_table(
    page: &mut String,
    rows: &[&ScoreRow],
    first: usize,
    previews: Result<&Previews, &str>,
) {
    page.push_str(
        "<table>\n<tr><th>rank</th><th>id</th><th>MIWV</th><th>L0</th><th>L1</th>\
         <th>neighbour</th><th>sim.</th><th>prompt</th><th>response</th></tr>\n",
    );
    for (i, row) in rows.iter().enumerate() {
        let (prompt, response) = preview_cells(row, previews);
        let _ = writeln!(
            page,
            "<tr{}><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"text\">{prompt}</td>\
             <td class=\"text\">{response}</td></tr>",
            if is_selected(row) {
                " class=\"selected\""
            } else {
                ""
            },
            row.rank.unwrap_or(first + i + 1),
            escape_html(&row.id),
            number(defined(row.miwv), 4),
            number(defined(row.loss_zero_shot), 3),
            number(defined(row.loss_one_shot), 3),
            row.neighbour_id.as_deref().map_or("—".into(), escape_html),
            number(row.similarity.map(f64::from), 2),
        );
    }
    page.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_flattens_and_cuts_on_characters() {
        assert_eq!(shorten("a\n\n b\tc ", 10), "a\nb c");
        assert_eq!(shorten("ééééé ééééé", 6), "ééééé…");
        assert_eq!(shorten("abcdef", 6), "abcdef");
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(52_002), "52,002");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn escape_html_escapes_markup() {
        assert_eq!(
            escape_html("<script>alert('x' & \"y\")</script>"),
            "&lt;script&gt;alert(&#39;x&#39; &amp; &quot;y&quot;)&lt;/script&gt;"
        );
    }

    #[test]
    fn bins_put_the_threshold_on_an_edge() {
        let values: Vec<f64> = (0..200).map(|i| -1.0 + i as f64 * 0.0123).collect();
        let (start, width, count) = bins(&values, 0.5);
        let k = (0.5 - start) / width;
        assert!((k - k.round()).abs() < 1e-9, "{start} {width}");
        assert!(start <= -1.0 && start + width * count as f64 > values[199]);
        assert!((10..=62).contains(&count), "{count}");
    }

    #[test]
    fn reasons_read_as_scores_jsonl_spells_them() {
        assert_eq!(Unscorable::EmptyResponse.name(), "empty_response");
        assert_eq!(Unscorable::TooLong.name(), "too_long");
        assert_eq!(Unscorable::NoNeighbour.name(), "no_neighbour");
    }

    #[test]
    fn the_budget_shows_as_given() {
        let count = BudgetRecord {
            ratio: None,
            count: Some(40),
        };
        let ratio = BudgetRecord {
            ratio: Some(0.25),
            count: None,
        };
        assert_eq!(budget_cell(&count), "count 40");
        assert_eq!(budget_cell(&ratio), "ratio 0.25 (25%)");
    }
}
