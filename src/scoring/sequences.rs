//! Every sample's token sequences, rendered when they are needed rather than kept.
//!
//! A plan needs each sample's sequence *lengths* and whether its one-shot sequence starts
//! with its neighbour's zero-shot one; a decode needs the tokens of the few samples in the
//! segment it is decoding. So [`PlanTable::build`] renders every sample once, on every core,
//! and keeps a few numbers per sample, and [`SegmentSequences::render`] renders a segment's
//! samples again when a worker takes it. A million samples are planned holding no tokens,
//! and a shard of a saved plan renders only its own samples, whatever the dataset's size.
//! Rendering again costs little beside decoding (one tokenisation against a forward pass per
//! token), and what is rendered is checked against the plan before it is decoded.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::dataset::Sample;
use crate::data::store::SampleStore;
use crate::scoring::decoder::Item;
use crate::scoring::plan::{Entry, OneShot, Shape, Step, Work};
use crate::scoring::prompt::{Layout, ScoredSequence, Token, Tokenize};
use crate::scoring::scheduler::{PlanMismatch, ScoringError, ScoringOptions, Usage};
use crate::scoring::score::Unscorable;

/// A sample's one-shot sequence, or why it has none.
pub type OneShotSequence = Result<ScoredSequence, Unscorable>;

/// A sample's sequences without an example.
#[derive(Debug, Clone)]
pub struct Own {
    /// The zero-shot sequence, or why it is not decoded.
    pub zero: Result<ScoredSequence, Unscorable>,
    /// The responses alone (IFD's L(y)), when asked for and they fit.
    pub alone: Option<ScoredSequence>,
    /// Scored tokens.
    pub response_tokens: usize,
}

/// Renders samples' sequences on demand.
pub trait Sequencer: Sync {
    /// Samples there are.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sample `sample`'s own sequences.
    ///
    /// # Errors
    /// The sample cannot be read or rendered.
    fn own(&self, sample: usize) -> Result<Own, ScoringError>;
    /// Sample `sample`'s one-shot sequence with sample `example` shown first.
    ///
    /// # Errors
    /// The samples cannot be read or rendered.
    fn one_shot(&self, sample: usize, example: usize) -> Result<OneShotSequence, ScoringError>;
}

/// Where samples come from: memory, or a run's sample store read one sample at a time.
pub trait SampleSource: Sync {
    /// Samples there are.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sample `index`.
    ///
    /// # Errors
    /// [`ScoringError::Samples`] when it cannot be read.
    fn sample(&self, index: usize) -> Result<Cow<'_, Sample>, ScoringError>;
}

impl SampleSource for SampleStore {
    fn len(&self) -> usize {
        SampleStore::len(self)
    }
    fn sample(&self, index: usize) -> Result<Cow<'_, Sample>, ScoringError> {
        Ok(Cow::Owned(
            self.read(index)
                .map_err(|e| ScoringError::Samples(Box::new(e)))?,
        ))
    }
}

impl SampleSource for &[Sample] {
    fn len(&self) -> usize {
        <[Sample]>::len(self)
    }
    fn sample(&self, index: usize) -> Result<Cow<'_, Sample>, ScoringError> {
        Ok(Cow::Borrowed(&self[index]))
    }
}

/// The [`Sequencer`] of a template and tokenizer over a [`SampleSource`] it holds (samples
/// in memory by reference, or a run's sample store).
pub struct Renderer<'a, T: Tokenize, S: SampleSource> {
    layout: Layout<'a, T>,
    samples: S,
    response_only: bool,
}

impl<'a, T: Tokenize, S: SampleSource> Renderer<'a, T, S> {
    /// Renders `samples` as `options` say (template, EOS, IFD's extra pass), whatever their
    /// length: the plan decides what fits the context.
    pub fn new(tokenizer: &'a T, samples: S, options: &ScoringOptions) -> Self {
        Renderer {
            layout: Layout::new(tokenizer, &options.template, options.append_eos),
            samples,
            response_only: options.response_only,
        }
    }
}

impl<T: Tokenize + Sync, S: SampleSource> Sequencer for Renderer<'_, T, S> {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn own(&self, sample: usize) -> Result<Own, ScoringError> {
        let sample = self.samples.sample(sample)?;
        let rendered = self.layout.render(&[&sample])?;
        Ok(Own {
            alone: (self.response_only)
                .then(|| self.layout.response_only(&rendered))
                .flatten(),
            response_tokens: rendered.response_len(),
            zero: rendered.scored(),
        })
    }

    fn one_shot(&self, sample: usize, example: usize) -> Result<OneShotSequence, ScoringError> {
        let (sample, example) = (self.samples.sample(sample)?, self.samples.sample(example)?);
        Ok(self.layout.render(&[&example, &sample])?.scored())
    }
}

