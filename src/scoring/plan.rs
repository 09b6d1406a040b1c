//! Packing sequences into decode batches: a pure function, testable without a model.
//!
//! The plan is made from the whole dataset up front, so the same inputs always give the same
//! batch layout (llama.cpp's numbers depend on it) and a run's work is known before it starts.

use std::cmp::Reverse;
use std::collections::{BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

/// The limits of one decode call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Most tokens in one batch.
    pub tokens: usize,
    /// Most sequences in one batch.
    pub sequences: usize,
}

/// Groups sequences (given by their lengths) into batches within `capacity`, longest first,
/// so sequences of similar length share a decode. Each batch lists sequence indices.
///
/// # Panics
/// When a single sequence is longer than `capacity.tokens`; callers check lengths first.
pub fn pack(lengths: &[usize], capacity: Capacity) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut used = 0;
    for i in order {
        assert!(
            lengths[i] <= capacity.tokens,
            "sequence {i} exceeds the batch"
        );
        match batches.last_mut() {
            Some(batch)
                if used + lengths[i] <= capacity.tokens && batch.len() < capacity.sequences =>
            {
                batch.push(i);
                used += lengths[i];
            }
            _ => {
                batches.push(vec![i]);
                used = lengths[i];
            }
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_within_capacity_and_covers_every_sequence_once() {
        let lengths = [5, 1, 9, 3, 3, 7, 2, 10, 4];
        let capacity = Capacity {
            tokens: 10,
            sequences: 3,
        };
        let batches = pack(&lengths, capacity);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for batch in &batches {
            assert!(batch.len() <= 3);
            assert!(batch.iter().map(|&i| lengths[i]).sum::<usize>() <= 10);
        }
        assert_eq!(batches[0], [7], "longest first");
        assert_eq!(pack(&lengths, capacity), batches, "deterministic");
    }
}

/// How a sample's one-shot pass is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OneShot {
    /// No one-shot pass (the sample is unscorable).
    Skip,
    /// Continue a copy of `parent`'s zero-shot KV cache with `suffix_len` tokens (SEP block_i).
    Reuse {
        /// The neighbour whose zero-shot sequence is the prefix.
        parent: usize,
        /// Tokens decoded after the prefix.
        suffix_len: usize,
    },
    /// Decode the whole one-shot sequence (`len` tokens) from scratch.
    Whole {
        /// Tokens in the sequence.
        len: usize,
    },
}

/// What the scheduler needs to know about one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Tokens of the zero-shot sequence; `None` when it is not decoded.
    pub zero_len: Option<usize>,
    /// The one-shot pass.
    pub one_shot: OneShot,
    /// Tokens of the response-only sequence (IFD's L(y)); `None` when it is not decoded.
    pub alone_len: Option<usize>,
}

/// A unit of decoding work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Sample i's zero-shot sequence.
    ZeroShot(usize),
    /// Sample i's whole one-shot sequence.
    OneShotWhole(usize),
    /// Sample i's one-shot suffix, after its neighbour's copied prefix.
    OneShotSuffix(usize),
    /// Sample i's responses alone.
    ResponseOnly(usize),
}

/// One sequence in a decode step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// What is decoded.
    pub work: Work,
    /// The KV slot (sequence id) it is decoded in.
    pub slot: usize,
    /// Slot whose cache is copied into `slot` before the decode.
    pub copy_from: Option<usize>,
}

/// One `llama_decode` call and the slots that can be cleared after it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Step {
    /// Sequences decoded together.
    pub entries: Vec<Entry>,
    /// Slots whose cache is no longer needed after this step.
    pub free_after: Vec<usize>,
    /// No cache is needed after this step: the losses so far are saved here, and a resumed
    /// run starts from the next step with an empty cache, exactly as the uninterrupted run
    /// continues.
    pub checkpoint: bool,
}

/// The limits every step respects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most tokens decoded per step.
    pub tokens: usize,
    /// KV slots (sequence ids), each holding one sequence's cache.
    pub slots: usize,
    /// Most slots held by parents waiting for their children; fewer than `slots`.
    pub held: usize,
    /// Tokens decoded between checkpoints. Once this many are decoded, no new parent starts
    /// until the held ones are done, so the cache empties and the run can stop there.
    pub checkpoint_tokens: usize,
}

