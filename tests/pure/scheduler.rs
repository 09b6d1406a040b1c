//! The scheduler driven by a deterministic fake decoder: planning, KV reuse, checkpoints,
//! resume, interrupts and decoder failures, in milliseconds and without model weights.
//!
//! The fake keeps each slot's tokens as a real KV cache would and gives every scored token a
//! log-probability that depends on everything before it in its slot. A plan that continued a
//! slot at the wrong position, copied into a busy slot or lost a prefix would change the
//! losses (or be refused), so equal losses mean the plan kept the cache right.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use miwv::data::dataset::{read_dataset, Sample};
use miwv::scoring::decoder::{DecodeError, Decoder, DecoderPool, Item};
use miwv::scoring::prompt::{Template, Token, Tokenize};
use miwv::scoring::scheduler::{
    Decoders, Journal, NoJournal, Outcome, ScoringError, ScoringOptions, ScoringPlan,
};
use miwv::scoring::score::Unscorable;
use miwv::scoring::sequences::{OneShotSequence, Own, PlanTable, Renderer, Sequencer};
use miwv::scoring::shard::Shard;
use miwv::scoring::sizes::ContextSizes;
use miwv::state::resume::RunState;

/// Bytes as tokens: enough to give every sample a distinct, realistic-length sequence.
struct ByteTokenizer;

impl Tokenize for ByteTokenizer {
    fn tokenize(&self, text: &str) -> Vec<Token> {
        text.bytes().map(|b| Token::from(b) + 3).collect()
    }
    fn tokenize_markup(&self, text: &str) -> Vec<Token> {
        self.tokenize(text)
    }
    fn bos(&self) -> Option<Token> {
        Some(1)
    }
    fn eos(&self) -> Option<Token> {
        Some(2)
    }
}

/// A decoder whose "model" is a hash of the context: `log p(next | context)` is a fixed
/// function of the exact token history in the slot.
struct FakeDecoder<'a> {
    sizes: ContextSizes,
    /// Per slot, the rolling hash of every prefix decoded into it (its "KV cache").
    slots: Vec<Vec<u64>>,
    last: Vec<Vec<f32>>,
    decodes: usize,
    /// Counts decodes across every decoder of a pool, in place of `decodes`.
    pool_decodes: Option<&'a AtomicUsize>,
    /// Set this flag after that many decodes (a user's Ctrl-C).
    stop_after: Option<(usize, &'a AtomicBool)>,
    /// Fail the decode with this number (1-based).
    fail_at: Option<usize>,
}

impl<'a> FakeDecoder<'a> {
    fn new(sizes: ContextSizes) -> Self {
        FakeDecoder {
            sizes,
            slots: vec![Vec::new(); sizes.parallel],
            last: Vec::new(),
            decodes: 0,
            pool_decodes: None,
            stop_after: None,
            fail_at: None,
        }
    }
}

fn extend(hash: u64, token: Token) -> u64 {
    (hash ^ token as u64).wrapping_mul(0x0100_0000_01b3)
}

fn log_prob(context: u64, next: Token) -> f32 {
    let h = extend(context, next).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
    -((h % 8192) as f32) / 1024.0 - 0.01
}

