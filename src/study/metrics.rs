//! Classification metrics from per-image class scores: top-1 with a bootstrap confidence
//! interval, top-5, per-class precision, recall and F1, macro F1, the confusion matrix, and
//! accuracy with abstention.
//!
//! Conventions, the same everywhere in the study:
//! - the predicted class is the argmax of the scores; ties go to the lowest class index, and
//!   a NaN score never wins over a number;
//! - a class that is never predicted has precision 0 and so F1 0 (scikit-learn's
//!   `zero_division=0`); a class with no test images has recall 0 and F1 0, and is left
//!   out of macro F1, which is the unweighted mean over the classes that have support.

use serde::{Deserialize, Serialize};

use crate::cnn::rng::Rng;

/// Metrics of one classifier on one test set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Metrics {
    /// Number of test images.
    pub n: usize,
    /// Fraction of images whose top-scored class is the true one.
    pub top1: f64,
    /// 95% bootstrap confidence interval of top-1 (percentile method, seeded).
    pub top1_ci: [f64; 2],
    /// Top-5, only when there are more than five classes.
    pub top5: Option<f64>,
    /// Unweighted mean F1 over the classes that have test images.
    pub macro_f1: f64,
    /// One entry per class, in the order of the class list.
    pub per_class: Vec<ClassMetrics>,
    /// confusion[true][predicted]
    pub confusion: Vec<Vec<usize>>,
}

/// Metrics of one class.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// The class name.
    pub class: String,
    /// Number of test images of this class.
    pub support: usize,
    /// Fraction of this class's images predicted as it (its per-class accuracy); 0 without support.
    pub recall: f64,
    /// Fraction of the images predicted as this class that are of it; 0 when never predicted.
    pub precision: f64,
    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub f1: f64,
}

/// Inputs the metrics cannot be computed from.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    /// There is nothing to measure.
    #[error("no test images to measure")]
    Empty,
    /// There are no classes.
    #[error("no classes to measure against")]
    NoClasses,
    /// The truths and the score rows differ in number.
    #[error("{truths} true classes but {rows} rows of scores")]
    LengthMismatch {
        /// Number of true classes given.
        truths: usize,
        /// Number of score rows given.
        rows: usize,
    },
    /// A row of scores has the wrong number of classes.
    #[error("image {image} has {found} class scores, expected {expected}")]
    ScoreWidth {
        /// Index of the image.
        image: usize,
        /// Number of scores found.
        found: usize,
        /// Number of classes.
        expected: usize,
    },
    /// A true class is not one of the classes.
    #[error("image {image} has true class {class}, but there are only {classes} classes")]
    ClassOutOfRange {
        /// Index of the image.
        image: usize,
        /// The true class index.
        class: usize,
        /// Number of classes.
        classes: usize,
    },
}

/// Level of the bootstrap confidence intervals.
const CONFIDENCE: f64 = 0.95;

/// Whether class `a` (score `sa`) ranks ahead of class `b` (score `sb`): the higher score,
/// a number before NaN, and the lower index on a tie.
fn ranks_ahead(a: usize, sa: f32, b: usize, sb: f32) -> bool {
    match (sa.is_nan(), sb.is_nan()) {
        (false, true) => true,
        (true, false) => false,
        (true, true) => a < b,
        (false, false) => sa > sb || (sa == sb && a < b),
    }
}

/// The predicted class: the argmax of `scores`, ties to the lowest index, NaN never
/// winning over a number. `None` for an empty row.
pub fn argmax(scores: &[f32]) -> Option<usize> {
    (0..scores.len()).reduce(|best, i| {
        if ranks_ahead(i, scores[i], best, scores[best]) {
            i
        } else {
            best
        }
    })
}

/// The rank of class `class` in `scores` (0 = the argmax): how many classes rank ahead of it.
fn rank_of(scores: &[f32], class: usize) -> usize {
    (0..scores.len())
        .filter(|&i| ranks_ahead(i, scores[i], class, scores[class]))
        .count()
}