/// Plans every decode of a run up front, so the batch layout (and with it llama.cpp's exact
/// numbers) depends only on the inputs and the limits.
///
/// Each step first continues the children of parents already decoded (freeing their slots
/// soonest), then starts new parents, then fills the remaining tokens and slots with
/// independent sequences, largest first. A parent's slot is held from its zero-shot decode
/// until its last child has copied it, whatever its number of children, so a hub neighbour
/// costs one slot, not one per child. Every `limits.checkpoint_tokens` tokens the held
/// parents drain to a checkpoint step; the last step is always one.
///
/// # Panics
/// When a sequence is longer than `limits.tokens`, or `limits.held >= limits.slots` while any
/// sample reuses a prefix.
pub fn schedule(shapes: &[Shape], limits: Limits) -> Vec<Step> {
    let mut planner = Planner::new(shapes, limits);
    let mut steps = Vec::new();
    while !planner.finished() {
        steps.push(planner.next_step());
    }
    steps
}

/// The state of planning between steps.
struct Planner<'a> {
    shapes: &'a [Shape],
    limits: Limits,
    /// Each sample's children: the samples whose one-shot pass continues its zero-shot cache.
    children: Vec<Vec<usize>>,
    /// Parents not started yet, in dataset order.
    parents: VecDeque<usize>,
    /// Independent sequences not decoded yet, as (tokens, reversed work key): the largest
    /// first, ties by work order.
    independent: BTreeSet<(usize, Reverse<usize>)>,
    /// Parents decoded, holding their slot until their last child has copied it.
    held: VecDeque<Held>,
    free_slots: BTreeSet<usize>,
    since_checkpoint: usize,
}

struct Held {
    parent: usize,
    slot: usize,
    next_child: usize,
}

/// One step being filled: its entries, and the tokens and slots it has left.
struct Filling {
    step: Step,
    tokens: usize,
    /// Slots used by this step only, free again after it.
    temporary: Vec<usize>,
}

