//! Linear probe and few-shot classification on frozen CLIP image embeddings, as the CLIP
//! paper evaluates representations (Radford et al. 2021, appendix A.3): multinomial
//! logistic regression fitted by L-BFGS, its L2 strength chosen by a sweep on a
//! validation split.
//!
//! The optimisation is `linfa-logistic`'s `MultiLogisticRegression` (L-BFGS with a
//! More-Thuente line search, from `argmin`, over `ndarray`): a maintained crate that
//! minimises exactly the objective scikit-learn's `LogisticRegression(multi_class=
//! "multinomial")`, OpenAI's probe, does: the summed cross-entropy plus `lambda / 2 * |W|^2`,
//! the intercepts not penalised. `lambda` is therefore scikit-learn's `1 / C`. It builds in
//! well under a minute, needs no BLAS, and fits a few hundred 512-d embeddings of ten
//! classes in milliseconds; candle would have meant writing L-BFGS by hand.
//!
//! Every embedding is L2-normalised here before it is fitted or scored (a no-op on CLIP's
//! own normalised output), so callers may pass raw image features.

use linfa::prelude::*;
use linfa_logistic::MultiLogisticRegression;
use ndarray::{Array1, Array2, Axis};
use serde::{Deserialize, Serialize};

use crate::cnn::rng::Rng;

/// The coarse sweep: one lambda per decade from 1e-6 to 1e6.
const COARSE_EXPONENTS: std::ops::RangeInclusive<i32> = -6..=6;
/// The fine sweep: quarter decades around the best coarse lambda.
const FINE_STEPS: [f64; 6] = [-0.75, -0.5, -0.25, 0.25, 0.5, 0.75];
/// L-BFGS iteration cap (OpenAI's probe used scikit-learn with `max_iter=1000`).
const MAX_ITERATIONS: u64 = 1000;
/// L-BFGS stops when the gradient's norm falls below this, per training image (the
/// objective is a sum over images, so its gradient grows with their number).
const TOLERANCE_PER_IMAGE: f64 = 1e-5;

/// Inputs the probe cannot be fitted or scored on.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A set of images is empty.
    #[error("the {0} set has no images")]
    Empty(&'static str),
    /// Embeddings and labels differ in number.
    #[error("the {set} set has {embeddings} embeddings but {labels} labels")]
    LengthMismatch {
        /// Which set.
        set: &'static str,
        /// Number of embeddings.
        embeddings: usize,
        /// Number of labels.
        labels: usize,
    },
    /// An embedding has a different width from the first one (or from the probe's).
    #[error("embedding {index} of the {set} set has {found} values, expected {expected}")]
    Width {
        /// Which set.
        set: &'static str,
        /// Index of the embedding.
        index: usize,
        /// Its width.
        found: usize,
        /// The width expected.
        expected: usize,
    },
    /// An embedding holds NaN or infinity.
    #[error("embedding {index} of the {set} set holds a value that is not finite")]
    NotFinite {
        /// Which set.
        set: &'static str,
        /// Index of the embedding.
        index: usize,
    },
    /// A label is not below the number of classes.
    #[error("image {index} of the {set} set has label {label}, but there are {classes} classes")]
    Label {
        /// Which set.
        set: &'static str,
        /// Index of the image.
        index: usize,
        /// Its label.
        label: usize,
        /// Number of classes.
        classes: usize,
    },
    /// Fewer than two classes have training images: there is nothing to tell apart.
    #[error("the training set has images of {0} class(es); a probe needs at least two")]
    TooFewClasses(usize),
    /// No class has two training images, so none can be held out for validation.
    #[error("no class has two training images, so none can be held out to choose lambda")]
    NoValidation,
    /// The validation fraction is not strictly between 0 and 1.
    #[error("validation fraction {0} is not between 0 and 1")]
    ValFraction(f64),
    /// The L2 strength is negative or not finite.
    #[error("L2 strength {0} is not a finite number >= 0")]
    Lambda(f64),
    /// A few-shot request asks for no shots or no seeds, or for 0 images per class.
    #[error("few-shot needs at least one shot count, each at least 1, and one seed")]
    Shots,
    /// The optimiser failed.
    #[error("logistic regression failed: {0}")]
    Solver(String),
}

