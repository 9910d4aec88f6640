//! Captioned pictures of coloured shapes, generated: the training data of the demo CLIP.
//!
//! Each scene is one shape (circle, square, triangle, star, cross, heart) in one named
//! colour on a background, at a size and position, drawn at a random canvas size with
//! random rotation, outline or fill, blur, noise and JPEG compression, and described by a
//! caption phrased one of many ways ("a red circle", "a photo of a small red circle on a
//! dark background", "red round shape", "a circle", "something red", ...).
//!
//! The variety is the point: the pictures the model is judged on are drawn by other
//! programs, so no single renderer's quirks (exact colours, crisp edges, one size) may
//! carry the label. Colours are sampled over a range of hue, saturation and value around
//! each name (CSS's `green` is (0, 128, 0), a painter's is brighter), edges are
//! antialiased by supersampling, and canvases range from 40 to 200 pixels.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::cnn::rng::Rng;

/// Shape names, in index order.
pub const SHAPES: [&str; 6] = ["circle", "square", "triangle", "star", "cross", "heart"];
/// Colour names, in index order.
pub const COLOURS: [&str; 10] = [
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "white", "black", "gray",
];
/// Size words, in index order.
pub const SIZES: [&str; 3] = ["small", "medium", "large"];
/// Position phrases, in index order.
pub const POSITIONS: [&str; 5] = [
    "in the center",
    "on the left",
    "on the right",
    "at the top",
    "at the bottom",
];
/// Background words, in index order.
pub const BACKGROUNDS: [&str; 5] = ["white", "black", "dark", "light", "colorful"];

/// Colour-shape combinations kept out of the demo model's training, to measure how it
/// binds attributes it saw only apart: (shape, colour) indices.
pub const HELD_OUT: [(usize, usize); 4] = [(5, 2), (3, 3), (4, 1), (0, 5)];

/// The facts of one scene (indices into the name tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scene {
    /// Index into [`SHAPES`].
    pub shape: usize,
    /// Index into [`COLOURS`].
    pub colour: usize,
    /// Index into [`SIZES`].
    pub size: usize,
    /// Index into [`POSITIONS`].
    pub position: usize,
    /// Index into [`BACKGROUNDS`].
    pub background: usize,
}

/// Which facts a caption states; unstated facts may be anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mentions {
    /// The shape, if named.
    pub shape: Option<usize>,
    /// The colour, if named.
    pub colour: Option<usize>,
    /// The size, if named.
    pub size: Option<usize>,
    /// The position, if named.
    pub position: Option<usize>,
    /// The background, if named.
    pub background: Option<usize>,
}

impl Mentions {
    /// Whether every stated fact holds in `scene`.
    pub fn fits(&self, scene: &Scene) -> bool {
        let ok = |m: Option<usize>, v: usize| m.is_none_or(|m| m == v);
        ok(self.shape, scene.shape)
            && ok(self.colour, scene.colour)
            && ok(self.size, scene.size)
            && ok(self.position, scene.position)
            && ok(self.background, scene.background)
    }
}

/// One generated training pair.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The picture.
    pub image: RgbImage,
    /// Its facts.
    pub scene: Scene,
    /// The caption.
    pub caption: String,
    /// What the caption states.
    pub mentions: Mentions,
}

/// A scene with random facts, avoiding the combinations in `held_out`.
pub fn random_scene(rng: &mut Rng, held_out: &[(usize, usize)]) -> Scene {
    random_scene_with(rng, held_out, 1.0)
}

/// As [`random_scene`], with `variety` in [0, 1] scaling how often shapes are small or
/// off-centre (0: always centred, never small; 1: the full mix). Training starts low and
/// rises, so that a ViT from scratch finds shapes before it must find them anywhere.
pub fn random_scene_with(rng: &mut Rng, held_out: &[(usize, usize)], variety: f64) -> Scene {
    loop {
        let shape = rng.below(SHAPES.len());
        let colour = rng.below(COLOURS.len());
        if held_out.contains(&(shape, colour)) {
            continue;
        }
        return Scene {
            shape,
            colour,
            size: pick_size(rng, variety),
            position: pick_position(rng, variety),
            background: pick_background(rng, colour),
        };
    }
}