/// What a plan knows of each sample without its tokens: enough to schedule every decode,
/// account for every token and give every unscorable sample its reason. A staged run saves
/// it once, so shards and the merge plan without rendering the dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanTable {
    /// Each sample's example (its neighbour), as the plan was made with.
    pub examples: Vec<Option<usize>>,
    /// What the scheduler needs of each sample.
    pub shapes: Vec<Shape>,
    /// Why a sample has no one-shot pass.
    pub failed: Vec<Option<Unscorable>>,
    /// Token counts known before scheduling (what the decodes cost follows from the plan).
    pub usage: Vec<Usage>,
}

/// The part of a sample's own rendering the second pass needs.
struct OwnSummary {
    /// (length, hash, prompt tokens) of a zero-shot sequence that fits, or why it is not
    /// decoded.
    zero: Result<(usize, u64, usize), Unscorable>,
    /// The zero-shot sequence's tokens, whether it fits or not.
    tokens: usize,
    alone_len: Option<usize>,
    response_tokens: usize,
}

impl PlanTable {
    /// Renders every sample, on every core, and keeps what planning needs. A one-shot
    /// sequence reuses its neighbour's cache (when `reuse`) if it starts with the neighbour's
    /// whole zero-shot sequence, as it does when the template writes a conversation's start
    /// the same whatever follows. That is decided here by comparing hashes of the two, and
    /// checked token by token before each reuse is decoded.
    ///
    /// The context rule is applied here, once for every path: no sequence is ever cut. A
    /// sample whose zero-shot sequence is longer than `max_len` is
    /// [`Unscorable::TooLong`]; one whose zero-shot sequence fits but whose one-shot sequence
    /// (the whole example, then the sample) does not is [`Unscorable::ExampleTooLong`], its
    /// zero-shot loss still computed; a response-only pass that does not fit is left out.
    ///
    /// # Errors
    /// A sample that cannot be read or rendered.
    pub fn build(
        sequencer: &dyn Sequencer,
        examples: &[Option<usize>],
        reuse: bool,
        max_len: usize,
    ) -> Result<Self, ScoringError> {
        let own: Vec<OwnSummary> = (0..sequencer.len())
            .into_par_iter()
            .map(|i| {
                let own = sequencer.own(i)?;
                let tokens = own.zero.as_ref().map_or(0, |z| z.tokens.len());
                Ok(OwnSummary {
                    zero: own.zero.and_then(|z| match z.tokens.len() {
                        len if len > max_len => Err(Unscorable::TooLong),
                        len => Ok((len, hash(&z.tokens), z.target().start)),
                    }),
                    tokens,
                    alone_len: own
                        .alone
                        .map(|a| a.tokens.len())
                        .filter(|&len| len <= max_len),
                    response_tokens: own.response_tokens,
                })
            })
            .collect::<Result<_, ScoringError>>()?;
        let rows: Vec<(Shape, Option<Unscorable>, Usage)> = (0..own.len())
            .into_par_iter()
            .map(|i| Self::row(sequencer, &own, i, examples[i], reuse, max_len))
            .collect::<Result<_, ScoringError>>()?;
        let mut table = PlanTable {
            examples: examples.to_vec(),
            shapes: Vec::with_capacity(rows.len()),
            failed: Vec::with_capacity(rows.len()),
            usage: Vec::with_capacity(rows.len()),
        };
        for (shape, failed, usage) in rows {
            table.shapes.push(shape);
            table.failed.push(failed);
            table.usage.push(usage);
        }
        Ok(table)
    }

    /// Sample `i`'s shape, reason and usage, its own rendering summarised in `own[i]`.
    fn row(
        sequencer: &dyn Sequencer,
        own: &[OwnSummary],
        i: usize,
        example: Option<usize>,
        reuse: bool,
        max_len: usize,
    ) -> Result<(Shape, Option<Unscorable>, Usage), ScoringError> {
        let mine = &own[i];
        let mut usage = Usage {
            response_tokens: mine.response_tokens,
            tokens_zero_shot: mine.tokens,
            ..Usage::default()
        };
        let one = match (mine.zero, example) {
            (Err(reason), _) => Err(reason),
            (Ok(_), None) => Err(Unscorable::NoNeighbour),
            (Ok(_), Some(k)) => sequencer.one_shot(i, k)?.and_then(|seq| {
                usage.tokens_one_shot = seq.tokens.len();
                if seq.tokens.len() > max_len {
                    Err(Unscorable::ExampleTooLong)
                } else {
                    Ok(seq)
                }
            }),
        };
        if let Ok((_, _, prompt)) = mine.zero {
            usage.prompt_tokens_zero_shot = prompt;
        }
        let (one_shot, failed) = match one {
            Err(reason) => (OneShot::Skip, Some(reason)),
            Ok(seq) => {
                usage.prompt_tokens_one_shot = seq.target().start;
                let parent = example.and_then(|k| own[k].zero.ok().map(|z| (k, z)));
                let shape = match parent {
                    Some((k, (len, hashed, _)))
                        if reuse
                            && seq.tokens.len() >= len
                            && hash(&seq.tokens[..len]) == hashed =>
                    {
                        OneShot::Reuse {
                            parent: k,
                            suffix_len: seq.tokens.len() - len,
                        }
                    }
                    _ => OneShot::Whole {
                        len: seq.tokens.len(),
                    },
                };
                (shape, None)
            }
        };
        let shape = Shape {
            zero_len: mine.zero.ok().map(|(len, _, _)| len),
            one_shot,
            alone_len: mine.alone_len,
        };
        Ok((shape, failed, usage))
    }

