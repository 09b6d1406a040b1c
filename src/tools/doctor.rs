//! Seeing what will be scored before a long run: how a sample renders, token by token, and
//! whether the GGUF vocabulary tokenizes the data like the model's reference tokenizer.
//!
//! A GGUF converted with the wrong pre-tokenizer (digits, whitespace or punctuation split
//! differently) still loads and still gives plausible losses, but for the wrong token
//! sequences: every score is silently off. This check tokenizes each segment the scorer
//! tokenizes — the templated prompt, the response and the separator — with llama.cpp's GGUF
//! vocabulary and with the model's own `tokenizer.json` (Hugging Face `tokenizers`, the
//! implementation the model was trained with), and lists every place they disagree.

use serde::Serialize;

use crate::data::dataset::Sample;
use crate::engine::tokenizer::ReferenceTokenizer;
use crate::pipeline::estimate::Distribution;
use crate::scoring::prompt::{Layout, Piece, Template, Token, Tokenize, UnrenderableSample};
use crate::state::schema::UnscoredGroup;

/// One segment tokenized differently.
#[derive(Debug, Clone, Serialize)]
pub struct Disagreement {
    /// The sample's id (empty for the separator, which belongs to no sample).
    pub id: String,
    /// `prompt`, `response` or `separator`.
    pub segment: &'static str,
    /// The GGUF vocabulary's ids.
    pub gguf: Vec<Token>,
    /// The reference tokenizer's ids.
    pub reference: Vec<Token>,
    /// Index of the first id that differs.
    pub first_difference: usize,
    /// The text around the first difference.
    pub context: String,
}

/// What the check found.
#[derive(Debug, Clone, Serialize)]
pub struct TokenizerReport {
    /// Samples checked.
    pub samples: usize,
    /// Segments tokenized by both.
    pub segments: usize,
    /// Samples with at least one disagreeing segment.
    pub samples_differing: usize,
    /// Every disagreement, in dataset order.
    pub disagreements: Vec<Disagreement>,
}

/// Tokenizes every segment of every sample both ways and records each disagreement.
///
/// # Errors
/// [`UnrenderableSample`] when the chat template cannot render a sample.
pub fn check_tokenizer(
    gguf: &impl Tokenize,
    reference: &ReferenceTokenizer,
    samples: &[Sample],
    template: &Template,
) -> Result<TokenizerReport, UnrenderableSample> {
    let mut report = TokenizerReport {
        samples: samples.len(),
        segments: 0,
        samples_differing: 0,
        disagreements: Vec::new(),
    };
    let mut compare = |id: &str, segment: &'static str, text: &str| {
        report.segments += 1;
        let (ours, theirs) = (gguf.tokenize(text), reference.ids(text));
        if ours == theirs {
            return false;
        }
        let first = ours.iter().zip(&theirs).take_while(|(a, b)| a == b).count();
        let before: String = ours[..first].iter().map(|&t| reference.piece(t)).collect();
        let context = excerpt(text, before.chars().count());
        report.disagreements.push(Disagreement {
            id: id.to_string(),
            segment,
            gguf: ours,
            reference: theirs,
            first_difference: first,
            context,
        });
        true
    };
    compare("", "separator", template.separator());
    for sample in samples {
        let mut differs = false;
        for (_, piece) in template.pieces(&[sample])? {
            differs |= match piece {
                Piece::Text(text) => compare(&sample.id, "prompt", &text),
                Piece::Response(text) => compare(&sample.id, "response", &text),
                // Markup is the template's, checked once per format, not per sample.
                Piece::Markup(_) | Piece::EndOfResponse(_) => false,
            };
        }
        report.samples_differing += usize::from(differs);
    }
    Ok(report)
}

/// Which template a run uses and where it comes from, in one line.
pub fn describe_template(template: &Template) -> String {
    match template {
        Template::Chat(chat) => {
            format!(
                "template: {} ({}, Jinja sha256 {}), bos_token {:?}, eos_token {:?}",
                template.name(),
                chat.source.describe(),
                chat.sha256,
                chat.bos_token,
                chat.eos_token
            )
        }
        other => format!("template: {}", other.name()),
    }
}

/// How long the samples are in tokens, and whether the model's context holds them: what
/// `--ctx-size auto` will make of the data, said before any embedding is spent. The one-shot
/// lengths depend on the neighbours, not known yet: `miwv plan RUN` gives them exactly.
#[derive(Debug, Clone, Serialize)]
pub struct LengthReport {
    /// Every sample's zero-shot sequence.
    pub zero_shot: Distribution,
    /// An upper bound of any one-shot sequence: the two longest samples together.
    pub one_shot_at_most: usize,
    /// The model's training context (0: unknown).
    pub training_context: usize,
    /// Samples longer than it alone, which no context can score.
    pub too_long: usize,
    /// The first of them.
    pub too_long_ids: Vec<String>,
}

/// Renders every sample alone and measures it.
///
/// # Errors
/// [`UnrenderableSample`] when the chat template cannot render one.
pub fn sample_lengths(
    tokenizer: &impl Tokenize,
    template: &Template,
    samples: &[Sample],
    training_context: usize,
) -> Result<LengthReport, UnrenderableSample> {
    let layout = Layout::new(tokenizer, template, false);
    let mut lengths = Vec::with_capacity(samples.len());
    let mut too_long_ids = Vec::new();
    let mut too_long = 0;
    for sample in samples {
        let tokens = layout.render(&[sample])?.tokens.len();
        if training_context > 0 && tokens > training_context {
            too_long += 1;
            if too_long_ids.len() < UnscoredGroup::FIRST_IDS {
                too_long_ids.push(sample.id.clone());
            }
        }
        lengths.push(tokens);
    }
    let zero_shot = Distribution::of(lengths.iter().copied());
    lengths.sort_unstable();
    let one_shot_at_most = lengths.iter().rev().take(2).sum();
    Ok(LengthReport {
        zero_shot,
        one_shot_at_most,
        training_context,
        too_long,
        too_long_ids,
    })
}