impl<'a> Planner<'a> {
    fn new(shapes: &'a [Shape], limits: Limits) -> Self {
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); shapes.len()];
        for (i, shape) in shapes.iter().enumerate() {
            if let OneShot::Reuse { parent, .. } = shape.one_shot {
                assert!(
                    shapes[parent].zero_len.is_some(),
                    "sample {i} reuses an undecoded parent {parent}"
                );
                children[parent].push(i);
            }
        }
        let reuses = children.iter().any(|c| !c.is_empty());
        assert!(
            !reuses || limits.held < limits.slots,
            "reuse needs a slot besides the held ones"
        );
        let parents = (0..shapes.len())
            .filter(|&k| !children[k].is_empty())
            .collect();
        let mut independent = BTreeSet::new();
        let mut add = |work: Work| {
            let len = tokens_of(shapes, work);
            assert!(len <= limits.tokens, "a sequence exceeds the step's tokens");
            independent.insert((len, Reverse(work_key(work))));
        };
        for (i, shape) in shapes.iter().enumerate() {
            if shape.zero_len.is_some() && children[i].is_empty() {
                add(Work::ZeroShot(i));
            }
            if let OneShot::Whole { .. } = shape.one_shot {
                add(Work::OneShotWhole(i));
            }
            if shape.alone_len.is_some() {
                add(Work::ResponseOnly(i));
            }
        }
        Planner {
            shapes,
            limits,
            children,
            parents,
            independent,
            held: VecDeque::new(),
            free_slots: (0..limits.slots).collect(),
            since_checkpoint: 0,
        }
    }

    fn finished(&self) -> bool {
        self.parents.is_empty() && self.independent.is_empty() && self.held.is_empty()
    }

    fn next_step(&mut self) -> Step {
        let draining = self.since_checkpoint >= self.limits.checkpoint_tokens.max(1);
        let mut filling = Filling {
            step: Step::default(),
            tokens: self.limits.tokens,
            temporary: Vec::new(),
        };
        self.continue_children(&mut filling);
        if !draining {
            self.start_parents(&mut filling);
        }
        self.add_independent(&mut filling);
        self.close(filling)
    }

    /// First, children of decoded parents, each in a slot of its own with a copy of the
    /// parent's cache; a parent whose last child is placed frees its slot after the step.
    fn continue_children(&mut self, filling: &mut Filling) {
        for h in self.held.iter_mut() {
            while let Some(&child) = self.children[h.parent].get(h.next_child) {
                let need = tokens_of(self.shapes, Work::OneShotSuffix(child));
                let Some(&slot) = self.free_slots.first() else {
                    break;
                };
                if need > filling.tokens {
                    break;
                }
                self.free_slots.remove(&slot);
                filling.temporary.push(slot);
                filling.tokens -= need;
                filling.step.entries.push(Entry {
                    work: Work::OneShotSuffix(child),
                    slot,
                    copy_from: Some(h.slot),
                });
                h.next_child += 1;
            }
        }
        let children = &self.children;
        self.held.retain(|h| {
            let done = h.next_child == children[h.parent].len();
            if done {
                filling.step.free_after.push(h.slot);
            }
            !done
        });
    }

    /// Second, new parents, each holding its slot until its children are done; one slot
    /// always stays free for a child.
    fn start_parents(&mut self, filling: &mut Filling) {
        while self.held.len() + filling.step.free_after.len() < self.limits.held {
            let Some(&parent) = self.parents.front() else {
                break;
            };
            let need = tokens_of(self.shapes, Work::ZeroShot(parent));
            let Some(&slot) = self.free_slots.first() else {
                break;
            };
            if need > filling.tokens || self.free_slots.len() < 2 {
                break;
            }
            self.parents.pop_front();
            self.free_slots.remove(&slot);
            filling.tokens -= need;
            filling.step.entries.push(Entry {
                work: Work::ZeroShot(parent),
                slot,
                copy_from: None,
            });
            self.held.push_back(Held {
                parent,
                slot,
                next_child: 0,
            });
        }
    }

    /// Last, independent sequences in the slots and tokens left, the largest that fits first.
    fn add_independent(&mut self, filling: &mut Filling) {
        while let Some(&slot) = self.free_slots.first() {
            let Some(&item) = self
                .independent
                .range(..(filling.tokens + 1, Reverse(usize::MAX)))
                .next_back()
            else {
                break;
            };
            self.independent.remove(&item);
            self.free_slots.remove(&slot);
            filling.temporary.push(slot);
            filling.tokens -= item.0;
            filling.step.entries.push(Entry {
                work: work_of(item.1 .0),
                slot,
                copy_from: None,
            });
        }
    }

    /// Frees the step's slots and makes it a checkpoint when no parent is held and enough
    /// tokens were decoded since the last one (or nothing is left).
    fn close(&mut self, filling: Filling) -> Step {
        let Filling {
            mut step,
            tokens,
            temporary,
        } = filling;
        assert!(!step.entries.is_empty(), "the schedule made no progress");
        step.free_after.extend(&temporary);
        self.free_slots.extend(step.free_after.iter().copied());
        step.free_after.sort_unstable();
        self.since_checkpoint += self.limits.tokens - tokens;
        if self.held.is_empty()
            && (self.since_checkpoint >= self.limits.checkpoint_tokens.max(1) || self.finished())
        {
            step.checkpoint = true;
            self.since_checkpoint = 0;
        }
        step
    }
}

