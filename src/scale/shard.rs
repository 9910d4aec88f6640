//! `--shard I/N` and `--shard auto`: which part of the input list this process takes.

use std::ops::Range;

use super::ScaleError;

/// Shard `index` of `count` (zero-based, as Slurm array indices from 0 and Kubernetes'
/// completion indices are).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// Which shard, from 0.
    pub index: usize,
    /// How many shards.
    pub count: usize,
}

impl Shard {
    /// The whole list as one shard.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// From `--shard` (`I/N` or `auto`) and `--shard-count`, reading the scheduler's
    /// variables from the process environment for `auto`.
    pub fn parse(spec: &str, shard_count: Option<usize>) -> Result<Self, ScaleError> {
        Self::parse_with_env(spec, shard_count, &|name| std::env::var(name).ok())
    }

    /// As [`Shard::parse`], with the environment given as a lookup function.
    pub fn parse_with_env(
        spec: &str,
        shard_count: Option<usize>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ScaleError> {
        let fail = |why: String| ScaleError::Shard {
            spec: spec.to_string(),
            why,
        };
        let shard = if spec == "auto" {
            from_scheduler(shard_count, env).map_err(fail)?
        } else {
            if shard_count.is_some() {
                return Err(fail("--shard-count goes with --shard auto".into()));
            }
            let (i, n) = spec
                .split_once('/')
                .ok_or_else(|| fail("expected I/N (e.g. 0/4) or auto".into()))?;
            Shard {
                index: number(i).map_err(&fail)?,
                count: number(n).map_err(&fail)?,
            }
        };
        shard.check().map_err(fail)
    }

    fn check(self) -> Result<Self, String> {
        if self.count == 0 {
            Err("the number of shards must be at least 1".into())
        } else if self.index >= self.count {
            Err(format!(
                "shard {} is out of range: shards are numbered 0 to {}",
                self.index,
                self.count - 1
            ))
        } else {
            Ok(self)
        }
    }

    /// The positions of this shard's inputs in a list of `len`: the `index`-th of
    /// `count` contiguous runs whose lengths differ by at most one.
    pub fn range(&self, len: usize) -> Range<usize> {
        let at = |k: usize| (k as u128 * len as u128 / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }

    /// The name stem of this shard's files: `part-00001-of-00004`.
    pub fn stem(&self) -> String {
        format!("part-{:05}-of-{:05}", self.index, self.count)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

fn number(s: &str) -> Result<usize, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))
}

/// The shard a scheduler gave this process: a Slurm array task, or a Kubernetes
/// Indexed Job's completion index.
fn from_scheduler(
    shard_count: Option<usize>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Shard, String> {
    let var = |name: &str| -> Result<Option<usize>, String> {
        env(name)
            .filter(|v| !v.is_empty())
            .map(|v| number(&v).map_err(|e| format!("{name}: {e}")))
            .transpose()
    };
    if let Some(id) = var("SLURM_ARRAY_TASK_ID")? {
        // Arrays may start anywhere and step (--array=1-9:2): shards are the tasks'
        // positions in the array.
        let min = var("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let step = var("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
        let count = match shard_count {
            Some(n) => n,
            None => var("SLURM_ARRAY_TASK_COUNT")?
                .ok_or("SLURM_ARRAY_TASK_COUNT is not set: give --shard-count")?,
        };
        // The task's position in the array, when its id is one of the array's.
        let index = id
            .checked_sub(min)
            .filter(|offset| offset % step == 0)
            .map(|offset| offset / step)
            .filter(|&index| index < count);
        let Some(index) = index else {
            return Err(format!(
                "SLURM_ARRAY_TASK_ID {id} is not one of {count} evenly spaced tasks from {min} by {step} (SLURM_ARRAY_TASK_MIN, _STEP, _COUNT): give the array as --array=A-B or A-B:S, or --shard I/N yourself"
            ));
        };
        return Ok(Shard { index, count });
    }
    if let Some(index) = var("JOB_COMPLETION_INDEX")? {
        let count = shard_count
            .ok_or("JOB_COMPLETION_INDEX is set: give --shard-count (the Job's completions)")?;
        if index >= count {
            return Err(format!(
                "JOB_COMPLETION_INDEX {index} is not below --shard-count {count}: give the Job's completions as --shard-count"
            ));
        }
        return Ok(Shard { index, count });
    }
    Err(
        "neither SLURM_ARRAY_TASK_ID (a Slurm job array) nor JOB_COMPLETION_INDEX \
         (a Kubernetes Indexed Job) is set: give --shard I/N"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn parse(
        spec: &str,
        count: Option<usize>,
        vars: &'static [(&str, &str)],
    ) -> Result<Shard, String> {
        Shard::parse_with_env(spec, count, &env(vars)).map_err(|e| e.to_string())
    }

    #[test]
    fn explicit_shards_are_checked() {
        assert_eq!(parse("2/4", None, &[]), Ok(Shard { index: 2, count: 4 }));
        assert!(parse("4/4", None, &[]).unwrap_err().contains("0 to 3"));
        assert!(parse("0/0", None, &[]).unwrap_err().contains("at least 1"));
        assert!(parse("x/4", None, &[])
            .unwrap_err()
            .contains("whole number"));
        assert!(parse("3", None, &[]).unwrap_err().contains("I/N"));
        assert!(parse("1/4", Some(4), &[]).unwrap_err().contains("auto"));
    }

    #[test]
    fn auto_reads_slurm_arrays_wherever_they_start() {
        let plain = &[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ];
        assert_eq!(parse("auto", None, plain), Ok(Shard { index: 2, count: 3 }));
        let from_one = &[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ];
        assert_eq!(
            parse("auto", None, from_one),
            Ok(Shard { index: 2, count: 3 })
        );
        let stepped = &[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "5"),
        ];
        assert_eq!(
            parse("auto", None, stepped),
            Ok(Shard { index: 2, count: 5 })
        );
        let no_count = &[("SLURM_ARRAY_TASK_ID", "0")];
        assert!(parse("auto", None, no_count)
            .unwrap_err()
            .contains("--shard-count"));
        assert_eq!(
            parse("auto", Some(2), no_count),
            Ok(Shard { index: 0, count: 2 })
        );
    }

    #[test]
    fn auto_reads_kubernetes_completion_indices_with_a_count() {
        let k8s = &[("JOB_COMPLETION_INDEX", "7")];
        assert_eq!(
            parse("auto", Some(8), k8s),
            Ok(Shard { index: 7, count: 8 })
        );
        assert!(parse("auto", None, k8s)
            .unwrap_err()
            .contains("--shard-count"));
        assert!(parse("auto", Some(7), k8s)
            .unwrap_err()
            .contains("JOB_COMPLETION_INDEX 7 is not below --shard-count 7"));
        // A gapped Slurm array (--array=0,4,7): its ids are not one range by a step.
        let gapped = &[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "7"),
            ("SLURM_ARRAY_TASK_STEP", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ];
        assert!(parse("auto", None, gapped)
            .unwrap_err()
            .contains("SLURM_ARRAY_TASK_ID 4 is not one of 3 evenly spaced tasks"));
        assert!(parse("auto", None, &[]).unwrap_err().contains("neither"));
    }

    #[test]
    fn ranges_cover_the_list_once_in_order() {
        for len in [0, 1, 2, 10, 203] {
            for count in [1, 2, 3, 7, 16] {
                let mut next = 0;
                for index in 0..count {
                    let r = Shard { index, count }.range(len);
                    assert_eq!(r.start, next);
                    assert!(r.len() <= len / count + 1 && r.len() >= len / count);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }
}