impl LengthReport {
    /// The report as lines for a terminal.
    pub fn render(&self) -> String {
        let mut out = format!(
            "lengths: zero-shot sequences {}; a one-shot sequence (example and sample) \
             at most {} tokens (exact figures: `miwv plan RUN` once the neighbours are found)\n",
            self.zero_shot.render(),
            self.one_shot_at_most
        );
        let trained = self.training_context;
        if trained == 0 {
            out += "context: the model does not say how long it was trained on\n";
        } else if self.too_long > 0 {
            out += &format!(
                "context: {} samples are longer alone than the {trained} tokens the model was \
                 trained on; they will be unscorable (too_long), never cut; first: {}\n",
                self.too_long,
                self.too_long_ids.join(", ")
            );
        } else {
            out += &format!(
                "context: every sample fits the {trained} tokens the model was trained on; \
                 --ctx-size auto sizes the context to the longest pair, and a pair longer \
                 than {trained} tokens is unscorable (example_too_long), never cut\n"
            );
        }
        out
    }
}

/// One sample as the scorer decodes it zero-shot: every token, and which are scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleView {
    /// The sample's index in the data.
    pub index: usize,
    /// The sample's id.
    pub id: String,
    /// The sequence's tokens.
    pub tokens: Vec<Token>,
    /// Whether each token is scored.
    pub scored: Vec<bool>,
}

/// How sample `index` of `samples` renders under `template` and which of its tokens are
/// scored; `None` when there is no such sample.
///
/// # Errors
/// [`UnrenderableSample`] when the chat template cannot render it.
pub fn view_sample(
    tokenizer: &impl Tokenize,
    template: &Template,
    samples: &[Sample],
    index: usize,
    append_eos: bool,
) -> Result<Option<SampleView>, UnrenderableSample> {
    let Some(sample) = samples.get(index) else {
        return Ok(None);
    };
    let rendered = Layout::new(tokenizer, template, append_eos).render(&[sample])?;
    let mut scored = vec![false; rendered.tokens.len()];
    for span in &rendered.spans {
        scored[span.clone()].fill(true);
    }
    Ok(Some(SampleView {
        index,
        id: sample.id.clone(),
        tokens: rendered.tokens,
        scored,
    }))
}

impl SampleView {
    /// The sequence's text with the scored tokens between `⟦` and `⟧`, then one line per
    /// token: position, `*` when scored, id and text. `piece` gives a token's bytes.
    pub fn render(&self, piece: impl Fn(Token) -> Vec<u8>) -> String {
        let mut text = String::new();
        let mut run: Vec<u8> = Vec::new();
        let mut in_scored = false;
        for (&token, &scored) in self.tokens.iter().zip(&self.scored) {
            if scored != in_scored {
                text.push_str(&String::from_utf8_lossy(&run));
                text.push(if scored { '⟦' } else { '⟧' });
                run.clear();
                in_scored = scored;
            }
            run.extend(piece(token));
        }
        text.push_str(&String::from_utf8_lossy(&run));
        if in_scored {
            text.push('⟧');
        }
        let scored = self.scored.iter().filter(|&&s| s).count();
        let mut out = format!(
            "sample {} (id {}): {} tokens, {} scored (between ⟦ and ⟧)\n{text}\n\ntokens (position, * scored, id, text):\n",
            self.index,
            self.id,
            self.tokens.len(),
            scored
        );
        for (position, (&token, &scored)) in self.tokens.iter().zip(&self.scored).enumerate() {
            out.push_str(&format!(
                "{position:>6} {} {token:>7} {:?}\n",
                if scored { '*' } else { ' ' },
                String::from_utf8_lossy(&piece(token))
            ));
        }
        out
    }
}

/// About 40 characters of `text` around character `at` (an estimate: byte-level pieces do not
/// map one to one onto characters).
fn excerpt(text: &str, at: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    let start = at.saturating_sub(20).min(chars.len());
    let end = (at + 20).min(chars.len());
    chars[start..end]
        .iter()
        .collect::<String>()
        .escape_debug()
        .to_string()
}

impl TokenizerReport {
    /// A summary and the first `limit` disagreements, with token pieces.
    pub fn render(&self, reference: &ReferenceTokenizer, limit: usize) -> String {
        let mut out = format!(
            "{} samples, {} segments: {} differ in {} samples\n",
            self.samples,
            self.segments,
            self.disagreements.len(),
            self.samples_differing
        );
        for d in self.disagreements.iter().take(limit) {
            let pieces = |ids: &[Token]| {
                let from = d.first_difference;
                ids[from..(from + 4).min(ids.len())]
                    .iter()
                    .map(|&t| format!("{t}:{:?}", reference.piece(t)))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            out.push_str(&format!(
                "\n{} {} (token {}, near \"{}\")\n  gguf:      {}\n  reference: {}\n",
                if d.id.is_empty() { "-" } else { &d.id },
                d.segment,
                d.first_difference,
                d.context,
                pieces(&d.gguf),
                pieces(&d.reference)
            ));
        }
        if self.disagreements.len() > limit {
            out.push_str(&format!(
                "\n... and {} more (all of them in --json)\n",
                self.disagreements.len() - limit
            ));
        }
        if self.disagreements.is_empty() {
            out.push_str("the GGUF vocabulary tokenizes this data exactly like the reference\n");
        }
        out
    }
}