/// A fitted linear probe: the chosen L2 strength, the sweep that chose it, and the model.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeResult {
    /// The L2 strength chosen (scikit-learn's `1 / C`): the best validation top-1, and
    /// among lambdas tied on it, the lowest validation loss.
    pub lambda: f64,
    /// Every lambda tried, with its validation top-1, in the order tried.
    pub lambdas: Vec<(f64, f64)>,
    /// Validation loss (mean cross-entropy) of each lambda tried, in the same order.
    pub val_losses: Vec<f64>,
    /// Validation top-1 at the chosen lambda.
    pub val_top1: f64,
    /// Validation loss at the chosen lambda.
    pub val_loss: f64,
    /// Training images the validation split held out (the final model is refitted on all).
    pub val_images: usize,
    #[serde(skip)]
    model: LinearModel,
}

impl ProbeResult {
    /// Class probabilities for each embedding (softmax over all `n_classes`; a class the
    /// probe had no training image of gets 0).
    pub fn scores(&self, x: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, ProbeError> {
        let x = embedding_matrix("scored", x, Some(self.model.width()))?;
        let probabilities = self.model.probabilities(&x);
        Ok(probabilities
            .outer_iter()
            .map(|row| row.iter().map(|&p| p as f32).collect())
            .collect())
    }
}

/// Multinomial logistic regression over all classes: weights (features x classes) and
/// intercepts, `-inf` for a class absent from training.
#[derive(Clone, Debug)]
struct LinearModel {
    weights: Array2<f64>,
    intercepts: Array1<f64>,
}

impl LinearModel {
    fn width(&self) -> usize {
        self.weights.nrows()
    }

    /// Row-wise softmax of `x . W + b`.
    fn probabilities(&self, x: &Array2<f64>) -> Array2<f64> {
        let mut logits = x.dot(&self.weights) + &self.intercepts;
        for mut row in logits.rows_mut() {
            let top = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
            row.mapv_inplace(|v| (v - top).exp());
            let sum = row.sum();
            row /= sum;
        }
        logits
    }

