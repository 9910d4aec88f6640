//! Pictures in the terminal: which protocol to use, preparing a picture for one area off
//! the UI thread, and keeping track of what is on the screen.
//!
//! Two kinds of picture exist. Half-blocks and kitty's Unicode placeholders are made of
//! cells: they go through ratatui's buffer, and its diff redraws them like text. Sixel,
//! iTerm2 and kitty's direct placement are escape sequences that the terminal turns
//! into pixels over the cells: ratatui is told to skip those cells, and [`layer::Layer`]
//! writes the picture after the frame, only when it is not on the screen yet, and clears
//! the screen when a picture must go (no terminal reliably erases one by text written
//! over it: Konsole and kitty keep pictures above text).

pub mod encoder;
pub mod kitty;
pub mod layer;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use image::{DynamicImage, Rgba};
use ratatui::buffer::{Buffer, CellDiffOption};
use ratatui::layout::{Rect, Size};
use ratatui_image::protocol::halfblocks::Halfblocks;
use ratatui_image::protocol::iterm2::Iterm2;
use ratatui_image::protocol::kitty::Kitty;
use ratatui_image::protocol::Protocol;
use ratatui_image::{FilterType, FontSize, Image, Resize};

use super::detect::{tmux_wrap, Detected};
use super::ImageProtocol;

/// How pictures reach the screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Unicode half-blocks coloured per cell: works everywhere.
    Halfblocks,
    /// Sixel graphics.
    Sixel,
    /// Kitty graphics drawn through Unicode placeholder cells (kitty 0.28 and later).
    KittyPlaceholders,
    /// Kitty graphics placed directly at the cursor (kitty before 0.28, Konsole).
    KittyDirect,
    /// iTerm2 inline images.
    Iterm2,
}

impl Mode {
    /// The name the status bar shows.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Halfblocks => "halfblocks",
            Mode::Sixel => "sixel",
            Mode::KittyPlaceholders => "kitty",
            Mode::KittyDirect => "kitty (direct)",
            Mode::Iterm2 => "iterm2",
        }
    }

    /// Whether pictures are made of buffer cells (else they are escape sequences drawn
    /// over skipped cells).
    pub fn draws_cells(self) -> bool {
        matches!(self, Mode::Halfblocks | Mode::KittyPlaceholders)
    }
}

/// Everything needed to prepare pictures for this terminal.
#[derive(Clone, Debug, PartialEq)]
pub struct Graphics {
    /// The protocol.
    pub mode: Mode,
    /// Wrap escape sequences for tmux's passthrough.
    pub tmux: bool,
    /// Cell size in pixels (width, height).
    pub cell: (u16, u16),
    /// The terminal's background colour, which fills the part of the last cells that the
    /// picture does not cover; transparent when unknown.
    pub background: Option<[u8; 3]>,
    /// Why this mode was chosen when it is not the obvious one, for the status bar.
    pub note: Option<String>,
}

impl Graphics {
    /// Half-blocks with a nominal 1:2 cell, for tests and terminals that say nothing.
    pub fn halfblocks() -> Self {
        Self {
            mode: Mode::Halfblocks,
            tmux: false,
            cell: (10, 20),
            background: None,
            note: None,
        }
    }
}

/// tmux's passthrough setting for this pane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Passthrough {
    /// `allow-passthrough` is on (or `all`).
    On,
    /// It is off: escape sequences for the outer terminal are dropped.
    Off,
    /// tmux could not be asked (the reason).
    Unknown(String),
}

/// Where the app runs, as far as the environment tells.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Surroundings {
    /// Inside tmux, with its passthrough setting.
    pub tmux: Option<Passthrough>,
    /// `TERM_PROGRAM` names a terminal with iTerm2 images (iTerm2, WezTerm).
    pub iterm: bool,
}

impl Surroundings {
    /// Read the environment; inside tmux, ask tmux for the pane's passthrough setting
    /// (the app never changes it).
    pub fn probe() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let tmux = var("TMUX").map(|_| tmux_passthrough());
        Self {
            tmux,
            iterm: matches!(
                var("TERM_PROGRAM").as_deref(),
                Some("iTerm.app") | Some("WezTerm")
            ),
        }
    }

    fn passthrough(&self) -> bool {
        matches!(self.tmux, None | Some(Passthrough::On))
    }
}