/// Checks that `truth` and `scores` describe the same images over `classes` classes.
fn check_inputs(
    classes: usize,
    truth: &[Option<usize>],
    scores: &[Vec<f32>],
) -> Result<(), MetricsError> {
    if classes == 0 {
        return Err(MetricsError::NoClasses);
    }
    if truth.is_empty() {
        return Err(MetricsError::Empty);
    }
    if truth.len() != scores.len() {
        return Err(MetricsError::LengthMismatch {
            truths: truth.len(),
            rows: scores.len(),
        });
    }
    for (image, (t, row)) in truth.iter().zip(scores).enumerate() {
        if row.len() != classes {
            return Err(MetricsError::ScoreWidth {
                image,
                found: row.len(),
                expected: classes,
            });
        }
        if let Some(class) = *t {
            if class >= classes {
                return Err(MetricsError::ClassOutOfRange {
                    image,
                    class,
                    classes,
                });
            }
        }
    }
    Ok(())
}

/// The metrics of one classifier: `truth[i]` is image i's class index into `classes`,
/// `scores[i]` its score for every class (probabilities or logits: only their order
/// matters). The top-1 interval uses `bootstrap` resamples seeded by `seed`.
pub fn metrics(
    classes: &[String],
    truth: &[usize],
    scores: &[Vec<f32>],
    bootstrap: usize,
    seed: u64,
) -> Result<Metrics, MetricsError> {
    let known: Vec<Option<usize>> = truth.iter().map(|&t| Some(t)).collect();
    check_inputs(classes.len(), &known, scores)?;
    let n = truth.len();
    let k = classes.len();
    let mut confusion = vec![vec![0usize; k]; k];
    let mut correct = Vec::with_capacity(n);
    let mut in_top5 = 0usize;
    for (&t, row) in truth.iter().zip(scores) {
        let rank = rank_of(row, t);
        // rank 0 is the argmax; a row is never empty here, so argmax exists.
        let predicted = argmax(row).unwrap_or(0);
        confusion[t][predicted] += 1;
        correct.push(rank == 0);
        in_top5 += usize::from(rank < 5);
    }
    let per_class = per_class_metrics(classes, &confusion);
    let with_support: Vec<f64> = per_class
        .iter()
        .filter(|c| c.support > 0)
        .map(|c| c.f1)
        .collect();
    Ok(Metrics {
        n,
        top1: fraction(correct.iter().filter(|&&c| c).count(), n),
        top1_ci: bootstrap_ci(&correct, bootstrap, seed),
        top5: (k > 5).then(|| fraction(in_top5, n)),
        macro_f1: with_support.iter().sum::<f64>() / with_support.len() as f64,
        per_class,
        confusion,
    })
}