/// A fingerprint of a plan, so saved losses are only ever reused by the plan that made them.
pub fn digest(steps: &[Step]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for step in steps {
        for e in &step.entries {
            let copy = e.copy_from.map_or(u64::MAX, |s| s as u64);
            for n in [work_key(e.work) as u64, e.slot as u64, copy] {
                hasher.update(n.to_le_bytes());
            }
        }
        hasher.update([u8::from(step.checkpoint)]);
        for &slot in &step.free_after {
            hasher.update((slot as u64).to_le_bytes());
        }
        hasher.update(u64::MAX.to_le_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Tokens decoded for `work`: the whole sequence, or only the suffix after a reused prefix.
///
/// # Panics
/// When `work` does not match its sample's shape (a plan always matches).
pub fn tokens_of(shapes: &[Shape], work: Work) -> usize {
    match work {
        Work::ZeroShot(i) => shapes[i].zero_len.expect("decoded zero-shot"),
        Work::OneShotWhole(i) => match shapes[i].one_shot {
            OneShot::Whole { len } => len,
            _ => unreachable!("a whole one-shot has its length"),
        },
        Work::OneShotSuffix(i) => match shapes[i].one_shot {
            OneShot::Reuse { suffix_len, .. } => suffix_len,
            _ => unreachable!("a suffix continues its parent"),
        },
        Work::ResponseOnly(i) => shapes[i].alone_len.expect("decoded response-only"),
    }
}

/// Works as sortable keys (kind in the low bits).
fn work_key(work: Work) -> usize {
    match work {
        Work::ZeroShot(i) => 4 * i,
        Work::OneShotWhole(i) => 4 * i + 1,
        Work::OneShotSuffix(i) => 4 * i + 2,
        Work::ResponseOnly(i) => 4 * i + 3,
    }
}

fn work_of(key: usize) -> Work {
    match key % 4 {
        0 => Work::ZeroShot(key / 4),
        1 => Work::OneShotWhole(key / 4),
        2 => Work::OneShotSuffix(key / 4),
        _ => Work::ResponseOnly(key / 4),
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    fn check(shapes: &[Shape], limits: Limits) -> Vec<Step> {
        let steps = schedule(shapes, limits);
        let mut decoded_at = std::collections::HashMap::new();
        let mut holding: std::collections::HashMap<usize, usize> = Default::default(); // slot -> parent
        let mut seen = Vec::new();
        for (t, step) in steps.iter().enumerate() {
            let mut slots = std::collections::HashSet::new();
            let mut tokens = 0;
            for e in &step.entries {
                assert!(e.slot < limits.slots);
                assert!(slots.insert(e.slot), "slot used twice in one step");
                assert!(!holding.contains_key(&e.slot), "slot {} still held", e.slot);
                let (i, len) = match e.work {
                    Work::ZeroShot(i) => (i, shapes[i].zero_len.unwrap()),
                    Work::OneShotWhole(i) => match shapes[i].one_shot {
                        OneShot::Whole { len } => (i, len),
                        _ => panic!(),
                    },
                    Work::ResponseOnly(i) => (i, shapes[i].alone_len.unwrap()),
                    Work::OneShotSuffix(i) => match shapes[i].one_shot {
                        OneShot::Reuse { parent, suffix_len } => {
                            let from = e.copy_from.unwrap();
                            assert_eq!(
                                holding.get(&from),
                                Some(&parent),
                                "copy from the parent's slot"
                            );
                            assert!(decoded_at[&parent] < t, "parent decoded before child");
                            (i, suffix_len)
                        }
                        _ => panic!(),
                    },
                };
                tokens += len;
                seen.push(e.work);
                if let Work::ZeroShot(i) = e.work {
                    decoded_at.insert(i, t);
                }
                let _ = i;
            }
            assert!(tokens <= limits.tokens);
            for e in &step.entries {
                if let Work::ZeroShot(i) = e.work {
                    if !step.free_after.contains(&e.slot) {
                        holding.insert(e.slot, i);
                    }
                }
            }
            let held_now = holding.len();
            assert!(held_now <= limits.held);
            for s in &step.free_after {
                holding.remove(s);
            }
            if step.checkpoint {
                assert!(holding.is_empty(), "nothing is held across checkpoint {t}");
            }
        }
        assert!(holding.is_empty(), "every slot is freed at the end");
        assert!(
            steps.last().is_none_or(|s| s.checkpoint),
            "the last step is a checkpoint"
        );
        // Every piece of work exactly once.
        let mut expected = Vec::new();
        for (i, s) in shapes.iter().enumerate() {
            if s.zero_len.is_some() {
                expected.push(Work::ZeroShot(i));
            }
            match s.one_shot {
                OneShot::Skip => {}
                OneShot::Reuse { .. } => expected.push(Work::OneShotSuffix(i)),
                OneShot::Whole { .. } => expected.push(Work::OneShotWhole(i)),
            }
            if s.alone_len.is_some() {
                expected.push(Work::ResponseOnly(i));
            }
        }
        let key = |w: &Work| work_key(*w);
        seen.sort_by_key(key);
        expected.sort_by_key(key);
        assert_eq!(seen, expected);
        steps
    }

    #[test]
    fn parents_before_children_within_limits_and_each_work_once() {
        // Sample 0 is a hub: the neighbour of 1..=6. 7 and 8 are each other's neighbours.
        // 9 has a truncated example (whole), 10 is unscorable.
        let mut shapes: Vec<Shape> = (0..=6)
            .map(|i| Shape {
                zero_len: Some(20 + i),
                one_shot: OneShot::Reuse {
                    parent: 0,
                    suffix_len: 21 + i,
                },
                alone_len: None,
            })
            .collect();
        shapes[0].one_shot = OneShot::Reuse {
            parent: 1,
            suffix_len: 21,
        };
        shapes.push(Shape {
            zero_len: Some(30),
            one_shot: OneShot::Reuse {
                parent: 8,
                suffix_len: 31,
            },
            alone_len: None,
        });
        shapes.push(Shape {
            zero_len: Some(40),
            one_shot: OneShot::Reuse {
                parent: 7,
                suffix_len: 41,
            },
            alone_len: None,
        });
        shapes.push(Shape {
            zero_len: Some(50),
            one_shot: OneShot::Whole { len: 90 },
            alone_len: None,
        });
        shapes.push(Shape {
            zero_len: None,
            one_shot: OneShot::Skip,
            alone_len: None,
        });
        // Response-only passes (IFD) are independent sequences.
        shapes[2].alone_len = Some(15);
        shapes[9].alone_len = Some(60);
        for limits in [
            Limits {
                tokens: 100,
                slots: 2,
                held: 1,
                checkpoint_tokens: usize::MAX,
            },
            Limits {
                tokens: 100,
                slots: 4,
                held: 2,
                checkpoint_tokens: usize::MAX,
            },
            Limits {
                tokens: 1000,
                slots: 8,
                held: 4,
                checkpoint_tokens: usize::MAX,
            },
            Limits {
                tokens: 100,
                slots: 4,
                held: 2,
                checkpoint_tokens: 1,
            },
        ] {
            let steps = check(&shapes, limits);
            assert_eq!(schedule(&shapes, limits), steps, "deterministic");
            assert_eq!(digest(&schedule(&shapes, limits)), digest(&steps));
        }
    }

    #[test]
    fn checkpoints_come_at_the_asked_interval_and_change_the_digest() {
        // A chain of neighbours: every sample is the parent of the next.
        let shapes: Vec<Shape> = (0..60)
            .map(|i| Shape {
                zero_len: Some(10 + i % 5),
                one_shot: OneShot::Reuse {
                    parent: (i + 1) % 60,
                    suffix_len: 12 + i % 3,
                },
                alone_len: None,
            })
            .collect();
        let limits = |checkpoint_tokens| Limits {
            tokens: 64,
            slots: 4,
            held: 2,
            checkpoint_tokens,
        };
        let rare = check(&shapes, limits(usize::MAX));
        let often = check(&shapes, limits(100));
        let count = |steps: &[Step]| steps.iter().filter(|s| s.checkpoint).count();
        assert!(count(&often) >= 10, "{} checkpoints", count(&often));
        assert!(count(&often) > count(&rare));
        assert_ne!(digest(&often), digest(&rare));
        let mut since = 0;
        for step in &often {
            since += 1;
            if step.checkpoint {
                assert!(since <= 100_usize.div_ceil(64) + 4, "drains promptly");
                since = 0;
            }
        }
    }

    #[test]
    fn without_reuse_every_sequence_is_independent() {
        let shapes: Vec<Shape> = (0..20)
            .map(|i| Shape {
                zero_len: Some(10 + i % 7),
                one_shot: OneShot::Whole { len: 30 + i % 5 },
                alone_len: None,
            })
            .collect();
        let steps = check(
            &shapes,
            Limits {
                tokens: 64,
                slots: 4,
                held: 0,
                checkpoint_tokens: usize::MAX,
            },
        );
        assert!(steps
            .iter()
            .all(|s| s.entries.iter().all(|e| e.copy_from.is_none())));
    }
}