/// Small shapes one time in three at full variety.
fn pick_size(rng: &mut Rng, variety: f64) -> usize {
    if rng.uniform() < variety / 3.0 {
        0
    } else {
        1 + rng.below(SIZES.len() - 1)
    }
}

/// Centred shapes are the common case in pictures people classify.
fn pick_position(rng: &mut Rng, variety: f64) -> usize {
    if rng.uniform() >= 0.5 * variety {
        0
    } else {
        1 + rng.below(POSITIONS.len() - 1)
    }
}

/// A background that the shape's colour stands out from.
fn pick_background(rng: &mut Rng, colour: usize) -> usize {
    loop {
        let r = rng.uniform();
        let bg = if r < 0.32 {
            0
        } else if r < 0.44 {
            1
        } else if r < 0.62 {
            2
        } else if r < 0.8 {
            3
        } else {
            4
        };
        let clash = matches!(
            (COLOURS[colour], BACKGROUNDS[bg]),
            ("white", "white") | ("white", "light") | ("black", "black") | ("black", "dark")
        );
        if !clash {
            return bg;
        }
    }
}

/// Draw a scene and caption it.
pub fn sample(scene: Scene, rng: &mut Rng) -> Sample {
    sample_with(scene, rng, 1.0)
}

/// As [`sample`], drawn with [`render_with`]'s `variety`.
pub fn sample_with(scene: Scene, rng: &mut Rng, variety: f64) -> Sample {
    let image = render_with(&scene, rng, variety);
    let (caption, mentions) = caption(&scene, rng);
    Sample {
        image,
        scene,
        caption,
        mentions,
    }
}

// ---------------------------------------------------------------------------------------
// Colours