/// Ask tmux whether this pane passes escape sequences through.
fn tmux_passthrough() -> Passthrough {
    let output = std::process::Command::new("tmux")
        .args(["show-options", "-Apv", "allow-passthrough"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    match output {
        Ok(o) if o.status.success() => match String::from_utf8_lossy(&o.stdout).trim() {
            "on" | "all" => Passthrough::On,
            _ => Passthrough::Off,
        },
        Ok(o) => Passthrough::Unknown(format!("tmux show-options failed ({})", o.status)),
        Err(e) => Passthrough::Unknown(format!("cannot run tmux: {e}")),
    }
}

/// The version of kitty that an XTVERSION answer names (`kitty(0.26.5)`).
fn kitty_version(terminal: &str) -> Option<(u32, u32)> {
    let inner = terminal.strip_prefix("kitty(")?.strip_suffix(')')?;
    let mut parts = inner.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// Whether the terminal draws kitty's Unicode placeholders: kitty from 0.28 and
/// Ghostty. Others that speak the kitty protocol (older kitty, Konsole, WezTerm) only
/// place pictures directly.
fn has_kitty_placeholders(terminal: Option<&str>) -> bool {
    match terminal {
        Some(t) if t.starts_with("kitty(") => kitty_version(t).is_some_and(|v| v >= (0, 28)),
        Some(t) => t.to_ascii_lowercase().starts_with("ghostty"),
        None => false,
    }
}

/// The kitty placement style for this terminal, or why it cannot have one.
fn kitty_mode(env: &Surroundings, found: &Detected) -> Result<Mode, String> {
    let name = found.terminal.as_deref();
    if has_kitty_placeholders(name) {
        return Ok(Mode::KittyPlaceholders);
    }
    let who = name.unwrap_or("this terminal");
    if env.tmux.is_some() {
        // A directly placed picture lands wherever the outer cursor is, which tmux
        // does not keep in step with the pane.
        return Err(format!(
            "{who} places kitty pictures only directly, which tmux cannot pass"
        ));
    }
    Ok(Mode::KittyDirect)
}

/// Choose how to draw pictures from what was asked, where the app runs and what the
/// terminal answered; the note says why when it is not what one would expect.
pub fn choose(
    requested: ImageProtocol,
    env: &Surroundings,
    found: &Detected,
) -> (Mode, Option<String>) {
    let blocked = match &env.tmux {
        Some(Passthrough::Off) => {
            Some("tmux has allow-passthrough off; set it on for pictures".to_string())
        }
        Some(Passthrough::Unknown(why)) => Some(format!("tmux passthrough unknown: {why}")),
        _ => None,
    };
    match requested {
        ImageProtocol::Halfblocks => (Mode::Halfblocks, None),
        ImageProtocol::Sixel => (Mode::Sixel, blocked),
        ImageProtocol::Iterm2 => (Mode::Iterm2, blocked),
        ImageProtocol::Kitty => match kitty_mode(env, found) {
            Ok(mode) => (mode, blocked),
            Err(why) => (Mode::KittyPlaceholders, Some(why)),
        },
        ImageProtocol::Auto => {
            if let Some(why) = blocked {
                return (Mode::Halfblocks, Some(why));
            }
            let mut why_not_kitty = None;
            if found.kitty_graphics {
                match kitty_mode(env, found) {
                    Ok(Mode::KittyDirect) => {
                        let who = found.terminal.as_deref().unwrap_or("the terminal");
                        return (
                            Mode::KittyDirect,
                            Some(format!("{who} draws no Unicode placeholders")),
                        );
                    }
                    Ok(mode) => return (mode, None),
                    Err(why) => why_not_kitty = Some(why),
                }
            }
            if found.sixel {
                return (Mode::Sixel, None);
            }
            if env.iterm {
                return (Mode::Iterm2, None);
            }
            let why = why_not_kitty.or_else(|| {
                (env.tmux.is_some() && !found.answered)
                    .then(|| "the terminal around tmux did not answer".to_string())
            });
            (Mode::Halfblocks, why)
        }
    }
}

/// Decide everything about graphics for this terminal. The terminal is queried (in raw
/// mode, before the event reader starts) unless half-blocks were asked for, `TERM` is
/// `dumb`, or tmux drops passthrough; returns the keys typed during the query.
pub fn setup(requested: ImageProtocol, window_cell: Option<(u16, u16)>) -> (Graphics, Vec<u8>) {
    let env = Surroundings::probe();
    let dumb = std::env::var("TERM").map_or(true, |t| t == "dumb");
    let ask = requested != ImageProtocol::Halfblocks && !dumb && env.passthrough();
    let found = if ask {
        super::detect::query(std::time::Duration::from_millis(1000), env.tmux.is_some())
            .unwrap_or_default()
    } else {
        Detected::default()
    };
    let (mode, note) = choose(requested, &env, &found);
    let graphics = Graphics {
        mode,
        tmux: env.tmux.is_some(),
        cell: found.cell_size.or(window_cell).unwrap_or((10, 20)),
        background: found.background,
        note,
    };
    (graphics, found.typed)
}

/// A picture prepared for the terminal at one size.
#[derive(Clone)]
pub enum Prepared {
    /// Drawn as cells of the buffer (half-blocks, kitty placeholders).
    Cells(Protocol),
    /// Written as escape sequences over cells the buffer skips.
    Escape(EscapePicture),
}

impl Prepared {
    /// Its size in cells.
    pub fn size(&self) -> Size {
        match self {
            Prepared::Cells(p) => p.size(),
            Prepared::Escape(e) => e.size,
        }
    }

    /// Draw it into the buffer at `area` (its own size): cells are filled, or skipped
    /// for an escape picture, which [`layer::Layer`] writes after the frame.
    pub fn render(&self, area: Rect, buf: &mut Buffer) {
        match self {
            Prepared::Cells(p) => ratatui::widgets::Widget::render(Image::new(p), area, buf),
            Prepared::Escape(_) => skip_cells(area, buf),
        }
    }
}

/// An escape-sequence picture.
#[derive(Clone, Debug)]
pub struct EscapePicture {
    /// Unique per preparation: what the screen shows is known by it.
    pub serial: u64,
    /// Sent once before the picture is first drawn (kitty's transmission of the pixels).
    pub setup: String,
    /// Draws the picture, piece by piece, each with the cursor at the given row of the
    /// picture's left column (the cells are erased first). A sixel picture comes in
    /// bands a few cells tall, so that keys typed while a terminal works through a
    /// large picture are echoed between two bands rather than after all of it.
    pub pieces: Vec<(u16, String)>,
    /// Size in cells.
    pub size: Size,
    /// The kitty image id, whose data the terminal keeps until it is freed.
    pub kitty_id: Option<u32>,
}

/// Tell ratatui never to write into `area`: a picture is drawn there.
fn skip_cells(area: Rect, buf: &mut Buffer) {
    let area = area.intersection(buf.area);
    for y in area.top()..area.bottom() {
        for x in area.left()..area.right() {
            buf[(x, y)].reset();
            buf[(x, y)].set_diff_option(CellDiffOption::Skip);
        }
    }
}

/// Erase `width` x `height` cells from the cursor down, and come back: a picture is
/// drawn over clean cells, whatever text was there.
pub fn erase_area(width: u16, height: u16) -> String {
    let erase = format!("\x1b[{width}X");
    let mut s = vec![erase; usize::from(height)].join("\x1b[1B");
    // Never below the last row: a cursor move past the screen's bottom would stop short.
    if height > 1 {
        s.push_str(&format!("\x1b[{}A", height - 1));
    }
    s
}

/// A fresh kitty image id: never 0, and below 2^31 (Konsole 22.12 ignores images with
/// larger ids, reading them as signed).
fn next_kitty_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    // Mixed with the process id so that two runs in one window do not share ids.
    (std::process::id() & 0x7f) << 24 | NEXT.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff
}

/// The height of a sixel band in pixels, at least: about 25 KB of sixel for a pane-wide
/// photo, which a busy terminal gets through in tens of milliseconds.
const SIXEL_BAND_PX: u16 = 48;

/// Encode `pixels` (exactly `cells` at `cell_height` pixels a row) as sixel bands of
/// whole cell rows, each erasing its cells first.
fn sixel_bands(
    pixels: &DynamicImage,
    cells: Size,
    cell_height: u16,
) -> Result<Vec<(u16, String)>, String> {
    let rgba = pixels.to_rgba8();
    let rows_per_band = SIXEL_BAND_PX.div_ceil(cell_height.max(1)).max(1);
    let mut bands = Vec::new();
    for row in (0..cells.height).step_by(usize::from(rows_per_band)) {
        let rows = rows_per_band.min(cells.height - row);
        let top = u32::from(row) * u32::from(cell_height);
        let height = (u32::from(rows) * u32::from(cell_height)).min(rgba.height() - top);
        let band = image::imageops::crop_imm(&rgba, 0, top, rgba.width(), height).to_image();
        let sixel = icy_sixel::sixel_encode(
            band.as_raw(),
            band.width() as usize,
            band.height() as usize,
            &icy_sixel::EncodeOptions::default(),
        )
        .map_err(|err| format!("sixel encoding: {err}"))?;
        bands.push((row, erase_area(cells.width, rows) + &sixel));
    }
    Ok(bands)
}

/// The rectangle of a `size` picture centred in `area`.
pub fn centred(area: Rect, size: Size) -> Rect {
    let width = size.width.min(area.width);
    let height = size.height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

/// Scale `image` to fit `area` (keeping its aspect ratio) and encode it for the
/// terminal. Slow for large areas (sixel encoding): never call it on the UI thread.
pub fn prepare(image: &DynamicImage, area: Size, g: &Graphics) -> Result<Prepared, String> {
    let font = FontSize::from(g.cell);
    let resize = Resize::Scale(Some(FilterType::Triangle));
    let cells = resize.size_for(image, font, area);
    if cells.width == 0 || cells.height == 0 {
        return Err("the picture area is empty".into());
    }
    let background = g.background.map(|[r, gr, b]| Rgba([r, gr, b, 255]));
    // Scaled, then padded to whole cells with the terminal's background.
    let pixels = || resize.resize(image, font, cells, background);
    let wrap = |s: String| if g.tmux { tmux_wrap(&s) } else { s };
    let escape = |setup: String, pieces: Vec<(u16, String)>, kitty_id| {
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        Prepared::Escape(EscapePicture {
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            setup,
            pieces,
            size: cells,
            kitty_id,
        })
    };
    let e = |err: ratatui_image::errors::Errors| err.to_string();
    Ok(match g.mode {
        // Half-blocks sample the image cell by cell: given it unpadded, they stretch it
        // by under half a cell rather than show a strip of padding.
        Mode::Halfblocks => Prepared::Cells(Protocol::Halfblocks(
            Halfblocks::new(image.clone(), cells).map_err(e)?,
        )),
        Mode::KittyPlaceholders => Prepared::Cells(Protocol::Kitty(
            Kitty::new(pixels(), cells, next_kitty_id(), g.tmux, true).map_err(e)?,
        )),
        Mode::Sixel => {
            let bands = sixel_bands(&pixels(), cells, g.cell.1)?;
            let pieces = bands.into_iter().map(|(row, s)| (row, wrap(s))).collect();
            escape(String::new(), pieces, None)
        }
        Mode::Iterm2 => {
            let iterm = Iterm2::new(pixels(), cells, false).map_err(e)?;
            escape(String::new(), vec![(0, wrap(iterm.data))], None)
        }
        Mode::KittyDirect => {
            let id = next_kitty_id();
            let show = erase_area(cells.width, cells.height)
                + &kitty::place(id, cells.width, cells.height);
            let setup = kitty::transmit(&pixels(), id).map_err(|e| e.to_string())?;
            escape(setup, vec![(0, show)], Some(id))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(bytes: &[u8]) -> Detected {
        let mut d = Detected::default();
        super::super::detect::parse(bytes, &mut d);
        d
    }

    const KITTY_0_26: &[u8] =
        b"\x1b_Gi=31;OK\x1b\\\x1b[?62;c\x1bP>|kitty(0.26.5)\x1b\\\x1b[6;18;9t\x1b[0n";
    const KITTY_0_35: &[u8] =
        b"\x1b_Gi=31;OK\x1b\\\x1b[?62;c\x1bP>|kitty(0.35.2)\x1b\\\x1b[6;18;9t\x1b[0n";
    const XTERM_SIXEL: &[u8] = b"\x1b[?63;1;2;4;6;9;15;16;22;28c\x1bP>|XTerm(379)\x1b\\\x1b[0n";
    const KONSOLE: &[u8] =
        b"\x1b_Gi=31;OK\x1b\\\x1b[?62;1;4c\x1bP>|Konsole 22.12.3\x1b\\\x1b[6;17;8t\x1b[0n";

    #[test]
    fn kitty_before_0_28_gets_direct_placement_and_says_why() {
        let (mode, note) = choose(
            ImageProtocol::Auto,
            &Surroundings::default(),
            &answers(KITTY_0_26),
        );
        assert_eq!(mode, Mode::KittyDirect);
        assert!(note.unwrap().contains("kitty(0.26.5)"));
        let (mode, note) = choose(
            ImageProtocol::Auto,
            &Surroundings::default(),
            &answers(KITTY_0_35),
        );
        assert_eq!((mode, note), (Mode::KittyPlaceholders, None));
        // Named on the command line, the placement still follows the version.
        let (mode, _) = choose(
            ImageProtocol::Kitty,
            &Surroundings::default(),
            &answers(KITTY_0_26),
        );
        assert_eq!(mode, Mode::KittyDirect);
    }

    #[test]
    fn konsole_places_kitty_pictures_directly_and_xterm_gets_sixel() {
        // Konsole answers the kitty query but draws no placeholders.
        assert_eq!(
            choose(
                ImageProtocol::Auto,
                &Surroundings::default(),
                &answers(KONSOLE)
            )
            .0,
            Mode::KittyDirect
        );
        assert_eq!(
            choose(
                ImageProtocol::Auto,
                &Surroundings::default(),
                &answers(XTERM_SIXEL)
            ),
            (Mode::Sixel, None)
        );
        assert_eq!(
            choose(
                ImageProtocol::Auto,
                &Surroundings::default(),
                &answers(b"\x1b[?1;2c\x1b[0n")
            ),
            (Mode::Halfblocks, None)
        );
    }

    #[test]
    fn tmux_without_passthrough_means_half_blocks_with_the_reason() {
        let env = Surroundings {
            tmux: Some(Passthrough::Off),
            ..Default::default()
        };
        let (mode, note) = choose(ImageProtocol::Auto, &env, &Detected::default());
        assert_eq!(mode, Mode::Halfblocks);
        assert!(note.unwrap().contains("allow-passthrough off"));
        // Named explicitly, sixel is honoured, with the warning.
        let (mode, note) = choose(ImageProtocol::Sixel, &env, &Detected::default());
        assert_eq!(mode, Mode::Sixel);
        assert!(note.is_some());
    }

    #[test]
    fn tmux_with_passthrough_follows_the_outer_terminal() {
        let env = Surroundings {
            tmux: Some(Passthrough::On),
            ..Default::default()
        };
        assert_eq!(
            choose(ImageProtocol::Auto, &env, &answers(XTERM_SIXEL)),
            (Mode::Sixel, None)
        );
        // An old kitty cannot place pictures through tmux: half-blocks, and why.
        let (mode, note) = choose(ImageProtocol::Auto, &env, &answers(KITTY_0_26));
        assert_eq!(mode, Mode::Halfblocks);
        assert!(note.unwrap().contains("tmux cannot pass"));
        assert_eq!(
            choose(ImageProtocol::Auto, &env, &answers(KITTY_0_35)).0,
            Mode::KittyPlaceholders
        );
        let (mode, note) = choose(ImageProtocol::Auto, &env, &Detected::default());
        assert_eq!(mode, Mode::Halfblocks);
        assert!(note.unwrap().contains("did not answer"));
    }

    fn photo() -> DynamicImage {
        DynamicImage::ImageRgb8(image::RgbImage::from_fn(120, 80, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 3) as u8, 128])
        }))
    }

    #[test]
    fn pictures_fit_their_area_with_the_aspect_ratio_kept() {
        let g = Graphics {
            mode: Mode::Sixel,
            cell: (10, 20),
            ..Graphics::halfblocks()
        };
        // 120x80 px in a 30x10-cell (300x200 px) area: scaled to 300x200, 30x10 cells.
        let p = prepare(&photo(), Size::new(30, 10), &g).unwrap();
        assert_eq!(p.size(), Size::new(30, 10));
        // In a 40x10 area the height limits: still 30x10.
        assert_eq!(
            prepare(&photo(), Size::new(40, 10), &g).unwrap().size(),
            Size::new(30, 10)
        );
        assert_eq!(
            centred(Rect::new(2, 1, 40, 10), Size::new(30, 10)),
            Rect::new(7, 1, 30, 10)
        );
        let Prepared::Escape(e) = p else {
            panic!("sixel is an escape picture")
        };
        assert!(e.setup.is_empty() && e.kitty_id.is_none());
        // 20-pixel rows: bands of 3 rows (60 px), the last one 1 row.
        let rows: Vec<u16> = e.pieces.iter().map(|(row, _)| *row).collect();
        assert_eq!(rows, [0, 3, 6, 9]);
        for (i, (_, band)) in e.pieces.iter().enumerate() {
            let erased = if i < 3 {
                "\x1b[30X\x1b[1B\x1b[30X\x1b[1B\x1b[30X\x1b[2A\x1bP"
            } else {
                "\x1b[30X\x1bP"
            };
            assert!(band.starts_with(erased), "{i}: {:?}", &band[..30]);
            assert_eq!(band.matches("\x1bP").count(), 1, "one sixel a band");
        }
    }

    #[test]
    fn sixel_through_tmux_is_wrapped_with_every_escape_doubled() {
        let g = Graphics {
            mode: Mode::Sixel,
            tmux: true,
            ..Graphics::halfblocks()
        };
        let Prepared::Escape(e) = prepare(&photo(), Size::new(12, 4), &g).unwrap() else {
            panic!()
        };
        for (_, band) in &e.pieces {
            assert!(band.starts_with("\x1bPtmux;\x1b\x1b["));
            assert!(band.ends_with("\x1b\x1b\\\x1b\\"));
            let inner = &band[7..band.len() - 2];
            assert!(inner.split("\x1b\x1b").all(|part| !part.contains('\x1b')));
        }
    }

    #[test]
    fn kitty_direct_transmits_once_and_places_by_id() {
        let g = Graphics {
            mode: Mode::KittyDirect,
            ..Graphics::halfblocks()
        };
        let Prepared::Escape(e) = prepare(&photo(), Size::new(12, 4), &g).unwrap() else {
            panic!()
        };
        let id = e.kitty_id.unwrap();
        assert!(id > 0 && id < 1 << 31, "Konsole reads ids as signed");
        assert!(e.setup.starts_with("\x1b_Ga=t,f=100,"));
        assert!(e.setup.contains(&format!("i={id},")));
        let [(0, show)] = &e.pieces[..] else {
            panic!("one piece")
        };
        assert!(show.contains(&format!("\x1b_Ga=p,i={id},p=1,c=")));
        assert!(!show.contains("a=t"), "placing sends no pixels");
    }

    #[test]
    fn half_blocks_are_cells() {
        let p = prepare(&photo(), Size::new(12, 4), &Graphics::halfblocks()).unwrap();
        assert!(matches!(p, Prepared::Cells(_)));
        let mut buf = Buffer::empty(Rect::new(0, 0, 20, 6));
        p.render(Rect::new(1, 1, 12, 4), &mut buf);
        assert!(matches!(buf[(1, 1)].symbol(), "▀" | "▄"));
        assert!(matches!(buf[(1, 1)].fg, ratatui::style::Color::Rgb(..)));
        assert_eq!(buf[(0, 0)].symbol(), " ", "nothing outside the picture");
    }
}