/// `part / whole`, 0 for an empty whole (scikit-learn's `zero_division=0`).
fn fraction(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Precision, recall and F1 of each class from `confusion[true][predicted]`.
fn per_class_metrics(classes: &[String], confusion: &[Vec<usize>]) -> Vec<ClassMetrics> {
    classes
        .iter()
        .enumerate()
        .map(|(c, name)| {
            let hits = confusion[c][c];
            let support: usize = confusion[c].iter().sum();
            let predicted: usize = confusion.iter().map(|row| row[c]).sum();
            let recall = fraction(hits, support);
            let precision = fraction(hits, predicted);
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassMetrics {
                class: name.clone(),
                support,
                recall,
                precision,
                f1,
            }
        })
        .collect()
}

/// 95% bootstrap confidence interval of the fraction of `true` in `correct`: `resamples`
/// resamples of the same size with replacement, drawn by SplitMix64 from `seed`, and the
/// 2.5th and 97.5th percentiles of their means (linear interpolation between order
/// statistics, NumPy's default). `[NaN, NaN]` when there is nothing to resample.
pub fn bootstrap_ci(correct: &[bool], resamples: usize, seed: u64) -> [f64; 2] {
    let n = correct.len();
    if n == 0 || resamples == 0 {
        return [f64::NAN, f64::NAN];
    }
    let mut rng = Rng::new(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            let hits = (0..n).filter(|_| correct[rng.below(n)]).count();
            hits as f64 / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - CONFIDENCE) / 2.0;
    [percentile(&means, tail), percentile(&means, 1.0 - tail)]
}

/// The `q`-quantile (0..=1) of sorted, non-empty `values`, interpolating linearly.
fn percentile(values: &[f64], q: f64) -> f64 {
    let position = q * (values.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    values[below] + (values[above] - values[below]) * (position - below as f64)
}

/// Classification with abstention: an image whose top score is below `threshold` is
/// answered "none of these".
///
/// An image counts as correct when its class is known and it was answered with that class,
/// or when its class is not among the labels (`None`) and it was abstained on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AbstainOutcome {
    /// The top-score threshold below which an image is abstained on.
    pub threshold: f64,
    /// Images answered with a class.
    pub answered: usize,
    /// Images answered "none of these".
    pub abstained: usize,
    /// Answered images whose answer is their true class.
    pub correct_answered: usize,
    /// `correct_answered / answered`; NaN (null in JSON) when nothing was answered.
    #[serde(deserialize_with = "nan_if_null")]
    pub accuracy_answered: f64,
    /// `answered / images`.
    pub coverage: f64,
    /// Correct images: right answers on known classes plus abstentions on unknown ones.
    pub correct: usize,
    /// `correct / images`, over every image, known or not.
    pub accuracy: f64,
}

/// JSON has no NaN: serde_json writes it as `null`, read back here as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The answer given instead of a class when the top probability is below the threshold.
pub const NONE_OF_THESE: &str = "none of these";

/// Whether an image whose top probability is `top` is answered (not abstained on) at
/// `threshold`. Compared in f32, the scores' precision, so that a score equal to the
/// threshold as written (0.7) is answered; a NaN top score is abstained on.
pub fn answers(top: f32, threshold: f64) -> bool {
    top >= threshold as f32
}

/// With abstention: an image whose top score is below `threshold` is answered "none".
/// `truth[i]` is image i's class, or `None` when its class is not among the labels;
/// `scores` are meant to be probabilities, so that `threshold` is a probability.
pub fn abstain(
    truth: &[Option<usize>],
    scores: &[Vec<f32>],
    threshold: f64,
) -> Result<AbstainOutcome, MetricsError> {
    let classes = scores.first().map_or(0, Vec::len);
    check_inputs(classes, truth, scores)?;
    let mut answered = 0;
    let mut correct_answered = 0;
    let mut abstained_unknown = 0;
    for (t, row) in truth.iter().zip(scores) {
        let predicted = argmax(row).unwrap_or(0);
        if answers(row[predicted], threshold) {
            answered += 1;
            correct_answered += usize::from(*t == Some(predicted));
        } else {
            abstained_unknown += usize::from(t.is_none());
        }
    }
    let n = truth.len();
    let correct = correct_answered + abstained_unknown;
    Ok(AbstainOutcome {
        threshold,
        answered,
        abstained: n - answered,
        correct_answered,
        accuracy_answered: if answered == 0 {
            f64::NAN
        } else {
            correct_answered as f64 / answered as f64
        },
        coverage: answered as f64 / n as f64,
        correct,
        accuracy: correct as f64 / n as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(k: usize) -> Vec<String> {
        (0..k).map(|i| format!("class{i}")).collect()
    }

    /// One-hot scores that predict `predicted`.
    fn predicting(predicted: &[usize], k: usize) -> Vec<Vec<f32>> {
        predicted
            .iter()
            .map(|&p| (0..k).map(|c| if c == p { 0.9 } else { 0.01 }).collect())
            .collect()
    }

    /// Truths and predictions that realise `confusion[true][predicted]`.
    fn from_confusion(confusion: &[Vec<usize>]) -> (Vec<usize>, Vec<usize>) {
        let mut truth = Vec::new();
        let mut predicted = Vec::new();
        for (t, row) in confusion.iter().enumerate() {
            for (p, &count) in row.iter().enumerate() {
                truth.extend(std::iter::repeat_n(t, count));
                predicted.extend(std::iter::repeat_n(p, count));
            }
        }
        (truth, predicted)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn a_known_confusion_matrix_gives_hand_computed_metrics() {
        // Rows true, columns predicted:
        //   A: 5 1 0   support 6
        //   B: 2 3 1   support 6
        //   C: 0 0 4   support 4
        // column sums (predicted): A 7, B 4, C 5; diagonal 5 + 3 + 4 = 12 of 16.
        let confusion = vec![vec![5, 1, 0], vec![2, 3, 1], vec![0, 0, 4]];
        let (truth, predicted) = from_confusion(&confusion);
        let m = metrics(&names(3), &truth, &predicting(&predicted, 3), 200, 1).unwrap();
        assert_eq!(m.n, 16);
        assert_eq!(m.confusion, confusion);
        assert!(close(m.top1, 12.0 / 16.0));
        let expected = [
            // (support, recall, precision)
            (6, 5.0 / 6.0, 5.0 / 7.0),
            (6, 3.0 / 6.0, 3.0 / 4.0),
            (4, 4.0 / 4.0, 4.0 / 5.0),
        ];
        let mut f1s = Vec::new();
        for (c, &(support, recall, precision)) in m.per_class.iter().zip(&expected) {
            let f1 = 2.0 * precision * recall / (precision + recall);
            assert_eq!(c.support, support);
            assert!(close(c.recall, recall), "{c:?}");
            assert!(close(c.precision, precision), "{c:?}");
            assert!(close(c.f1, f1), "{c:?}");
            f1s.push(f1);
        }
        // F1: A 2*(5/7)(5/6)/((5/7)+(5/6)) = 10/13, B 0.6, C 8/9.
        assert!(close(f1s[0], 10.0 / 13.0) && close(f1s[1], 0.6) && close(f1s[2], 8.0 / 9.0));
        assert!(close(m.macro_f1, (10.0 / 13.0 + 0.6 + 8.0 / 9.0) / 3.0));
        assert!(m.top5.is_none(), "three classes have no top-5");
        assert!(m.top1_ci[0] <= m.top1 && m.top1 <= m.top1_ci[1]);
    }

    #[test]
    fn unpredicted_and_unsupported_classes_follow_the_zero_division_convention() {
        // Class 2 has no images and is never predicted; class 1 is never predicted.
        let truth = [0, 0, 1, 1];
        let m = metrics(&names(3), &truth, &predicting(&[0, 0, 0, 0], 3), 10, 1).unwrap();
        let c1 = &m.per_class[1];
        assert_eq!((c1.precision, c1.recall, c1.f1), (0.0, 0.0, 0.0));
        assert_eq!(m.per_class[2].support, 0);
        // Macro F1 over the two supported classes: class 0 has P = 0.5, R = 1, F1 = 2/3.
        assert!(close(m.macro_f1, (2.0 / 3.0) / 2.0));
    }

    #[test]
    fn ties_go_to_the_lowest_index_and_top5_counts_ranks() {
        assert_eq!(argmax(&[0.2, 0.5, 0.5, 0.1]), Some(1));
        assert_eq!(argmax(&[f32::NAN, 0.1, 0.3]), Some(2));
        assert_eq!(argmax(&[]), None);
        // Seven classes; the true class 6 is scored sixth best, then fifth best.
        let classes = names(7);
        let sixth = vec![vec![0.7, 0.6, 0.5, 0.4, 0.3, 0.0, 0.2]];
        let fifth = vec![vec![0.7, 0.6, 0.5, 0.4, 0.1, 0.0, 0.2]];
        let m6 = metrics(&classes, &[6], &sixth, 10, 1).unwrap();
        let m5 = metrics(&classes, &[6], &fifth, 10, 1).unwrap();
        assert_eq!((m6.top1, m6.top5), (0.0, Some(0.0)));
        assert_eq!((m5.top1, m5.top5), (0.0, Some(1.0)));
        // A tie with a lower index ranks below it: class 1 tied with class 0 is not top-1.
        let tied = metrics(&names(2), &[1], &[vec![0.5, 0.5]], 10, 1).unwrap();
        assert_eq!(tied.top1, 0.0);
    }

    #[test]
    fn top5_is_none_up_to_five_classes() {
        for k in 1..=5 {
            let m = metrics(&names(k), &[0], &predicting(&[0], k), 10, 1).unwrap();
            assert!(m.top5.is_none(), "{k} classes");
        }
        let m = metrics(&names(6), &[0], &predicting(&[0], 6), 10, 1).unwrap();
        assert_eq!(m.top5, Some(1.0));
    }

    #[test]
    fn bootstrap_of_all_correct_is_one_and_of_half_contains_half_and_narrows() {
        assert_eq!(bootstrap_ci(&[true; 50], 500, 3), [1.0, 1.0]);
        assert_eq!(bootstrap_ci(&[false; 50], 500, 3), [0.0, 0.0]);
        let half = |n: usize| -> Vec<bool> { (0..n).map(|i| i % 2 == 0).collect() };
        let small = bootstrap_ci(&half(40), 1000, 5);
        let large = bootstrap_ci(&half(1000), 1000, 5);
        assert!(small[0] < 0.5 && 0.5 < small[1], "{small:?}");
        assert!(large[0] < 0.5 && 0.5 < large[1], "{large:?}");
        let width = |ci: [f64; 2]| ci[1] - ci[0];
        assert!(width(large) < width(small) / 3.0, "{small:?} {large:?}");
        // The normal approximation's half-width at n = 1000 is 1.96 * sqrt(0.25 / 1000) = 0.031.
        assert!((width(large) / 2.0 - 0.031).abs() < 0.006, "{large:?}");
    }

    #[test]
    fn seeded_results_repeat_and_seeds_differ() {
        let data: Vec<bool> = (0..60).map(|i| i % 3 != 0).collect();
        assert_eq!(bootstrap_ci(&data, 300, 9), bootstrap_ci(&data, 300, 9));
        assert_ne!(bootstrap_ci(&data, 300, 9), bootstrap_ci(&data, 300, 10));
        assert!(bootstrap_ci(&[], 300, 9)[0].is_nan());
        assert!(bootstrap_ci(&data, 0, 9)[1].is_nan());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let s = predicting(&[0], 2);
        assert_eq!(
            metrics(&names(2), &[], &[], 10, 1).unwrap_err(),
            MetricsError::Empty
        );
        assert_eq!(
            metrics(&[], &[0], &s, 10, 1).unwrap_err(),
            MetricsError::NoClasses
        );
        assert!(matches!(
            metrics(&names(2), &[0, 1], &s, 10, 1),
            Err(MetricsError::LengthMismatch { .. })
        ));
        assert!(matches!(
            metrics(&names(3), &[0], &s, 10, 1),
            Err(MetricsError::ScoreWidth { .. })
        ));
        assert!(matches!(
            metrics(&names(2), &[2], &s, 10, 1),
            Err(MetricsError::ClassOutOfRange { .. })
        ));
        assert_eq!(abstain(&[], &[], 0.5).unwrap_err(), MetricsError::NoClasses);
    }

    #[test]
    fn abstention_counts_right_answers_and_abstentions_on_unknown_classes() {
        let truth = [Some(0), Some(1), Some(0), None, None];
        let scores = vec![
            vec![0.9, 0.1], // known, confident, right
            vec![0.8, 0.2], // known, confident, wrong
            vec![0.4, 0.6], // known, unsure (0.6 < 0.7): abstained, so wrong
            vec![0.3, 0.7], // unknown, answered at exactly the threshold: wrong
            vec![0.5, 0.5], // unknown, unsure: abstained, so right
        ];
        let outcome = abstain(&truth, &scores, 0.7).unwrap();
        assert_eq!(
            outcome,
            AbstainOutcome {
                threshold: 0.7,
                answered: 3,
                abstained: 2,
                correct_answered: 1,
                accuracy_answered: 1.0 / 3.0,
                coverage: 3.0 / 5.0,
                correct: 2,
                accuracy: 2.0 / 5.0,
            }
        );
        // Threshold 0 answers everything: plain top-1 over the known images, and every
        // unknown image is wrong.
        let all = abstain(&truth, &scores, 0.0).unwrap();
        assert_eq!((all.answered, all.correct, all.coverage), (5, 1, 1.0));
        // Above every score nothing is answered.
        let none = abstain(&truth, &scores, 1.5).unwrap();
        assert_eq!((none.answered, none.correct), (0, 2));
        assert!(none.accuracy_answered.is_nan());
        // JSON writes the NaN as null and reads it back as NaN.
        let json = serde_json::to_string(&none).unwrap();
        assert!(json.contains("\"accuracy_answered\":null"), "{json}");
        let back: AbstainOutcome = serde_json::from_str(&json).unwrap();
        assert!(back.accuracy_answered.is_nan());
    }
}