impl Decoder for FakeDecoder<'_> {
    fn copy_slot(&mut self, from: usize, to: usize) -> Result<(), DecodeError> {
        if !self.slots[to].is_empty() {
            return Err(format!("copy into slot {to}, which is in use").into());
        }
        self.slots[to] = self.slots[from].clone();
        Ok(())
    }

    fn decode(&mut self, items: &[Item]) -> Result<(), DecodeError> {
        self.decodes += 1;
        let decodes = match self.pool_decodes {
            Some(count) => count.fetch_add(1, Ordering::SeqCst) + 1,
            None => self.decodes,
        };
        if self.fail_at == Some(self.decodes) {
            return Err("the device went away".into());
        }
        let tokens: usize = items.iter().map(|i| i.tokens.len()).sum();
        if tokens > self.sizes.batch {
            return Err(format!("{tokens} tokens in one decode").into());
        }
        self.last.clear();
        for item in items {
            let slot = &mut self.slots[item.slot];
            if slot.len() != item.first_pos {
                return Err(format!(
                    "slot {} holds {} tokens, the item continues at {}",
                    item.slot,
                    slot.len(),
                    item.first_pos
                )
                .into());
            }
            if item.first_pos + item.tokens.len() > self.sizes.ctx_per_sequence {
                return Err("past the context".into());
            }
            let mut hash = slot.last().copied().unwrap_or(0xcbf2_9ce4_8422_2325);
            let mut row = Vec::new();
            for (offset, &token) in item.tokens.iter().enumerate() {
                if item.scored.contains(&offset) {
                    row.push(log_prob(hash, token));
                }
                hash = extend(hash, token);
                slot.push(hash);
            }
            self.last.push(row);
        }
        if let Some((after, flag)) = self.stop_after {
            if decodes >= after {
                flag.store(true, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    fn log_probs(&self, _: &[Item]) -> Vec<Vec<f32>> {
        self.last.clone()
    }

    fn free_slot(&mut self, slot: usize) {
        self.slots[slot].clear();
    }

    fn clear(&mut self) {
        self.slots.iter_mut().for_each(Vec::clear);
    }
}

fn samples() -> Vec<Sample> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/alpaca-mini.json");
    read_dataset(&path).unwrap().samples
}

/// Neighbours with hubs (every fifth sample is many samples' example) and a few without one.
fn examples(n: usize) -> Vec<Option<usize>> {
    (0..n)
        .map(|i| match i % 7 {
            0 => None,
            1 | 2 => Some((i / 5 * 5 + 5) % n),
            _ => Some((i * 13 + 1) % n),
        })
        .map(|k| k.filter(|&k| k < n))
        .enumerate()
        .map(|(i, k)| k.filter(|&k| k != i))
        .collect()
}

fn options(kv_reuse: bool, checkpoint_tokens: usize) -> ScoringOptions {
    ScoringOptions {
        sizes: ContextSizes {
            ctx_per_sequence: 2048,
            parallel: 4,
            batch: 2048,
            ubatch: 512,
            threads: 1,
            workers: 1,
        },
        kv_reuse,
        template: Template::Alpaca,
        append_eos: true,
        response_only: true,
        checkpoint_tokens,
    }
}

/// The example data scored on `decoders`, journalled in `journal`, stopping once `stop` is set.
fn score_on(
    decoders: Decoders,
    options: &ScoringOptions,
    journal: &mut dyn Journal,
    stop: &AtomicBool,
) -> Result<Outcome, ScoringError> {
    let samples = samples();
    let examples = examples(samples.len());
    let plan = ScoringPlan::new(&ByteTokenizer, &samples, &examples, options)?;
    plan.score(decoders, journal, stop, |_| {})
}

fn score_with(
    decoder: &mut FakeDecoder,
    options: &ScoringOptions,
    journal: &mut dyn Journal,
    stop: &AtomicBool,
) -> Result<Outcome, ScoringError> {
    score_on(Decoders::One(decoder), options, journal, stop)
}

fn score_in_pool(
    pool: &FakePool,
    options: &ScoringOptions,
    journal: &mut dyn Journal,
    stop: &AtomicBool,
) -> Result<Outcome, ScoringError> {
    score_on(Decoders::Pool(pool), options, journal, stop)
}

/// Never set: a run that goes to its end.
static GO_ON: AtomicBool = AtomicBool::new(false);

fn score(options: &ScoringOptions) -> Outcome {
    let mut decoder = FakeDecoder::new(options.sizes);
    score_with(&mut decoder, options, &mut NoJournal, &GO_ON).unwrap()
}

/// Losses as exact bits, NaN included, for equality checks.
fn bits(outcome: &Outcome) -> Vec<[u32; 4]> {
    outcome
        .scores
        .iter()
        .zip(&outcome.response_only)
        .map(|(s, alone)| [s.loss_zero_shot, s.loss_one_shot, s.miwv, *alone].map(f32::to_bits))
        .collect()
}

#[test]
fn reusing_the_neighbours_cache_gives_the_losses_of_whole_sequences() {
    let reuse = score(&options(true, 4096));
    let whole = score(&options(false, 4096));
    assert_eq!(bits(&reuse), bits(&whole));
    assert!(reuse.stats.prefix_copies > 50, "{:?}", reuse.stats);
    assert_eq!(whole.stats.prefix_copies, 0);
    assert!(reuse.stats.tokens_decoded < whole.stats.tokens_decoded);
    let scored = reuse.scores.iter().filter(|s| s.miwv.is_finite()).count();
    assert!(scored > 150, "{scored} scored");
    for (score, example) in reuse.scores.iter().zip(examples(200)) {
        assert_eq!(score.miwv.is_finite(), score.reason.is_none());
        if example.is_none() {
            assert_eq!(score.reason, Some(Unscorable::NoNeighbour));
        }
    }
    // Checkpoints only change where the cache empties, never a loss.
    assert_eq!(bits(&score(&options(true, 1 << 30))), bits(&reuse));
}

/// Each sample's (sample, pass) losses in `losses.jsonl`, counted.
fn logged(out: &Path) -> HashMap<(u64, String), usize> {
    let text = std::fs::read_to_string(out.join("checkpoint/losses.jsonl")).unwrap();
    let mut seen = HashMap::new();
    for line in text.lines().skip(1) {
        let commit: serde_json::Value = serde_json::from_str(line).unwrap();
        for loss in commit["losses"].as_array().unwrap() {
            let key = (
                loss["sample"].as_u64().unwrap(),
                loss["pass"].as_str().unwrap().to_string(),
            );
            *seen.entry(key).or_insert(0) += 1;
        }
    }
    seen
}

#[test]
fn a_run_interrupted_after_any_decode_resumes_to_the_same_scores() {
    let options = options(true, 3000);
    let reference = score(&options);
    let planned = reference.stats.planned_steps;
    assert!(planned > 20, "{planned} steps");
    let settings = serde_json::json!({"test": 1});
    // Up to a stop during the very last decode, which still ends the run as interrupted.
    for stop_after in 1..=planned {
        let dir = tempfile::tempdir().unwrap();
        let state = RunState::open(dir.path(), &settings).unwrap();
        let stop = AtomicBool::new(false);
        let mut decoder = FakeDecoder::new(options.sizes);
        decoder.stop_after = Some((stop_after, &stop));
        let first = score_with(&mut decoder, &options, &mut state.loss_log(), &stop);
        let Err(ScoringError::Interrupted {
            saved_steps,
            total_steps,
        }) = first
        else {
            panic!("stop after {stop_after}: not interrupted: {first:?}");
        };
        assert_eq!(total_steps, planned);
        assert!(saved_steps <= stop_after, "{saved_steps} > {stop_after}");

        let go_on = AtomicBool::new(false);
        let mut decoder = FakeDecoder::new(options.sizes);
        let resumed = score_with(&mut decoder, &options, &mut state.loss_log(), &go_on).unwrap();
        assert_eq!(bits(&resumed), bits(&reference), "stop after {stop_after}");
        assert_eq!(resumed.stats.resumed_steps, saved_steps);
        assert_eq!(resumed.stats.decodes, planned - saved_steps);
        let log = logged(dir.path());
        assert!(log.values().all(|&n| n == 1), "a loss logged twice");
        // Every pass that was decoded is logged: each finite loss of the reference run.
        let decoded_passes: usize = bits(&reference)
            .iter()
            .map(|b| {
                [b[0], b[1], b[3]]
                    .iter()
                    .filter(|&&x| f32::from_bits(x).is_finite())
                    .count()
            })
            .sum();
        assert_eq!(log.len(), decoded_passes, "stop after {stop_after}");
    }
}

#[test]
fn a_decoder_failure_keeps_the_checkpoints_and_the_rerun_completes() {
    let options = options(true, 3000);
    let reference = score(&options);
    let dir = tempfile::tempdir().unwrap();
    let state = RunState::open(dir.path(), &serde_json::json!({})).unwrap();
    let stop = AtomicBool::new(false);
    let mut failing = FakeDecoder::new(options.sizes);
    failing.fail_at = Some(reference.stats.planned_steps / 2);
    let failed = score_with(&mut failing, &options, &mut state.loss_log(), &stop).unwrap_err();
    assert!(
        failed.to_string().contains("the device went away"),
        "{failed}"
    );
    let mut decoder = FakeDecoder::new(options.sizes);
    let rerun = score_with(&mut decoder, &options, &mut state.loss_log(), &stop).unwrap();
    assert!(rerun.stats.resumed_steps > 0);
    assert_eq!(bits(&rerun), bits(&reference));

    // Losses saved for another plan (another checkpoint interval) are refused, not mixed in.
    let mut decoder = FakeDecoder::new(options.sizes);
    let other = score_with(
        &mut decoder,
        &self::options(true, 5000),
        &mut state.loss_log(),
        &stop,
    )
    .unwrap_err();
    assert!(matches!(other, ScoringError::Resume(_)), "{other}");
    assert!(other.to_string().contains("different plan"), "{other}");
}

#[test]
fn shards_of_the_plan_in_any_order_gather_to_the_scores_of_one_run() {
    let options = options(true, 3000);
    let reference = score(&options);
    let samples = samples();
    let examples = examples(samples.len());
    let plan = ScoringPlan::new(&ByteTokenizer, &samples, &examples, &options).unwrap();
    let total = plan.tokens_in(0..plan.steps());
    for count in [1, 2, 3, 5, 8, 64] {
        let ranges: Vec<_> = (0..count)
            .map(|k| plan.shard(Shard::new(k, count).unwrap()))
            .collect();
        assert_eq!(ranges[0].start, 0);
        assert_eq!(ranges[count - 1].end, plan.steps());
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].end, pair[1].start, "{count} shards are contiguous");
        }
        let largest = ranges
            .iter()
            .map(|r| plan.tokens_in(r.clone()))
            .max()
            .unwrap();
        if count <= 3 {
            assert!(
                largest * count < total * 3 / 2,
                "{count} shards balanced: {largest} of {total}"
            );
        }

        let dir = tempfile::tempdir().unwrap();
        let state = RunState::open(dir.path(), &serde_json::json!({})).unwrap();
        state.stage_dir("score", count).unwrap();
        let mut losses = Vec::new();
        for k in (0..count).rev() {
            let shard = Shard::new(k, count).unwrap();
            let mut decoder = FakeDecoder::new(options.sizes);
            let mut log = state.shard_loss_log(shard);
            let (saved, stats) = plan
                .decode(
                    Decoders::One(&mut decoder),
                    ranges[k].clone(),
                    &mut log,
                    &GO_ON,
                    |_| {},
                )
                .unwrap();
            assert_eq!(stats.decodes, ranges[k].len());
            assert_eq!(
                log.saved(plan.digest(), ranges[k].clone())
                    .unwrap()
                    .losses
                    .len(),
                saved.losses.len()
            );
            losses.extend(saved.losses);
        }
        let merged = plan.fold(&losses, Default::default()).unwrap();
        assert_eq!(bits(&merged), bits(&reference), "{count} shards");
    }
}