fn hsv(h: f64, s: f64, v: f64) -> [f64; 3] {
    let h = h.rem_euclid(360.0) / 60.0;
    let c = v * s;
    let x = c * (1.0 - (h % 2.0 - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [(r + m) * 255.0, (g + m) * 255.0, (b + m) * 255.0]
}

/// A random shade of a named colour: ranges of hue (degrees), saturation and value that
/// people call by that name, with the pure primaries drawn now and then exactly.
pub fn shade(colour: usize, rng: &mut Rng) -> [f64; 3] {
    let pure = rng.uniform() < 0.15;
    match COLOURS[colour] {
        "red" if pure => [255.0, 0.0, 0.0],
        "green" if pure => [[0.0, 128.0, 0.0], [0.0, 255.0, 0.0]][rng.below(2)],
        "blue" if pure => [0.0, 0.0, 255.0],
        "yellow" if pure => [255.0, 255.0, 0.0],
        "orange" if pure => [255.0, 165.0, 0.0],
        "purple" if pure => [128.0, 0.0, 128.0],
        "pink" if pure => [255.0, 192.0, 203.0],
        "red" => hsv(
            rng.range(-12.0, 8.0),
            rng.range(0.7, 1.0),
            rng.range(0.6, 1.0),
        ),
        "green" => hsv(
            rng.range(95.0, 145.0),
            rng.range(0.6, 1.0),
            rng.range(0.4, 1.0),
        ),
        "blue" => hsv(
            rng.range(205.0, 245.0),
            rng.range(0.65, 1.0),
            rng.range(0.5, 1.0),
        ),
        "yellow" => hsv(
            rng.range(50.0, 62.0),
            rng.range(0.65, 1.0),
            rng.range(0.85, 1.0),
        ),
        "orange" => hsv(
            rng.range(22.0, 36.0),
            rng.range(0.8, 1.0),
            rng.range(0.85, 1.0),
        ),
        "purple" => hsv(
            rng.range(268.0, 300.0),
            rng.range(0.5, 1.0),
            rng.range(0.4, 0.9),
        ),
        "pink" => hsv(
            rng.range(315.0, 350.0),
            rng.range(0.2, 0.55),
            rng.range(0.9, 1.0),
        ),
        "white" => {
            let v = rng.range(235.0, 255.0);
            [v, v, v]
        }
        "black" => {
            let v = rng.range(0.0, 30.0);
            [v, v, v]
        }
        _ => {
            let v = rng.range(105.0, 165.0);
            [v, v, v]
        }
    }
}

fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

fn luminance(c: [f64; 3]) -> f64 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

/// A background colour of the named kind, at least a clear step away from `fg`.
fn background_colour(kind: usize, fg: [f64; 3], rng: &mut Rng) -> [f64; 3] {
    for _ in 0..64 {
        let c = match BACKGROUNDS[kind] {
            "white" => {
                let v = rng.range(240.0, 255.0);
                [v, v, v]
            }
            "black" => {
                let v = rng.range(0.0, 20.0);
                [v, v, v]
            }
            "dark" => hsv(
                rng.range(0.0, 360.0),
                rng.range(0.0, 0.6),
                rng.range(0.1, 0.35),
            ),
            "light" => hsv(
                rng.range(0.0, 360.0),
                rng.range(0.0, 0.25),
                rng.range(0.8, 0.97),
            ),
            _ => hsv(
                rng.range(0.0, 360.0),
                rng.range(0.2, 0.8),
                rng.range(0.3, 0.9),
            ),
        };
        if distance(c, fg) > 110.0 || (luminance(c) - luminance(fg)).abs() > 70.0 {
            return c;
        }
    }
    if luminance(fg) > 128.0 {
        [0.0, 0.0, 0.0]
    } else {
        [255.0, 255.0, 255.0]
    }
}

// ---------------------------------------------------------------------------------------
// Geometry

/// A shape's outline in its own frame (unit radius, v up), as an inside test.
#[derive(Clone, Debug)]
enum Outline {
    Circle,
    Polygon(Vec<(f64, f64)>),
    Cross(f64),
    Heart,
}

impl Outline {
    fn random(shape: usize, rng: &mut Rng) -> Self {
        match SHAPES[shape] {
            "circle" => Self::Circle,
            "square" => {
                let s = 0.78;
                Self::Polygon(vec![(-s, -s), (s, -s), (s, s), (-s, s)])
            }
            "triangle" => {
                // Mostly equilateral and pointing up; sometimes isosceles or lopsided.
                let j = if rng.uniform() < 0.5 { 0.0 } else { 22.0 };
                let angles = [
                    90.0 + rng.range(-j, j) * 0.5,
                    210.0 + rng.range(-j, j),
                    330.0 + rng.range(-j, j),
                ];
                let pts: Vec<(f64, f64)> = angles
                    .iter()
                    .map(|a: &f64| (a.to_radians().cos(), a.to_radians().sin()))
                    .collect();
                // Centre the triangle's bounding box on the origin.
                let (minx, maxx) = min_max(pts.iter().map(|p| p.0));
                let (miny, maxy) = min_max(pts.iter().map(|p| p.1));
                let (cx, cy) = ((minx + maxx) / 2.0, (miny + maxy) / 2.0);
                Self::Polygon(pts.iter().map(|p| (p.0 - cx, p.1 - cy)).collect())
            }
            "star" => {
                let points = if rng.uniform() < 0.8 {
                    5
                } else {
                    [4, 6][rng.below(2)]
                };
                let inner = rng.range(0.36, 0.5);
                let pts = (0..points * 2)
                    .map(|k| {
                        let a = std::f64::consts::FRAC_PI_2
                            + k as f64 * std::f64::consts::PI / points as f64;
                        let r = if k % 2 == 0 { 1.0 } else { inner };
                        (r * a.cos(), r * a.sin())
                    })
                    .collect();
                Self::Polygon(pts)
            }
            "cross" => Self::Cross(rng.range(0.17, 0.33)),
            _ => Self::Heart,
        }
    }

    fn inside(&self, u: f64, v: f64) -> bool {
        match self {
            Self::Circle => u * u + v * v <= 1.0,
            Self::Polygon(pts) => in_polygon(pts, u, v),
            Self::Cross(w) => {
                (u.abs() <= *w && v.abs() <= 1.0) || (v.abs() <= *w && u.abs() <= 1.0)
            }
            Self::Heart => {
                // (x² + y² - 1)³ - x² y³ <= 0, fitted into the unit square.
                let (x, y) = (u * 1.15, v * 1.15 + 0.12);
                let a = x * x + y * y - 1.0;
                a * a * a - x * x * y * y * y <= 0.0
            }
        }
    }
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)))
}

