//! Which part of a staged run one process does: shard K of N.
//!
//! A cluster runs the same command N times and tells each copy its index through the
//! environment (Slurm job arrays, Kubernetes Indexed Jobs, torchrun). The count is never taken
//! from there: Slurm's array size is 2 after a resubmission of `--array=3,7`, and Kubernetes
//! exports no count at all, so N is always given on the command line.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Shard `index` (0-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// 0-based index, below `count`.
    pub index: usize,
    /// How many shards the stage is split into.
    pub count: usize,
}

/// Environment variables that carry a shard index, in the order they are looked at.
pub const INDEX_VARIABLES: [&str; 3] = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX", "RANK"];

impl Shard {
    /// The whole stage in one process.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` of `count`.
    ///
    /// # Errors
    /// When `count` is 0 or `index` is not below it.
    pub fn new(index: usize, count: usize) -> Result<Self, String> {
        if count == 0 {
            return Err("the shard count must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "shard index {index} is not below the count {count} (indices are 0-based)"
            ));
        }
        Ok(Shard { index, count })
    }

    /// Shard of `count` whose index the environment gives (`lookup` reads a variable), from
    /// the first of [`INDEX_VARIABLES`] that is set.
    ///
    /// # Errors
    /// When none is set, or the one set is not an index below `count`.
    pub fn from_environment(
        count: usize,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let (name, value) = INDEX_VARIABLES
            .iter()
            .find_map(|name| lookup(name).map(|value| (*name, value)))
            .ok_or_else(|| {
                format!(
                    "--shards {count} needs the shard index: give --shard K/{count}, or run where one of {} is set",
                    INDEX_VARIABLES.join(", ")
                )
            })?;
        let index = value
            .trim()
            .parse()
            .map_err(|_| format!("{name}={value:?} is not a shard index"))?;
        Shard::new(index, count).map_err(|e| format!("{name}: {e}"))
    }

    /// `shard-00003-of-00008`: file names that sort by index.
    pub fn file_stem(self) -> String {
        format!("shard-{:05}-of-{:05}", self.index, self.count)
    }

    /// The shard count in a file name made from [`Shard::file_stem`]
    /// (`shard-00003-of-00008.json` gives 8).
    pub fn count_in_file_name(name: &str) -> Option<usize> {
        let rest = name.strip_prefix("shard-")?.split_once("-of-")?.1;
        rest.split('.').next()?.parse().ok()
    }

    /// Contiguous, balanced ranges: the part of `0..len` for this shard when the items weigh
    /// `weight(i)`, each shard getting about `1/count` of the total weight.
    pub fn split(self, len: usize, weight: impl Fn(usize) -> usize) -> std::ops::Range<usize> {
        let total: u128 = (0..len).map(|i| weight(i) as u128).sum();
        let mut starts = vec![0; self.count + 1];
        let mut before = 0u128;
        let mut k = 1;
        for i in 0..len {
            // Item i starts shard k once the weight before it reaches k/count of the total.
            while k < self.count && before * self.count as u128 >= total * k as u128 {
                starts[k] = i;
                k += 1;
            }
            before += weight(i) as u128;
        }
        while k <= self.count {
            starts[k] = len;
            k += 1;
        }
        starts[self.index]..starts[self.index + 1]
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    /// `K/N`, e.g. `3/8` (K from 0 to N-1).
    fn from_str(s: &str) -> Result<Self, String> {
        let (index, count) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not K/N (e.g. 3/8)"))?;
        let number = |part: &str| {
            part.trim()
                .parse::<usize>()
                .map_err(|_| format!("{s:?} is not K/N (e.g. 3/8)"))
        };
        Shard::new(number(index)?, number(count)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_k_of_n_and_refuses_the_rest() {
        assert_eq!("3/8".parse(), Ok(Shard { index: 3, count: 8 }));
        assert_eq!("0/1".parse(), Ok(Shard::WHOLE));
        for bad in ["8/8", "1/0", "3", "a/8", "3/b", "-1/4"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert_eq!(Shard::new(3, 8).unwrap().to_string(), "3/8");
        assert_eq!(
            Shard::new(3, 8).unwrap().file_stem(),
            "shard-00003-of-00008"
        );
    }

    #[test]
    fn the_index_comes_from_the_first_variable_set() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let slurm = Shard::from_environment(8, env(&[("SLURM_ARRAY_TASK_ID", "7"), ("RANK", "1")]));
        assert_eq!(slurm, Ok(Shard { index: 7, count: 8 }));
        let kubernetes = Shard::from_environment(4, env(&[("JOB_COMPLETION_INDEX", "2")]));
        assert_eq!(kubernetes, Ok(Shard { index: 2, count: 4 }));
        let torchrun = Shard::from_environment(2, env(&[("RANK", "1")]));
        assert_eq!(torchrun, Ok(Shard { index: 1, count: 2 }));
        let none = Shard::from_environment(2, env(&[])).unwrap_err();
        assert!(none.contains("--shard K/2"), "{none}");
        let past = Shard::from_environment(2, env(&[("SLURM_ARRAY_TASK_ID", "2")])).unwrap_err();
        assert!(past.contains("SLURM_ARRAY_TASK_ID"), "{past}");
    }

    #[test]
    fn split_covers_everything_once_and_balances_weight() {
        for count in 1..6 {
            let weights = [5, 1, 1, 1, 9, 2, 2, 3, 1, 1, 4];
            let mut next = 0;
            for index in 0..count {
                let range = Shard::new(index, count)
                    .unwrap()
                    .split(weights.len(), |i| weights[i]);
                assert_eq!(range.start, next, "{count} shards: contiguous");
                next = range.end;
            }
            assert_eq!(next, weights.len());
        }
        let even = Shard::new(1, 2).unwrap().split(10, |_| 1);
        assert_eq!(even, 5..10);
        // More shards than items: some shards are empty, none overlap.
        let ranges: Vec<_> = (0..4)
            .map(|k| Shard::new(k, 4).unwrap().split(2, |_| 1))
            .collect();
        assert_eq!(ranges.iter().map(|r| r.len()).sum::<usize>(), 2);
    }
}