/// A fake decoder per worker. The run is stopped after a count of decodes by all workers
/// together, so whichever thread the OS runs first, at most one decode per other worker
/// follows the stop; a decoder fails after its own count.
struct FakePool<'a> {
    sizes: ContextSizes,
    workers: usize,
    decodes: AtomicUsize,
    stop_after: Option<(usize, &'a AtomicBool)>,
    fail_at: Option<usize>,
}

impl DecoderPool for FakePool<'_> {
    fn workers(&self) -> usize {
        self.workers
    }
    fn decoder(&self) -> Result<Box<dyn Decoder + '_>, DecodeError> {
        let mut decoder = FakeDecoder::new(self.sizes);
        decoder.pool_decodes = Some(&self.decodes);
        decoder.stop_after = self.stop_after;
        decoder.fail_at = self.fail_at;
        Ok(Box::new(decoder))
    }
}

fn pool(options: &ScoringOptions, workers: usize) -> FakePool<'static> {
    FakePool {
        sizes: options.sizes,
        workers,
        decodes: AtomicUsize::new(0),
        stop_after: None,
        fail_at: None,
    }
}

#[test]
fn workers_decoding_segments_at_once_give_the_scores_of_one_decoder() {
    let options = options(true, 3000);
    let reference = score(&options);
    for workers in [1, 2, 3, 7] {
        let dir = tempfile::tempdir().unwrap();
        let state = RunState::open(dir.path(), &serde_json::json!({})).unwrap();
        let outcome = score_in_pool(
            &pool(&options, workers),
            &options,
            &mut state.loss_log(),
            &GO_ON,
        )
        .unwrap();
        assert_eq!(bits(&outcome), bits(&reference), "{workers} workers");
        assert_eq!(outcome.stats.workers, workers);
        assert_eq!(outcome.stats.decodes, reference.stats.decodes);
        assert_eq!(outcome.stats.tokens_decoded, reference.stats.tokens_decoded);
        assert!(logged(dir.path()).values().all(|&n| n == 1));
    }
    // More workers than segments: the extra ones are not started.
    let one_segment = self::options(true, 1 << 30);
    let outcome =
        score_in_pool(&pool(&one_segment, 4), &one_segment, &mut NoJournal, &GO_ON).unwrap();
    assert_eq!(outcome.stats.workers, 1);
    assert_eq!(bits(&outcome), bits(&reference));
}