    /// Renders `samples` through a memo of `tokenizer` (every core) and builds their table,
    /// no sequence longer than `max_len`.
    ///
    /// # Errors
    /// [`ScoringError::Render`] when the chat template cannot render a sample.
    pub fn plan<T: Tokenize + Sync>(
        tokenizer: &T,
        samples: &[Sample],
        examples: &[Option<usize>],
        options: &ScoringOptions,
        max_len: usize,
    ) -> Result<Self, ScoringError> {
        let memo = TextMemo::new(tokenizer);
        let planning = Renderer::new(&memo, samples, options);
        PlanTable::build(&planning, examples, options.held_slots() > 0, max_len)
    }

    /// The longest sequence the table decodes.
    pub fn longest(&self) -> usize {
        self.shapes
            .iter()
            .flat_map(|shape| {
                let one = match shape.one_shot {
                    OneShot::Skip => None,
                    OneShot::Whole { len } => Some(len),
                    OneShot::Reuse { parent, suffix_len } => {
                        self.shapes[parent].zero_len.map(|len| len + suffix_len)
                    }
                };
                [shape.zero_len, one, shape.alone_len]
            })
            .flatten()
            .max()
            .unwrap_or(0)
    }

    /// The same table with every one-shot sequence decoded whole: for contexts of one slot,
    /// which cannot hold a neighbour's cache for its children.
    pub fn without_reuse(mut self) -> Self {
        let zero: Vec<Option<usize>> = self.shapes.iter().map(|s| s.zero_len).collect();
        for shape in &mut self.shapes {
            if let OneShot::Reuse { parent, suffix_len } = shape.one_shot {
                let prefix = zero[parent].expect("a reused parent has a zero-shot pass");
                shape.one_shot = OneShot::Whole {
                    len: prefix + suffix_len,
                };
            }
        }
        self
    }

    /// Samples in the table.
    pub fn len(&self) -> usize {
        self.shapes.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.shapes.is_empty()
    }
}

/// A tokenizer that remembers the plain texts it has tokenised. Planning renders each
/// sample's texts three times (alone, after its example, and as other samples' example), and
/// each tokenisation through llama.cpp costs far more than a lookup; the memory is about
/// the dataset's tokens, given back when planning ends. Texts are keyed by two independent
/// 64-bit hashes; a collision could only make a plan that the decode's check refuses.
pub struct TextMemo<'a, T: Tokenize> {
    inner: &'a T,
    shards: Vec<std::sync::Mutex<MemoShard>>,
}

/// Texts by their two hashes, and their tokens.
type MemoShard = HashMap<(u64, u64), Vec<Token>>;

impl<'a, T: Tokenize> TextMemo<'a, T> {
    /// An empty memo in front of `inner`.
    pub fn new(inner: &'a T) -> Self {
        TextMemo {
            inner,
            shards: (0..64).map(|_| Default::default()).collect(),
        }
    }
}

impl<T: Tokenize> Tokenize for TextMemo<'_, T> {
    fn tokenize(&self, text: &str) -> Vec<Token> {
        let key = |salt: u8| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (salt, text).hash(&mut hasher);
            hasher.finish()
        };
        let key = (key(0), key(1));
        let shard = &self.shards[(key.0 % self.shards.len() as u64) as usize];
        if let Some(tokens) = shard.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return tokens;
        }
        let tokens = self.inner.tokenize(text);
        if let Ok(mut memo) = shard.lock() {
            memo.insert(key, tokens.clone());
        }
        tokens
    }
    fn tokenize_markup(&self, text: &str) -> Vec<Token> {
        self.inner.tokenize_markup(text)
    }
    fn bos(&self) -> Option<Token> {
        self.inner.bos()
    }
    fn eos(&self) -> Option<Token> {
        self.inner.eos()
    }
}

fn hash(tokens: &[Token]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    tokens.hash(&mut hasher);
    hasher.finish()
}