    /// Top-1 (the argmax of the f32 scores callers see, ties to the lowest class) and
    /// mean cross-entropy of the rows `x` with labels `y`.
    fn evaluate(&self, x: &Array2<f64>, y: &[usize]) -> Evaluation {
        let probabilities = self.probabilities(x);
        let mut hits = 0;
        let mut loss = 0.0;
        for (row, &label) in probabilities.outer_iter().zip(y) {
            let scores: Vec<f32> = row.iter().map(|&p| p as f32).collect();
            hits += usize::from(super::metrics::argmax(&scores) == Some(label));
            // Floored so that a confident mistake costs a large but finite loss.
            loss -= row[label].max(1e-300).ln();
        }
        let n = y.len() as f64;
        Evaluation {
            top1: hits as f64 / n,
            loss: loss / n,
        }
    }
}

/// How a fitted model does on a labelled set.
#[derive(Clone, Copy, Debug)]
struct Evaluation {
    top1: f64,
    loss: f64,
}

/// Embeddings as L2-normalised rows of a matrix, checked for width and finiteness.
fn embedding_matrix(
    set: &'static str,
    x: &[Vec<f32>],
    width: Option<usize>,
) -> Result<Array2<f64>, ProbeError> {
    let first = x.first().ok_or(ProbeError::Empty(set))?;
    let expected = width.unwrap_or(first.len());
    let mut matrix = Array2::zeros((x.len(), expected));
    for (index, (row, mut out)) in x.iter().zip(matrix.rows_mut()).enumerate() {
        if row.len() != expected || expected == 0 {
            return Err(ProbeError::Width {
                set,
                index,
                found: row.len(),
                expected,
            });
        }
        if row.iter().any(|v| !v.is_finite()) {
            return Err(ProbeError::NotFinite { set, index });
        }
        let norm = row
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt();
        // A zero embedding stays zero rather than becoming NaN.
        let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        for (o, &v) in out.iter_mut().zip(row) {
            *o = f64::from(v) * scale;
        }
    }
    Ok(matrix)
}

/// Checks a set's labels against its embeddings and the number of classes.
fn check_labels(
    set: &'static str,
    embeddings: usize,
    y: &[usize],
    classes: usize,
) -> Result<(), ProbeError> {
    if embeddings != y.len() {
        return Err(ProbeError::LengthMismatch {
            set,
            embeddings,
            labels: y.len(),
        });
    }
    match y.iter().position(|&label| label >= classes) {
        Some(index) => Err(ProbeError::Label {
            set,
            index,
            label: y[index],
            classes,
        }),
        None => Ok(()),
    }
}

/// The images of each class, by index.
fn by_class(y: &[usize], classes: usize) -> Vec<Vec<usize>> {
    let mut members = vec![Vec::new(); classes];
    for (i, &label) in y.iter().enumerate() {
        members[label].push(i);
    }
    members
}

/// Fits the probe at `lambda` on the rows `x` with labels `y`, starting from `start` (a
/// warm start from a neighbouring lambda's solution, in linfa's layout).
fn fit(
    x: &Array2<f64>,
    y: &[usize],
    classes: usize,
    lambda: f64,
    start: Option<Array2<f64>>,
) -> Result<(LinearModel, Array2<f64>), ProbeError> {
    let tolerance = TOLERANCE_PER_IMAGE * y.len() as f64;
    let mut params = MultiLogisticRegression::default()
        .alpha(lambda)
        .max_iterations(MAX_ITERATIONS)
        .gradient_tolerance(tolerance);
    if let Some(start) = start {
        params = params.initial_params(start);
    }
    let dataset = Dataset::new(x.clone(), Array1::from(y.to_vec()));
    let fitted = params
        .fit(&dataset)
        .map_err(|e| ProbeError::Solver(e.to_string()))?;
    // linfa numbers only the classes present in `y`, in sorted order; spread them back
    // over every class, the absent ones never chosen.
    let width = x.ncols();
    let mut weights = Array2::zeros((width, classes));
    let mut intercepts = Array1::from_elem(classes, f64::NEG_INFINITY);
    for (column, &class) in fitted.classes().iter().enumerate() {
        weights
            .column_mut(class)
            .assign(&fitted.params().column(column));
        intercepts[class] = fitted.intercept()[column];
    }
    let mut warm = Array2::zeros((width + 1, fitted.classes().len()));
    warm.slice_mut(ndarray::s![..width, ..])
        .assign(fitted.params());
    warm.row_mut(width).assign(fitted.intercept());
    Ok((
        LinearModel {
            weights,
            intercepts,
        },
        warm,
    ))
}

/// Checks a training set and returns its normalised embeddings and per-class members.
fn training_set(
    x: &[Vec<f32>],
    y: &[usize],
    classes: usize,
) -> Result<(Array2<f64>, Vec<Vec<usize>>), ProbeError> {
    let matrix = embedding_matrix("training", x, None)?;
    check_labels("training", x.len(), y, classes)?;
    let members = by_class(y, classes);
    let present = members.iter().filter(|m| !m.is_empty()).count();
    if present < 2 {
        return Err(ProbeError::TooFewClasses(present));
    }
    Ok((matrix, members))
}

/// A stratified split of each class's images: `fraction` of each class (rounded, at least
/// one when the class has two or more) held out for validation, at least one kept for
/// training. Returns (training rows, validation rows).
fn stratified_split(
    members: &[Vec<usize>],
    fraction: f64,
    rng: &mut Rng,
) -> (Vec<usize>, Vec<usize>) {
    let mut train = Vec::new();
    let mut val = Vec::new();
    for class in members {
        let mut shuffled = class.clone();
        rng.shuffle(&mut shuffled);
        let n = shuffled.len();
        let held = if n < 2 {
            0
        } else {
            ((n as f64 * fraction).round() as usize).clamp(1, n - 1)
        };
        val.extend_from_slice(&shuffled[..held]);
        train.extend_from_slice(&shuffled[held..]);
    }
    (train, val)
}

/// The rows `rows` of `x` and their labels.
fn subset(x: &Array2<f64>, y: &[usize], rows: &[usize]) -> (Array2<f64>, Vec<usize>) {
    (
        x.select(Axis(0), rows),
        rows.iter().map(|&r| y[r]).collect(),
    )
}

/// Fits at every lambda of `lambdas` (warm-starting each from the previous solution,
/// so go from strong to weak regularisation) and records how it does on validation.
fn sweep(
    train: &(Array2<f64>, Vec<usize>),
    val: &(Array2<f64>, Vec<usize>),
    classes: usize,
    lambdas: &[f64],
    tried: &mut Vec<(f64, Evaluation)>,
) -> Result<(), ProbeError> {
    let mut warm = None;
    for &lambda in lambdas {
        let (model, params) = fit(&train.0, &train.1, classes, lambda, warm)?;
        warm = Some(params);
        tried.push((lambda, model.evaluate(&val.0, &val.1)));
    }
    Ok(())
}

/// The best of `tried`: highest validation top-1, then lowest validation loss. Top-1 is
/// what the study reports, but on a small or easy validation set many lambdas tie on
/// it, and the loss then tells a calibrated model from a nearly uniform one.
fn best(tried: &[(f64, Evaluation)]) -> (f64, Evaluation) {
    let mut best = tried[0];
    for &(lambda, e) in &tried[1..] {
        if e.top1 > best.1.top1 || (e.top1 == best.1.top1 && e.loss < best.1.loss) {
            best = (lambda, e);
        }
    }
    best
}

/// Fits a linear probe: holds out a stratified `val_fraction` of the training images
/// (seeded by `seed`), sweeps lambda over 1e-6..1e6 a decade apart, then by quarter
/// decades around the best, picks the lambda with the best validation top-1 (the lowest
/// validation loss among ties), and refits on all the training images with it.
pub fn linear_probe(
    train_x: &[Vec<f32>],
    train_y: &[usize],
    n_classes: usize,
    val_fraction: f64,
    seed: u64,
) -> Result<ProbeResult, ProbeError> {
    if !(val_fraction > 0.0 && val_fraction < 1.0) {
        return Err(ProbeError::ValFraction(val_fraction));
    }
    let (x, members) = training_set(train_x, train_y, n_classes)?;
    let (train_rows, val_rows) = stratified_split(&members, val_fraction, &mut Rng::new(seed));
    if val_rows.is_empty() {
        return Err(ProbeError::NoValidation);
    }
    let train = subset(&x, train_y, &train_rows);
    let val = subset(&x, train_y, &val_rows);

    let mut tried = Vec::new();
    let coarse: Vec<f64> = COARSE_EXPONENTS.rev().map(|e| 10f64.powi(e)).collect();
    sweep(&train, &val, n_classes, &coarse, &mut tried)?;
    let centre = best(&tried).0.log10();
    let fine: Vec<f64> = FINE_STEPS
        .iter()
        .rev()
        .map(|step| centre + step)
        .filter(|e| (-6.0..=6.0).contains(e))
        .map(|e| 10f64.powf(e))
        .collect();
    sweep(&train, &val, n_classes, &fine, &mut tried)?;

    let (lambda, chosen) = best(&tried);
    let (model, _) = fit(&x, train_y, n_classes, lambda, None)?;
    Ok(ProbeResult {
        lambda,
        lambdas: tried.iter().map(|(l, e)| (*l, e.top1)).collect(),
        val_losses: tried.iter().map(|(_, e)| e.loss).collect(),
        val_top1: chosen.top1,
        val_loss: chosen.loss,
        val_images: val_rows.len(),
        model,
    })
}

/// A class that had fewer training images than the shots asked for: all it had were used.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShortClass {
    /// The class index.
    pub class: usize,
    /// Its training images, all used in every draw.
    pub available: usize,
}