#[test]
fn workers_interrupted_keep_a_prefix_of_the_plan_and_resume_to_the_same_scores() {
    let options = options(true, 3000);
    let reference = score(&options);
    let planned = reference.stats.planned_steps;
    let workers = 3;
    assert!(planned > 9 + workers, "{planned} steps");
    for stop_after in [1, 2, 5, 9] {
        let dir = tempfile::tempdir().unwrap();
        let state = RunState::open(dir.path(), &serde_json::json!({})).unwrap();
        let stop = AtomicBool::new(false);
        let mut stopping = pool(&options, workers);
        stopping.stop_after = Some((stop_after, &stop));
        let first = score_in_pool(&stopping, &options, &mut state.loss_log(), &stop);
        let Err(ScoringError::Interrupted { saved_steps, .. }) = first else {
            panic!("stop after {stop_after}: not interrupted: {first:?}");
        };
        // Each worker sees the stop before its next step: only the decodes already under way
        // on the other workers finish.
        let decoded = stopping.decodes.load(Ordering::SeqCst);
        assert!(decoded < stop_after + workers, "{decoded} decodes");
        assert!(saved_steps <= decoded);

        let go_on = AtomicBool::new(false);
        let resumed =
            score_in_pool(&pool(&options, 2), &options, &mut state.loss_log(), &go_on).unwrap();
        assert_eq!(bits(&resumed), bits(&reference), "stop after {stop_after}");
        assert_eq!(resumed.stats.resumed_steps, saved_steps);
        assert_eq!(resumed.stats.decodes, planned - saved_steps);
        let log = logged(dir.path());
        assert!(log.values().all(|&n| n == 1), "a loss logged twice");
    }

    // A worker whose decoder fails stops the others; what was saved is kept.
    let dir = tempfile::tempdir().unwrap();
    let state = RunState::open(dir.path(), &serde_json::json!({})).unwrap();
    let stop = AtomicBool::new(false);
    let mut failing = pool(&options, 2);
    failing.fail_at = Some(4);
    let failed = score_in_pool(&failing, &options, &mut state.loss_log(), &stop).unwrap_err();
    assert!(
        failed.to_string().contains("the device went away"),
        "{failed}"
    );
    let rerun = score_in_pool(&pool(&options, 2), &options, &mut state.loss_log(), &stop).unwrap();
    assert_eq!(bits(&rerun), bits(&reference));
}