/// The sequences one segment of a plan decodes, rendered when a worker takes it and checked
/// against the plan's lengths.
#[derive(Default)]
pub struct SegmentSequences {
    zero: HashMap<usize, ScoredSequence>,
    one: HashMap<usize, ScoredSequence>,
    alone: HashMap<usize, ScoredSequence>,
}

impl SegmentSequences {
    /// Renders what `steps` decode.
    ///
    /// # Errors
    /// A sample that cannot be read or rendered, or whose tokens are not what the plan
    /// was made from ([`PlanMismatch::Sequence`]).
    pub fn render(
        sequencer: &dyn Sequencer,
        table: &PlanTable,
        steps: &[Step],
    ) -> Result<Self, ScoringError> {
        let mut own: HashMap<usize, Own> = HashMap::new();
        let mut built = SegmentSequences::default();
        let mut own_of = |i: usize| -> Result<Own, ScoringError> {
            if let Some(own) = own.get(&i) {
                return Ok(own.clone());
            }
            let rendered = sequencer.own(i)?;
            own.insert(i, rendered.clone());
            Ok(rendered)
        };
        let differs = |i: usize| ScoringError::Plan(PlanMismatch::Sequence(i));
        for e in steps.iter().flat_map(|s| &s.entries) {
            match e.work {
                Work::ZeroShot(i) => {
                    let zero = own_of(i)?.zero.map_err(|_| differs(i))?;
                    built.zero.insert(i, zero);
                }
                Work::ResponseOnly(i) => {
                    let alone = own_of(i)?.alone.ok_or_else(|| differs(i))?;
                    built.alone.insert(i, alone);
                }
                Work::OneShotWhole(i) | Work::OneShotSuffix(i) => {
                    let example = table.examples[i].ok_or_else(|| differs(i))?;
                    let one = sequencer.one_shot(i, example)?.map_err(|_| differs(i))?;
                    built.one.insert(i, one);
                }
            }
        }
        for e in steps.iter().flat_map(|s| &s.entries) {
            if !built.fits(table, e.work) {
                return Err(differs(sample_of(e.work)));
            }
        }
        Ok(built)
    }

    /// Whether the rendered sequence of `work` has the plan's length, and a reused prefix
    /// the parent's very tokens.
    fn fits(&self, table: &PlanTable, work: Work) -> bool {
        let shape = &table.shapes[sample_of(work)];
        let len = |seq: Option<&ScoredSequence>| seq.map(|s| s.tokens.len());
        match (work, shape.one_shot) {
            (Work::ZeroShot(i), _) => len(self.zero.get(&i)) == shape.zero_len,
            (Work::ResponseOnly(i), _) => len(self.alone.get(&i)) == shape.alone_len,
            (Work::OneShotWhole(i), OneShot::Whole { len: planned }) => {
                len(self.one.get(&i)) == Some(planned)
            }
            (Work::OneShotSuffix(i), OneShot::Reuse { parent, suffix_len }) => {
                match (self.one.get(&i), self.zero.get(&parent)) {
                    (Some(one), Some(prefix)) => {
                        one.tokens.starts_with(&prefix.tokens)
                            && one.tokens.len() == prefix.tokens.len() + suffix_len
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }

    /// The decoder's item for a planned entry: the whole sequence, or the suffix after the
    /// parent's copied prefix.
    pub fn item(&self, entry: &Entry, shapes: &[Shape]) -> Item<'_> {
        let first_pos = match entry.work {
            Work::OneShotSuffix(i) => match shapes[i].one_shot {
                OneShot::Reuse { parent, .. } => {
                    shapes[parent].zero_len.expect("a reused parent is decoded")
                }
                _ => unreachable!("a suffix continues its parent"),
            },
            _ => 0,
        };
        let seq = self.scored(entry.work);
        let target = seq.target();
        Item {
            tokens: &seq.tokens[first_pos..],
            first_pos,
            slot: entry.slot,
            scored: target.start - first_pos..target.end - first_pos,
        }
    }

    /// The sequence whose loss a planned entry computes.
    pub fn scored(&self, work: Work) -> &ScoredSequence {
        let seq = match work {
            Work::ZeroShot(i) => self.zero.get(&i),
            Work::OneShotWhole(i) | Work::OneShotSuffix(i) => self.one.get(&i),
            Work::ResponseOnly(i) => self.alone.get(&i),
        };
        seq.expect("a rendered segment has every planned sequence")
    }
}

/// The sample a unit of work belongs to.
pub fn sample_of(work: Work) -> usize {
    match work {
        Work::ZeroShot(i)
        | Work::OneShotWhole(i)
        | Work::OneShotSuffix(i)
        | Work::ResponseOnly(i) => i,
    }
}