/// Even-odd rule point-in-polygon.
fn in_polygon(pts: &[(f64, f64)], x: f64, y: f64) -> bool {
    let mut inside = false;
    let mut j = pts.len() - 1;
    for i in 0..pts.len() {
        let (xi, yi) = pts[i];
        let (xj, yj) = pts[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Where and how the shape sits on the canvas.
struct Placement {
    cx: f64,
    cy: f64,
    radius: f64,
    sin: f64,
    cos: f64,
    /// Outline thickness as a fraction of the radius (0: filled).
    stroke: f64,
}

impl Placement {
    /// A placement for the scene on a `w` x `h` canvas whose centred square of side
    /// `min(w, h)` is what the model sees after its centre crop.
    fn random(scene: &Scene, shape: &Outline, w: f64, h: f64, rng: &mut Rng, variety: f64) -> Self {
        let side = w.min(h);
        let (x0, y0) = ((w - side) / 2.0, (h - side) / 2.0);
        let radius = side
            * match scene.size {
                0 => rng.range(0.1, 0.17),
                1 => rng.range(0.18, 0.27),
                _ => rng.range(0.29, 0.44),
            };
        let margin = radius * 1.02;
        let free = (side - 2.0 * margin).max(0.0);
        let third = |lo: f64, hi: f64, rng: &mut Rng| margin + free * rng.range(lo, hi);
        let (fx, fy) = match POSITIONS[scene.position] {
            "in the center" => (third(0.4, 0.6, rng), third(0.4, 0.6, rng)),
            "on the left" => (third(0.0, 0.15, rng), third(0.3, 0.7, rng)),
            "on the right" => (third(0.85, 1.0, rng), third(0.3, 0.7, rng)),
            "at the top" => (third(0.3, 0.7, rng), third(0.0, 0.15, rng)),
            _ => (third(0.3, 0.7, rng), third(0.85, 1.0, rng)),
        };
        let angle = match shape {
            Outline::Circle => 0.0,
            _ if rng.uniform() >= 0.3 * variety => rng.range(-0.2, 0.2) * variety,
            _ => rng.range(-std::f64::consts::PI, std::f64::consts::PI),
        };
        let (sin, cos) = angle.sin_cos();
        let stroke = if rng.uniform() < 0.18 * variety {
            rng.range(0.12, 0.3)
        } else {
            0.0
        };
        Self {
            cx: x0 + fx,
            cy: y0 + fy,
            radius,
            sin,
            cos,
            stroke,
        }
    }

    /// Coverage of the shape at canvas point (x, y).
    fn covers(&self, shape: &Outline, x: f64, y: f64) -> bool {
        let (dx, dy) = ((x - self.cx) / self.radius, (self.cy - y) / self.radius);
        let (u, v) = (
            dx * self.cos + dy * self.sin,
            -dx * self.sin + dy * self.cos,
        );
        if !shape.inside(u, v) {
            return false;
        }
        if self.stroke == 0.0 {
            return true;
        }
        let k = 1.0 / (1.0 - self.stroke);
        !shape.inside(u * k, v * k)
    }
}

// ---------------------------------------------------------------------------------------
// Rendering

/// Draw `scene` at a random canvas size with random effects.
pub fn render(scene: &Scene, rng: &mut Rng) -> RgbImage {
    render_with(scene, rng, 1.0)
}

/// As [`render`], with `variety` in [0, 1] scaling how often shapes are rotated or
/// outlined, backgrounds graded, and pictures blurred, noisy or JPEG-compressed.
pub fn render_with(scene: &Scene, rng: &mut Rng, variety: f64) -> RgbImage {
    let side = 40 + rng.below(161) as u32;
    let (w, h) = if rng.uniform() < 0.15 {
        let long = (side as f64 * rng.range(1.1, 1.6)) as u32;
        if rng.uniform() < 0.5 {
            (long, side)
        } else {
            (side, long)
        }
    } else {
        (side, side)
    };
    let fg = shade(scene.colour, rng);
    let bg = Background::random(scene.background, fg, w, h, rng, variety);
    let shape = Outline::random(scene.shape, rng);
    let place = Placement::random(scene, &shape, w as f64, h as f64, rng, variety);
    let sub = if rng.uniform() < 0.1 { 1 } else { 3 };
    let mut img = RgbImage::new(w, h);
    // Every shape lies within 1.5 radii of its centre (a lopsided triangle's corner is
    // the farthest, about 1.3): pixels beyond that plus a pixel's diagonal hold none of
    // it, and skipping their samples leaves the picture exactly as it was.
    let reach = 1.5 * place.radius + std::f64::consts::SQRT_2;
    for (x, y, px) in img.enumerate_pixels_mut() {
        let mut hits = 0;
        let (dx, dy) = (x as f64 + 0.5 - place.cx, y as f64 + 0.5 - place.cy);
        let sub = if dx * dx + dy * dy > reach * reach {
            0
        } else {
            sub
        };
        for sy in 0..sub {
            for sx in 0..sub {
                let fx = x as f64 + (sx as f64 + 0.5) / sub as f64;
                let fy = y as f64 + (sy as f64 + 0.5) / sub as f64;
                hits += usize::from(place.covers(&shape, fx, fy));
            }
        }
        let a = hits as f64 / (sub * sub).max(1) as f64;
        let b = bg.at(x, y);
        *px =
            Rgb([0, 1, 2].map(|c| (fg[c] * a + b[c] * (1.0 - a)).round().clamp(0.0, 255.0) as u8));
    }
    apply_effects(img, rng, variety)
}

/// A plain, gradient or noisy background of the named kind.
struct Background {
    a: [f64; 3],
    b: [f64; 3],
    /// Gradient direction (unit vector scaled by 1 / canvas size); zero for plain.
    dir: (f64, f64),
}

impl Background {
    fn random(kind: usize, fg: [f64; 3], w: u32, h: u32, rng: &mut Rng, variety: f64) -> Self {
        let a = background_colour(kind, fg, rng);
        let gradient = BACKGROUNDS[kind] != "white"
            && BACKGROUNDS[kind] != "black"
            && rng.uniform() < 0.4 * variety;
        if !gradient {
            return Self {
                a,
                b: a,
                dir: (0.0, 0.0),
            };
        }
        let b = background_colour(kind, fg, rng);
        let t = rng.range(0.0, std::f64::consts::TAU);
        let size = w.max(h) as f64;
        Self {
            a,
            b,
            dir: (t.cos() / size, t.sin() / size),
        }
    }

    fn at(&self, x: u32, y: u32) -> [f64; 3] {
        let t = (0.5 + x as f64 * self.dir.0 + y as f64 * self.dir.1).clamp(0.0, 1.0);
        [0, 1, 2].map(|c| self.a[c] * (1.0 - t) + self.b[c] * t)
    }
}

/// Blur, noise and JPEG compression, each now and then.
fn apply_effects(mut img: RgbImage, rng: &mut Rng, variety: f64) -> RgbImage {
    if rng.uniform() < 0.3 * variety {
        // Blur measured at the model's 64-pixel view, so a small canvas is not smeared.
        let scale = f64::from(img.width().min(img.height())) / 64.0;
        img = image::imageops::blur(&img, (rng.range(0.3, 1.2) * scale) as f32);
    }
    if rng.uniform() < 0.3 * variety {
        let sd = rng.range(3.0, 18.0);
        for px in img.pixels_mut() {
            for c in px.0.iter_mut() {
                *c = (f64::from(*c) + sd * rng.normal())
                    .round()
                    .clamp(0.0, 255.0) as u8;
            }
        }
    }
    if rng.uniform() < 0.35 * variety {
        img = jpeg_roundtrip(&img, 15 + rng.below(80) as u8).unwrap_or(img);
    }
    img
}

fn jpeg_roundtrip(img: &RgbImage, quality: u8) -> Option<RgbImage> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode_image(img)
        .ok()?;
    image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
        .ok()
        .map(|d| d.to_rgb8())
}

// ---------------------------------------------------------------------------------------
// Captions

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn colour_word(colour: usize, rng: &mut Rng) -> &'static str {
    match COLOURS[colour] {
        "gray" if rng.uniform() < 0.5 => "grey",
        name => name,
    }
}

/// A caption for the scene and what it states.
pub fn caption(scene: &Scene, rng: &mut Rng) -> (String, Mentions) {
    let shape = SHAPES[scene.shape];
    let colour = colour_word(scene.colour, rng);
    let r = rng.uniform();
    if r < 0.12 {
        return shape_only(scene, shape, rng);
    }
    if r < 0.2 {
        return colour_only(scene, colour, rng);
    }
    let mut m = Mentions {
        shape: Some(scene.shape),
        colour: Some(scene.colour),
        ..Mentions::default()
    };
    let size = if rng.uniform() < 0.3 {
        m.size = Some(scene.size);
        format!("{} ", SIZES[scene.size])
    } else {
        String::new()
    };
    let mut tail = String::new();
    if rng.uniform() < 0.25 {
        m.position = Some(scene.position);
        tail.push(' ');
        tail.push_str(POSITIONS[scene.position]);
    }
    if rng.uniform() < 0.25 {
        m.background = Some(scene.background);
        let bg = BACKGROUNDS[scene.background];
        tail.push_str(&format!(" on {} {bg} background", article(bg)));
    }
    let noun = format!("{size}{colour} {shape}");
    let a = article(&noun);
    let text = match rng.below(12) {
        0..=3 => format!("{a} {noun}{tail}"),
        4 => format!("a photo of {a} {noun}{tail}."),
        5 => format!("a picture of {a} {noun}{tail}"),
        6 => format!("a drawing of {a} {noun}{tail}"),
        7 => format!("{noun}{tail}"),
        8 => format!("the {noun}{tail}"),
        9 => format!("{a} {noun} shape{tail}"),
        10 => {
            let bare = format!("{size}{shape}");
            format!("{} {bare} that is {colour}{tail}", article(&bare))
        }
        _ => format!("an image of {a} {noun}{tail}"),
    };
    (text, m)
}

/// `caption` with its shape word replaced by `SHAPES[shape]`, and what it then states: a
/// hard negative for the picture it described (NegCLIP, Yuksekgonul et al. 2023), which
/// only the shape tells apart. `None` when the caption names no shape or already names
/// this one.
pub fn with_shape(caption: &str, mentions: &Mentions, shape: usize) -> Option<(String, Mentions)> {
    let old = SHAPES[mentions.shape?];
    let new = SHAPES.get(shape).filter(|&&n| n != old)?;
    let text = caption
        .split(' ')
        .map(|w| match w.strip_prefix(old) {
            Some(rest) if rest.is_empty() || rest == "." => format!("{new}{rest}"),
            _ => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ");
    let stated = Mentions {
        shape: Some(shape),
        ..*mentions
    };
    Some((text, stated))
}

fn shape_only(scene: &Scene, shape: &str, rng: &mut Rng) -> (String, Mentions) {
    let a = article(shape);
    let text = match rng.below(5) {
        0 => format!("{a} {shape}"),
        1 => format!("a photo of {a} {shape}."),
        2 => format!("{a} {shape} shape"),
        3 => format!("a drawing of {a} {shape}"),
        _ => shape.to_string(),
    };
    let m = Mentions {
        shape: Some(scene.shape),
        ..Mentions::default()
    };
    (text, m)
}

fn colour_only(scene: &Scene, colour: &str, rng: &mut Rng) -> (String, Mentions) {
    let text = match rng.below(4) {
        0 => format!("something {colour}"),
        1 => format!("{} {colour} shape", article(colour)),
        2 => format!("{} {colour} object", article(colour)),
        _ => colour.to_string(),
    };
    let m = Mentions {
        colour: Some(scene.colour),
        ..Mentions::default()
    };
    (text, m)
}

/// How [`write_scenes`] lays pictures out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `DIR/NNNNN.png` plus `DIR/captions.csv` (`image,caption`).
    Captions,
    /// `DIR/<colour>-<shape>/NNNNN.png`.
    Folders,
}

/// Whether `parts` (a path relative to a set's root, by component) is a file
/// [`write_scenes`] writes: `NNNNN.png` and `captions.csv`, or `<colour>-<shape>/NNNNN.png`.
pub fn is_scenes_file(parts: &[&str]) -> bool {
    match parts {
        [name] => *name == "captions.csv" || super::is_numbered_png(name, "", 5),
        [class, name] => {
            let known = class.split_once('-').is_some_and(|(colour, shape)| {
                COLOURS.contains(&colour) && SHAPES.contains(&shape)
            });
            known && super::is_numbered_png(name, "", 5)
        }
        _ => false,
    }
}

/// Write `count` generated pictures into `dir` (seeded; no combination is held out).
pub fn write_scenes(dir: &Path, count: usize, layout: Layout, seed: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut csv = String::from("image,caption\n");
    for i in 0..count {
        let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let s = sample(random_scene(&mut rng, &[]), &mut rng);
        let file = format!("{i:05}.png");
        let path = match layout {
            Layout::Captions => {
                let quoted = s.caption.replace('"', "\"\"");
                csv.push_str(&format!("{file},\"{quoted}\"\n"));
                dir.join(&file)
            }
            Layout::Folders => {
                let class = dir.join(format!(
                    "{}-{}",
                    COLOURS[s.scene.colour], SHAPES[s.scene.shape]
                ));
                std::fs::create_dir_all(&class)?;
                class.join(&file)
            }
        };
        let mut bytes = Vec::new();
        s.image
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .map_err(std::io::Error::other)?;
        crate::util::write_atomic(&path, &bytes)?;
    }
    if layout == Layout::Captions {
        crate::util::write_atomic(&dir.join("captions.csv"), csv.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_are_told_from_other_files() {
        assert!(is_scenes_file(&["00007.png"]) && is_scenes_file(&["captions.csv"]));
        assert!(is_scenes_file(&["red-circle", "00012.png"]));
        assert!(is_scenes_file(&["123456.png"]), "past 99999");
        assert!(!is_scenes_file(&["red-dragon", "00012.png"]));
        assert!(!is_scenes_file(&["photo.png"]) && !is_scenes_file(&["a", "b", "00001.png"]));
    }

    #[test]
    fn a_swapped_shape_changes_the_shape_word_and_what_is_stated() {
        let mut rng = Rng::new(9);
        for _ in 0..500 {
            let s = sample(random_scene(&mut rng, &[]), &mut rng);
            let other = (s.scene.shape + 1) % SHAPES.len();
            match with_shape(&s.caption, &s.mentions, other) {
                None => assert!(s.mentions.shape.is_none(), "{}", s.caption),
                Some((text, m)) => {
                    assert_eq!(m.shape, Some(other));
                    assert_eq!(m.colour, s.mentions.colour);
                    assert!(!m.fits(&s.scene));
                    let words = |t: &str| {
                        t.split([' ', '.'])
                            .filter(|w| SHAPES.contains(w))
                            .map(str::to_string)
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(words(&text), [SHAPES[other]], "{} -> {text}", s.caption);
                }
            }
        }
    }

    #[test]
    fn every_shape_lies_within_one_and_a_half_radii() {
        let mut rng = Rng::new(5);
        for (shape, name) in SHAPES.iter().enumerate() {
            for _ in 0..200 {
                let outline = Outline::random(shape, &mut rng);
                for k in 0..720 {
                    let a = k as f64 * std::f64::consts::TAU / 720.0;
                    for r in [1.45, 1.5, 2.0, 4.0] {
                        assert!(
                            !outline.inside(r * a.cos(), r * a.sin()),
                            "{name} reaches {r} radii"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn held_out_combinations_never_appear() {
        let mut rng = Rng::new(3);
        for _ in 0..5000 {
            let s = random_scene(&mut rng, &HELD_OUT);
            assert!(!HELD_OUT.contains(&(s.shape, s.colour)));
        }
    }

    #[test]
    fn captions_state_only_true_facts() {
        let mut rng = Rng::new(5);
        for _ in 0..2000 {
            let scene = random_scene(&mut rng, &[]);
            let (text, m) = caption(&scene, &mut rng);
            assert!(m.fits(&scene), "{text}");
            if let Some(s) = m.shape {
                assert!(text.contains(SHAPES[s]), "{text}");
            }
            assert!(!text.contains("  "), "{text:?}");
        }
    }

    #[test]
    fn articles_agree() {
        let scene = Scene {
            shape: 0,
            colour: 4,
            size: 0,
            position: 0,
            background: 0,
        };
        let mut rng = Rng::new(1);
        for _ in 0..200 {
            let (text, _) = caption(&scene, &mut rng);
            assert!(
                !text.contains("a orange") && !text.contains("an small"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_shape_is_drawn_in_its_colour() {
        // A large red square on white, filled or outlined: a good share of red pixels.
        let scene = Scene {
            shape: 1,
            colour: 0,
            size: 2,
            position: 0,
            background: 0,
        };
        for seed in 0..20 {
            let mut rng = Rng::new(seed);
            let img = render(&scene, &mut rng);
            let red = img
                .pixels()
                .filter(|p| p[0] > 100 && i32::from(p[0]) - i32::from(p[1]) > 60)
                .count();
            let share = red as f64 / f64::from(img.width() * img.height());
            assert!(share > 0.05, "{seed}: {share}");
        }
    }

    #[test]
    fn shapes_have_plausible_areas() {
        let mut rng = Rng::new(2);
        for (shape, lo, hi) in [(0, 0.7, 0.85), (1, 0.55, 0.7), (5, 0.35, 0.75)] {
            let o = Outline::random(shape, &mut rng);
            let n = 200;
            let hits = (0..n * n)
                .filter(|i| {
                    let u = (i % n) as f64 / n as f64 * 2.0 - 1.0;
                    let v = (i / n) as f64 / n as f64 * 2.0 - 1.0;
                    o.inside(u, v)
                })
                .count() as f64
                / (n * n) as f64;
            assert!((lo..hi).contains(&hits), "{}: {hits}", SHAPES[shape]);
        }
    }
}