/// A sequencer that counts which samples it renders.
struct Counting<'a> {
    inner: Renderer<'a, ByteTokenizer, &'a [Sample]>,
    rendered: &'a std::sync::Mutex<Vec<usize>>,
}

impl Sequencer for Counting<'_> {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn own(&self, sample: usize) -> Result<Own, ScoringError> {
        self.rendered.lock().unwrap().push(sample);
        self.inner.own(sample)
    }
    fn one_shot(&self, sample: usize, example: usize) -> Result<OneShotSequence, ScoringError> {
        self.rendered.lock().unwrap().extend([sample, example]);
        self.inner.one_shot(sample, example)
    }
}

#[test]
fn a_shard_renders_only_its_own_samples_however_large_the_dataset() {
    let options = options(true, 600);
    let base = samples();
    for copies in [1, 10] {
        // The dataset grown tenfold with other samples: a shard's rendering stays its own.
        let samples: Vec<Sample> = (0..copies)
            .flat_map(|c| {
                base.iter().map(move |s| Sample {
                    id: format!("{c}-{}", s.id),
                    ..s.clone()
                })
            })
            .collect();
        let examples = examples(samples.len());
        let renderer = Renderer::new(&ByteTokenizer, samples.as_slice(), &options);
        let table =
            PlanTable::build(&renderer, &examples, true, options.sizes.ctx_per_sequence).unwrap();
        let rendered = std::sync::Mutex::new(Vec::new());
        let counting = Counting {
            inner: Renderer::new(&ByteTokenizer, samples.as_slice(), &options),
            rendered: &rendered,
        };
        let plan = ScoringPlan::from_table(Box::new(counting), table.clone(), &options).unwrap();
        let reference = ScoringPlan::new(&ByteTokenizer, &samples, &examples, &options).unwrap();
        assert_eq!(
            plan.digest(),
            reference.digest(),
            "a saved table plans the same"
        );
        assert_eq!(plan.table(), &table);

        let count = 8 * copies;
        let shard = Shard::new(count / 2, count).unwrap();
        let range = plan.shard(shard);
        let (saved, _) = plan
            .decode(
                Decoders::One(&mut FakeDecoder::new(options.sizes)),
                range.clone(),
                &mut NoJournal,
                &GO_ON,
                |_| {},
            )
            .unwrap();
        let mine: std::collections::BTreeSet<usize> =
            saved.losses.iter().map(|l| l.sample).collect();
        let examples_of_mine: std::collections::BTreeSet<usize> =
            mine.iter().filter_map(|&i| examples[i]).collect();
        drop(plan);
        let rendered = rendered.into_inner().unwrap();
        assert!(!rendered.is_empty());
        for i in &rendered {
            assert!(
                mine.contains(i) || examples_of_mine.contains(i),
                "{copies}x: sample {i} rendered for a shard that does not score it"
            );
        }
        assert!(
            rendered.len() <= 4 * mine.len(),
            "{copies}x: {} renders for {} samples",
            rendered.len(),
            mine.len()
        );
    }
}