/// Few-shot accuracy at one number of shots: top-1 on the test set over several random
/// draws of the labelled images.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FewShotPoint {
    /// Labelled images per class asked for.
    pub shots: usize,
    /// Mean test top-1 over the draws.
    pub mean: f64,
    /// Sample standard deviation (n - 1) of test top-1 over the draws; 0 for one draw.
    pub std: f64,
    /// Lowest test top-1 of the draws.
    pub min: f64,
    /// Highest test top-1 of the draws.
    pub max: f64,
    /// Test top-1 of each draw.
    pub runs: Vec<f64>,
    /// Classes with fewer than `shots` training images (none when every class had enough).
    pub short_classes: Vec<ShortClass>,
}

/// Few-shot probes: for each k in `shots`, `seeds` random draws of k labelled images per
/// class from the training set (all of a class's images when it has fewer, reported in
/// `short_classes`; a class with none is left out), each fitted at L2 strength `lambda`
/// and scored by top-1 on the test set. Draws are seeded by `seed`, the shot count and the
/// draw number, so each point repeats on its own.
#[allow(clippy::too_many_arguments)] // the study's inputs, all needed, named at the call
pub fn few_shot(
    train_x: &[Vec<f32>],
    train_y: &[usize],
    test_x: &[Vec<f32>],
    test_y: &[usize],
    n_classes: usize,
    shots: &[usize],
    seeds: usize,
    lambda: f64,
    seed: u64,
) -> Result<Vec<FewShotPoint>, ProbeError> {
    if shots.is_empty() || shots.contains(&0) || seeds == 0 {
        return Err(ProbeError::Shots);
    }
    if !(lambda.is_finite() && lambda >= 0.0) {
        return Err(ProbeError::Lambda(lambda));
    }
    let (x, members) = training_set(train_x, train_y, n_classes)?;
    let test = embedding_matrix("test", test_x, Some(x.ncols()))?;
    check_labels("test", test_x.len(), test_y, n_classes)?;
    shots
        .iter()
        .map(|&k| {
            let runs = (0..seeds)
                .map(|draw| {
                    let mut rng = Rng::new(crate::cnn::rng::mix(
                        seed ^ ((k as u64) << 32) ^ draw as u64,
                    ));
                    let rows = draw_shots(&members, k, &mut rng);
                    let (xs, ys) = subset(&x, train_y, &rows);
                    let (model, _) = fit(&xs, &ys, n_classes, lambda, None)?;
                    Ok(model.evaluate(&test, test_y).top1)
                })
                .collect::<Result<Vec<f64>, ProbeError>>()?;
            Ok(summarise(k, runs, &members))
        })
        .collect()
}