#[test]
fn a_saved_plan_refuses_samples_that_render_otherwise() {
    let options = options(true, 600);
    let samples = samples();
    let examples = examples(samples.len());
    let renderer = Renderer::new(&ByteTokenizer, samples.as_slice(), &options);
    let table =
        PlanTable::build(&renderer, &examples, true, options.sizes.ctx_per_sequence).unwrap();
    let mut changed = samples.clone();
    changed[3].turns[0].output.push_str(" and a little more");
    let renderer = Renderer::new(&ByteTokenizer, changed.as_slice(), &options);
    let plan = ScoringPlan::from_table(Box::new(renderer), table, &options).unwrap();
    let err = plan
        .score(
            Decoders::One(&mut FakeDecoder::new(options.sizes)),
            &mut NoJournal,
            &GO_ON,
            |_| {},
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("sample 3 renders to other tokens"),
        "{err}"
    );
}

#[test]
fn a_sequence_longer_than_the_context_is_never_cut() {
    let samples = samples();
    let examples = examples(samples.len());
    let roomy = options(true, 4096);
    let table = PlanTable::plan(&ByteTokenizer, &samples, &examples, &roomy, usize::MAX).unwrap();
    let mut lengths: Vec<usize> = table.usage.iter().map(|u| u.tokens_zero_shot).collect();
    lengths.sort_unstable();
    // A context holding about half of the samples alone, and fewer with their examples.
    let mut tight = roomy.clone();
    tight.sizes.ctx_per_sequence = lengths[lengths.len() / 2];
    let (whole, cut) = (score(&roomy), score(&tight));
    let (mut too_long, mut example_too_long) = (0, 0);
    for (i, usage) in table.usage.iter().enumerate() {
        let (full, short) = (&whole.scores[i], &cut.scores[i]);
        let max = tight.sizes.ctx_per_sequence;
        if usage.tokens_zero_shot > max {
            too_long += 1;
            assert_eq!(short.reason, Some(Unscorable::TooLong), "sample {i}");
            assert!(short.loss_zero_shot.is_nan());
        } else if examples[i].is_some() && usage.tokens_one_shot > max {
            example_too_long += 1;
            assert_eq!(short.reason, Some(Unscorable::ExampleTooLong), "sample {i}");
            assert_eq!(short.loss_zero_shot, full.loss_zero_shot, "sample {i}");
            assert!(short.loss_one_shot.is_nan() && short.miwv.is_nan());
        } else {
            assert_eq!(
                bits(&cut)[i],
                bits(&whole)[i],
                "sample {i}: what fits scores as in a roomy context"
            );
        }
    }
    assert!(
        too_long > 10 && example_too_long > 10,
        "{too_long} {example_too_long}"
    );
}