/// Up to `k` random images of each class.
fn draw_shots(members: &[Vec<usize>], k: usize, rng: &mut Rng) -> Vec<usize> {
    members
        .iter()
        .flat_map(|class| {
            let mut shuffled = class.clone();
            rng.shuffle(&mut shuffled);
            shuffled.truncate(k);
            shuffled
        })
        .collect()
}

/// Mean, spread and extremes of the draws at `shots`, with the classes that fell short.
fn summarise(shots: usize, runs: Vec<f64>, members: &[Vec<usize>]) -> FewShotPoint {
    let n = runs.len() as f64;
    let mean = runs.iter().sum::<f64>() / n;
    let std = if runs.len() > 1 {
        (runs.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    FewShotPoint {
        shots,
        mean,
        std,
        min: runs.iter().copied().fold(f64::INFINITY, f64::min),
        max: runs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        short_classes: members
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.is_empty() && m.len() < shots)
            .map(|(class, m)| ShortClass {
                class,
                available: m.len(),
            })
            .collect(),
        runs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gaussian blobs around `classes` random unit vectors in `dim` dimensions:
    /// `per_class` embeddings of each, noise `sigma` per coordinate.
    fn blobs(
        classes: usize,
        per_class: usize,
        dim: usize,
        sigma: f64,
        seed: u64,
    ) -> (Vec<Vec<f32>>, Vec<usize>) {
        let mut rng = Rng::new(seed);
        let centres: Vec<Vec<f64>> = (0..classes)
            .map(|_| {
                let v: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
                let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
                v.iter().map(|a| a / norm).collect()
            })
            .collect();
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..per_class {
            for (c, centre) in centres.iter().enumerate() {
                x.push(
                    centre
                        .iter()
                        .map(|&m| (m + sigma * rng.normal()) as f32)
                        .collect(),
                );
                y.push(c);
            }
        }
        (x, y)
    }

    fn top1(scores: &[Vec<f32>], y: &[usize]) -> f64 {
        let hits = scores
            .iter()
            .zip(y)
            .filter(|(s, &t)| crate::study::metrics::argmax(s) == Some(t))
            .count();
        hits as f64 / y.len() as f64
    }

    #[test]
    fn a_separable_blob_set_is_learned() {
        // Noise 0.1 per coordinate in 64-d puts an embedding about 0.8 from its centre;
        // two centres are about 1.4 apart. blobs() interleaves the classes, so the first
        // 300 hold 30 of each class and the last 200 hold 20.
        let (x, y) = blobs(10, 50, 64, 0.1, 1);
        let (train_x, test_x) = x.split_at(300);
        let (train_y, test_y) = y.split_at(300);
        let probe = linear_probe(train_x, train_y, 10, 0.2, 7).unwrap();
        let accuracy = top1(&probe.scores(test_x).unwrap(), test_y);
        assert!(accuracy >= 0.95, "test top-1 {accuracy}");
        assert!(probe.lambdas.iter().any(|&(l, _)| l == probe.lambda));
        assert!(probe.lambdas.len() >= 13 + 3, "{:?}", probe.lambdas);
        assert_eq!(probe.val_images, 60);
        let row = &probe.scores(&test_x[..1]).unwrap()[0];
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }

    #[test]
    fn random_labels_stay_near_chance() {
        let (x, _) = blobs(10, 40, 64, 0.1, 2);
        let mut rng = Rng::new(3);
        let y: Vec<usize> = x.iter().map(|_| rng.below(4)).collect();
        let probe = linear_probe(&x[..300], &y[..300], 4, 0.2, 7).unwrap();
        let accuracy = top1(&probe.scores(&x[300..]).unwrap(), &y[300..]);
        // Chance is 0.25; with 100 test images its standard error is about 0.043.
        assert!((0.1..=0.4).contains(&accuracy), "test top-1 {accuracy}");
    }

    #[test]
    fn few_shot_grows_with_shots_and_reports_short_classes() {
        let (x, y) = blobs(5, 40, 64, 0.25, 4);
        let (train_x, test_x) = x.split_at(100);
        let (train_y, test_y) = y.split_at(100);
        let points = few_shot(train_x, train_y, test_x, test_y, 5, &[1, 4, 32], 4, 1.0, 9)
            .expect("few-shot");
        let means: Vec<f64> = points.iter().map(|p| p.mean).collect();
        assert!(means[0] < means[1] && means[1] <= means[2], "{means:?}");
        for p in &points {
            assert_eq!(p.runs.len(), 4);
            assert!(p.min <= p.mean && p.mean <= p.max && p.std >= 0.0);
        }
        // 100 training images of 5 classes: 20 each, short of 32.
        assert!(points[1].short_classes.is_empty());
        assert_eq!(points[2].short_classes.len(), 5);
        assert_eq!(points[2].short_classes[0].available, 20);
        // Seeded: the same call repeats.
        let again = few_shot(train_x, train_y, test_x, test_y, 5, &[1], 4, 1.0, 9).unwrap();
        assert_eq!(again[0].runs, points[0].runs);
    }

    #[test]
    fn classes_without_images_are_never_predicted() {
        let (x, y) = blobs(3, 10, 16, 0.1, 5);
        // Five classes declared, images of three only.
        let probe = linear_probe(&x, &y, 5, 0.3, 1).unwrap();
        let scores = probe.scores(&x).unwrap();
        assert!(scores
            .iter()
            .all(|row| row.len() == 5 && row[3] == 0.0 && row[4] == 0.0));
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let (x, y) = blobs(3, 4, 8, 0.1, 6);
        let e = |r: Result<ProbeResult, ProbeError>| r.unwrap_err().to_string();
        assert!(e(linear_probe(&[], &[], 3, 0.2, 1)).contains("no images"));
        assert!(e(linear_probe(&x, &y[1..], 3, 0.2, 1)).contains("labels"));
        assert!(e(linear_probe(&x, &y, 2, 0.2, 1)).contains("label 2"));
        assert!(e(linear_probe(&x, &y, 3, 1.0, 1)).contains("fraction"));
        assert!(e(linear_probe(&x, &y, 3, f64::NAN, 1)).contains("fraction"));
        let one_class = vec![0; x.len()];
        assert!(e(linear_probe(&x, &one_class, 3, 0.2, 1)).contains("at least two"));
        assert!(e(linear_probe(&x[..2], &y[..2], 3, 0.2, 1)).contains("held out"));
        let mut ragged = x.clone();
        ragged[3].push(1.0);
        assert!(e(linear_probe(&ragged, &y, 3, 0.2, 1)).contains("expected 8"));
        let mut nan = x.clone();
        nan[2][0] = f32::NAN;
        assert!(e(linear_probe(&nan, &y, 3, 0.2, 1)).contains("not finite"));
        let probe = linear_probe(&x, &y, 3, 0.25, 1).unwrap();
        assert!(probe.scores(&[vec![0.0; 9]]).is_err());
        let f = |shots: &[usize], seeds, lambda| {
            few_shot(&x, &y, &x, &y, 3, shots, seeds, lambda, 1).map(|_| ())
        };
        assert!(matches!(f(&[], 2, 1.0), Err(ProbeError::Shots)));
        assert!(matches!(f(&[0], 2, 1.0), Err(ProbeError::Shots)));
        assert!(matches!(f(&[1], 0, 1.0), Err(ProbeError::Shots)));
        assert!(matches!(f(&[1], 1, -1.0), Err(ProbeError::Lambda(_))));
        assert!(matches!(
            few_shot(&x, &y, &x[..1], &y, 3, &[1], 1, 1.0, 1),
            Err(ProbeError::LengthMismatch { .. })
        ));
        // k far beyond the data uses what there is.
        assert!(f(&[1000], 1, 1.0).is_ok());
    }

    /// scikit-learn's multinomial logistic regression on the same data: see
    /// `testdata/make_probe_parity.py`.
    #[derive(serde::Deserialize)]
    struct Reference {
        train_x: Vec<Vec<f32>>,
        train_y: Vec<usize>,
        test_x: Vec<Vec<f32>>,
        lambdas: Vec<f64>,
        probabilities: Vec<Vec<Vec<f64>>>,
    }

    #[test]
    fn probabilities_match_scikit_learn_at_each_lambda() {
        let reference: Reference =
            serde_json::from_str(include_str!("testdata/probe_parity.json")).unwrap();
        let (x, _) = training_set(&reference.train_x, &reference.train_y, 3).unwrap();
        let test = embedding_matrix("test", &reference.test_x, None).unwrap();
        for (&lambda, expected) in reference.lambdas.iter().zip(&reference.probabilities) {
            let (model, _) = fit(&x, &reference.train_y, 3, lambda, None).unwrap();
            let ours = model.probabilities(&test);
            let worst = ours
                .outer_iter()
                .zip(expected)
                .flat_map(|(a, b)| {
                    a.iter()
                        .zip(b)
                        .map(|(p, q)| (p - q).abs())
                        .collect::<Vec<_>>()
                })
                .fold(0.0, f64::max);
            // L-BFGS stops at a gradient tolerance; scikit-learn ran to 1e-12.
            assert!(
                worst < 2e-3,
                "lambda {lambda}: probabilities differ by {worst}"
            );
        }
    }

    /// How long the probe takes at the study's size: 400 training and 100 test embeddings
    /// of 512 values in 10 classes (synthetic blobs at three noise levels), the probe's
    /// sweep and a five-point, five-seed few-shot curve. Opt-in, as timing depends on the
    /// machine: `CLIPSCOPE_PROBE_TIMING=1 cargo test --lib probe_timing -- --nocapture`.
    #[test]
    fn probe_timing() {
        if std::env::var_os("CLIPSCOPE_PROBE_TIMING").is_none() {
            return;
        }
        for sigma in [0.06, 0.2, 0.4] {
            let (x, y) = blobs(10, 50, 512, sigma, 11);
            let (train_x, test_x) = x.split_at(400);
            let (train_y, test_y) = y.split_at(400);
            let start = std::time::Instant::now();
            let probe = linear_probe(train_x, train_y, 10, 0.2, 7).unwrap();
            let probe_time = start.elapsed();
            let accuracy = top1(&probe.scores(test_x).unwrap(), test_y);
            let start = std::time::Instant::now();
            let shots = [1, 2, 4, 8, 16];
            let points = few_shot(
                train_x,
                train_y,
                test_x,
                test_y,
                10,
                &shots,
                5,
                probe.lambda,
                3,
            )
            .unwrap();
            let few_shot_time = start.elapsed();
            let means: Vec<String> = points.iter().map(|p| format!("{:.3}", p.mean)).collect();
            println!(
                "noise {sigma}: probe {probe_time:.2?} ({} lambdas, chose {:.3e}, test top-1 \
                 {accuracy:.3}); few-shot 5 x 5 {few_shot_time:.2?} (means {})",
                probe.lambdas.len(),
                probe.lambda,
                means.join(" ")
            );
            assert!(probe_time.as_secs_f64() < 10.0 && few_shot_time.as_secs_f64() < 10.0);
        }
    }
}
