//! Templates and token layout: turning samples into the exact token sequences that are scored.
//!
//! The token layout rules of docs/METHOD.md live here: every segment (markup, prompt part, response, separator) is
//! tokenised on its own and the ids are concatenated, BOS once at the very start. A
//! conversation is one block whose assistant turns are all scored, each conditioned on the
//! conversation before it, as chat fine-tuning trains on them. Finding the response
//! start by tokenising a prefix string would let BPE merge across the boundary and shift the
//! scored range by a token, so no string is ever tokenised across a segment boundary.

use std::borrow::Cow;
use std::ops::Range;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::dataset::{Sample, Turn};
use crate::scoring::chat::{ChatSource, ChatTemplate, Message, RenderError, Segment, CHATML};
use crate::scoring::score::{mean_loss, Unscorable};

/// A token id in the scoring model's vocabulary.
pub type Token = i32;

/// What the layout needs from a tokenizer; the engine implements it with the GGUF vocabulary.
pub trait Tokenize {
    /// Tokenises `text` as plain text: no BOS/EOS, special-token syntax not parsed, so data
    /// that happens to contain `<|im_end|>` stays text.
    fn tokenize(&self, text: &str) -> Vec<Token>;
    /// Tokenises a template's own markup, where `<|im_start|>` and the like are special tokens.
    fn tokenize_markup(&self, text: &str) -> Vec<Token>;
    /// The BOS token, when the model wants one at the start of a sequence.
    fn bos(&self) -> Option<Token>;
    /// The end-of-sequence token.
    fn eos(&self) -> Option<Token>;
}

/// The template a user asks for; [`TemplateChoice::Auto`] and [`TemplateChoice::Model`] are
/// resolved against the model's GGUF metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TemplateChoice {
    /// The model's own chat template when its GGUF has one, otherwise Alpaca.
    Auto,
    /// The model's own chat template (an error when its GGUF has none).
    Model,
    /// ChatML (`<|im_start|>role\n...<|im_end|>\n`), miwv's built-in Jinja template.
    Chatml,
    /// The Stanford Alpaca prompt.
    Alpaca,
    /// `instruction\ninput\n` then the response.
    Raw,
    /// OpenDataArena's scorer: `User: {prompt}\nAssistant: {response}`.
    Oda,
}

/// How a sample is rendered as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    /// The Stanford Alpaca prompt, with and without input, ending in `### Response:` and a newline.
    Alpaca,
    /// `instruction\ninput\n` then the response.
    Raw,
    /// OpenDataArena's scorer layout, for side-by-side comparison with it.
    Oda,
    /// A Jinja chat template (the model's own, or ChatML) rendering whole conversations.
    Chat(ChatTemplate),
}

/// Why the asked `--template` cannot be used with this model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `--template model` with a GGUF that has no chat template.
    #[error("the GGUF has no chat template (tokenizer.chat_template); choose another --template")]
    Missing,
    /// The model's template does not compile.
    #[error("{0}; choose another --template (chatml, alpaca, raw, oda)")]
    Unusable(RenderError),
    /// A `--chat-template` file longer than any chat template.
    #[error("{bytes} bytes, more than the {limit} a chat template may have")]
    TooLong {
        /// Its size.
        bytes: u64,
        /// The limit.
        limit: usize,
    },
}

/// A sample the chat template cannot render, alone or after its example.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sample {id}{}: {source}", example.as_ref().map(|e| format!(" (after its example, sample {e})")).unwrap_or_default())]
pub struct UnrenderableSample {
    /// The sample's id.
    pub id: String,
    /// The example's id, when the sample was rendered after it.
    pub example: Option<String>,
    /// What went wrong.
    pub source: RenderError,
}

/// What a model offers for its own chat template: the GGUF's Jinja text and the texts of its
/// BOS and EOS tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelChat {
    /// `tokenizer.chat_template`.
    pub jinja: String,
    /// The BOS token's text (empty when the model has none).
    pub bos_token: String,
    /// The EOS token's text (empty when the model has none).
    pub eos_token: String,
}

impl Template {
    /// The template `choice` means for a model whose own chat template is `model_chat`
    /// (`None` when its GGUF has none): `auto` is the model's own template when there is one,
    /// otherwise Alpaca. `replacement` is the Jinja text of a `--chat-template` file, which
    /// takes the place of the model's own template.
    ///
    /// # Errors
    /// [`TemplateError`] when the model's own template is asked for and missing or unusable.
    pub fn resolve(
        choice: TemplateChoice,
        model_chat: Option<&ModelChat>,
        replacement: Option<&str>,
    ) -> Result<Self, TemplateError> {
        // A template without BOS and EOS of its own is rendered with the model's.
        let (bos, eos) = model_chat.map_or(("", ""), |m| (&m.bos_token, &m.eos_token));
        let own = || -> Result<Option<Template>, TemplateError> {
            let own = match replacement {
                Some(jinja) => Some((ChatSource::File, jinja)),
                None => model_chat.map(|m| (ChatSource::Gguf, m.jinja.as_str())),
            };
            own.map(|(source, jinja)| ChatTemplate::new(source, jinja, bos, eos))
                .transpose()
                .map(|t| t.map(Template::Chat))
                .map_err(TemplateError::Unusable)
        };
        let chatml = || {
            ChatTemplate::new(ChatSource::Chatml, CHATML, bos, eos).map_err(TemplateError::Unusable)
        };
        Ok(match choice {
            TemplateChoice::Auto => own()?.unwrap_or(Template::Alpaca),
            TemplateChoice::Model => own()?.ok_or(TemplateError::Missing)?,
            TemplateChoice::Chatml => Template::Chat(chatml()?),
            TemplateChoice::Alpaca => Template::Alpaca,
            TemplateChoice::Raw => Template::Raw,
            TemplateChoice::Oda => Template::Oda,
        })
    }
}

const ALPACA_WITH_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n";
const ALPACA_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n";

/// A piece of a sequence's text, tokenised on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Template markup, special tokens parsed.
    Markup(String),
    /// Data or template text, tokenised as plain text.
    Text(String),
    /// A response: its tokens are scored.
    Response(String),
    /// Where a response ends: the end-of-turn markup (chat) or the place for EOS. With EOS
    /// on, its first token is scored with the response.
    EndOfResponse(Option<String>),
}

/// A piece and the sample it belongs to: the index among the samples shown, or `None` for
/// what is shared or joins two samples (a header, the separator, the markup between the
/// example's last message and the target's first).
pub type OwnedPiece = (Option<usize>, Piece);

impl Template {
    /// A short name for messages and `run.json`: the text format's name, or the chat
    /// template's ([`ChatSource::name`]).
    pub fn name(&self) -> &'static str {
        match self {
            Template::Alpaca => "alpaca",
            Template::Raw => "raw",
            Template::Oda => "oda",
            Template::Chat(chat) => chat.source.name(),
        }
    }

    /// The Alpaca, raw or ODA prompt part of one turn (chat prompts are markup and text).
    /// It ends at a natural token boundary (a newline, or ODA's `Assistant:` before the
    /// response's own leading space), so the response's first token is one the model expects
    /// there (docs/METHOD.md).
    fn text_prompt(&self, turn: &Turn) -> String {
        match self {
            Template::Alpaca if turn.input.is_empty() => {
                format!("{ALPACA_NO_INPUT}{}\n\n### Response:\n", turn.instruction)
            }
            Template::Alpaca => format!(
                "{ALPACA_WITH_INPUT}{}\n\n### Input:\n{}\n\n### Response:\n",
                turn.instruction, turn.input
            ),
            Template::Raw => format!("{}\n", turn.prompt_text()),
            Template::Oda => format!("User: {}\nAssistant:", turn.prompt_text()),
            Template::Chat(_) => unreachable!("chat prompts are rendered by the template"),
        }
    }

    /// What joins one sample's text to the next in a text format, and one turn to the next
    /// within a sample; a chat template joins messages with its own markup.
    pub fn separator(&self) -> &'static str {
        match self {
            Template::Alpaca => "\n\n",
            Template::Raw | Template::Oda => "\n",
            Template::Chat(_) => "",
        }
    }

    /// The pieces of one text showing `samples` in order: a text format writes their blocks
    /// joined by the separator; a chat template renders all their messages as one
    /// conversation, so whatever it puts once at the top (a default system message, a date
    /// header) comes once, and each sample's own system message keeps its place.
    ///
    /// # Errors
    /// [`UnrenderableSample`] naming the last sample (and the one before it) when the chat
    /// template raises or its output cannot be split.
    pub fn pieces(&self, samples: &[&Sample]) -> Result<Vec<OwnedPiece>, UnrenderableSample> {
        let Template::Chat(chat) = self else {
            let mut pieces = Vec::new();
            for (n, sample) in samples.iter().enumerate() {
                if n > 0 {
                    pieces.push((None, Piece::Text(self.separator().into())));
                }
                pieces.extend(self.text_block(sample).into_iter().map(|p| (Some(n), p)));
            }
            return Ok(pieces);
        };
        let mut owned = Vec::new();
        let mut owners = Vec::new();
        for (n, sample) in samples.iter().enumerate() {
            let own = sample_messages(sample);
            owners.extend(std::iter::repeat_n(n, own.len()));
            owned.extend(own);
        }
        let messages: Vec<Message> = owned
            .iter()
            .map(|(role, text)| (*role, text.as_ref()))
            .collect();
        let mut pieces = Vec::with_capacity(2 * messages.len() + 1);
        let mut after_response = false;
        let segments = chat
            .segments(&messages)
            .map_err(|source| UnrenderableSample {
                id: samples.last().map_or(String::new(), |s| s.id.clone()),
                example: (samples.len() > 1).then(|| samples[0].id.clone()),
                source,
            })?;
        for segment in segments {
            match segment {
                Segment::Markup(text) => {
                    let j = pieces.len() / 2;
                    let owner = match (j.checked_sub(1).map(|p| owners[p]), owners.get(j)) {
                        (None, _) => None,
                        (Some(before), None) => Some(before),
                        (Some(before), Some(&after)) => (before == after).then_some(before),
                    };
                    let piece = if after_response {
                        Piece::EndOfResponse(Some(text))
                    } else {
                        Piece::Markup(text)
                    };
                    pieces.push((owner, piece));
                }
                Segment::Content { message, text } => {
                    after_response = messages[message].0 == "assistant";
                    let piece = if after_response {
                        Piece::Response(text)
                    } else {
                        Piece::Text(text)
                    };
                    pieces.push((Some(owners[message]), piece));
                }
            }
        }
        Ok(pieces)
    }

    /// Renders every sample alone and after itself, as it will be shown as a target and as
    /// an example, so that a template that refuses a sample says so before any model time is
    /// spent (the text formats render anything).
    ///
    /// # Errors
    /// The first [`UnrenderableSample`] in dataset order.
    pub fn check_samples(&self, samples: &[Sample]) -> Result<(), UnrenderableSample> {
        if !matches!(self, Template::Chat(_)) {
            return Ok(());
        }
        samples
            .par_iter()
            .find_map_first(|sample| {
                self.pieces(&[sample])
                    .and_then(|_| self.pieces(&[sample, sample]))
                    .err()
            })
            .map_or(Ok(()), Err)
    }

    /// A sample's block in a text format: system message, then each turn's prompt and
    /// response.
    fn text_block(&self, sample: &Sample) -> Vec<Piece> {
        let mut pieces = Vec::new();
        if !sample.system.is_empty() {
            let system = match self {
                Template::Oda => format!("System: {}\n", sample.system),
                _ => format!("{}{}", sample.system, self.separator()),
            };
            pieces.push(Piece::Text(system));
        }
        for (t, turn) in sample.turns.iter().enumerate() {
            if t > 0 {
                pieces.push(Piece::Text(self.separator().into()));
            }
            pieces.push(Piece::Text(self.text_prompt(turn)));
            let response = match self {
                // ODA writes `Assistant: {output}`: the space belongs to the response's first
                // token, as BPE reads it.
                Template::Oda => format!(" {}", turn.output),
                _ => turn.output.clone(),
            };
            pieces.push(Piece::Response(response));
            pieces.push(Piece::EndOfResponse(None));
        }
        pieces
    }
}

/// A sample as chat messages: its system message (when it has one), then each turn's prompt
/// and response.
pub fn sample_messages(sample: &Sample) -> Vec<(&'static str, Cow<'_, str>)> {
    let system = (!sample.system.is_empty()).then_some(("system", Cow::from(&sample.system)));
    let turns = sample.turns.iter().flat_map(|turn| {
        let prompt = if turn.input.is_empty() {
            Cow::from(&turn.instruction)
        } else {
            Cow::from(turn.prompt_text())
        };
        [("user", prompt), ("assistant", Cow::from(&turn.output))]
    });
    system.into_iter().chain(turns).collect()
}

/// The tokens of one text of one or more samples (see [`Template::pieces`]) and where the
/// last sample's responses are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Every token, BOS included.
    pub tokens: Vec<Token>,
    /// Positions of the last sample's scored (response) tokens, one range per turn.
    pub spans: Vec<Range<usize>>,
}

impl Rendered {
    /// Number of scored tokens.
    pub fn response_len(&self) -> usize {
        self.spans.iter().map(ExactSizeIterator::len).sum()
    }

    /// The sequence to score: a sample alone (zero-shot) or after its example (one-shot).
    /// Its length is not checked here: the plan decides, for every path alike, what fits the
    /// context ([`crate::scoring::sequences::PlanTable`]).
    ///
    /// # Errors
    /// [`Unscorable::EmptyResponse`] when no response token can be scored.
    pub fn scored(self) -> Result<ScoredSequence, Unscorable> {
        if self.response_len() == 0 || self.tokens.len() < 2 {
            return Err(Unscorable::EmptyResponse);
        }
        Ok(ScoredSequence {
            tokens: self.tokens,
            spans: self.spans,
        })
    }
}

/// A token sequence and the positions whose tokens are scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoredSequence {
    /// The whole sequence, BOS included.
    pub tokens: Vec<Token>,
    /// Positions of the scored (response) tokens, ascending; never position 0, since a
    /// token is scored from the logits of the token before it.
    pub spans: Vec<Range<usize>>,
}

impl ScoredSequence {
    /// From the first to the last scored position: the rows the engine computes.
    pub fn target(&self) -> Range<usize> {
        match (self.spans.first(), self.spans.last()) {
            (Some(first), Some(last)) => first.start..last.end,
            _ => 0..0,
        }
    }

    /// The mean loss of the scored tokens, from the log-probabilities of every position in
    /// [`ScoredSequence::target`] (prompt tokens between turns included, and skipped here).
    pub fn mean_loss(&self, target_log_probs: &[f32]) -> f32 {
        let start = self.target().start;
        let scored: Vec<f32> = self
            .spans
            .iter()
            .flat_map(|span| &target_log_probs[span.start - start..span.end - start])
            .copied()
            .collect();
        mean_loss(&scored)
    }
}

/// Builds the scored sequences for one template and tokenizer.
pub struct Layout<'t, T: Tokenize> {
    tokenizer: &'t T,
    template: Template,
    bos: Option<Token>,
    append_eos: bool,
}

impl<'t, T: Tokenize> Layout<'t, T> {
    /// A layout; `append_eos` scores the end of every response: the model's EOS token, or a
    /// chat template's end-of-turn token. A text format starts every sequence with the BOS
    /// token when the model wants one; a chat template emits its own, as transformers
    /// tokenises a rendered conversation without adding special tokens.
    pub fn new(tokenizer: &'t T, template: &Template, append_eos: bool) -> Self {
        let bos = match template {
            Template::Chat(_) => None,
            _ => tokenizer.bos(),
        };
        Self {
            tokenizer,
            template: template.clone(),
            bos,
            append_eos,
        }
    }

    /// The tokens of `samples` shown in order, each piece tokenised on its own; the spans
    /// are the last sample's responses.
    ///
    /// # Errors
    /// [`UnrenderableSample`] when the chat template cannot render them.
    pub fn render(&self, samples: &[&Sample]) -> Result<Rendered, UnrenderableSample> {
        let last = samples.len().checked_sub(1);
        let mut tokens: Vec<Token> = self.bos.into_iter().collect();
        let mut spans: Vec<Range<usize>> = Vec::new();
        // Whether the piece before was a response with tokens: its end is marked, scored or not.
        let mut answered = false;
        for (owner, piece) in self.template.pieces(samples)? {
            let start = tokens.len();
            let scored = owner.is_some() && owner == last;
            let is_response = matches!(piece, Piece::Response(_));
            match piece {
                Piece::Markup(text) => tokens.extend(self.tokenizer.tokenize_markup(&text)),
                Piece::Text(text) => tokens.extend(self.tokenizer.tokenize(&text)),
                Piece::Response(text) => {
                    tokens.extend(self.tokenizer.tokenize(&text));
                    if scored {
                        spans.push(start..tokens.len());
                    }
                }
                Piece::EndOfResponse(markup) => {
                    match markup {
                        Some(text) => tokens.extend(self.tokenizer.tokenize_markup(&text)),
                        None if answered && self.append_eos => tokens.extend(self.tokenizer.eos()),
                        None => {}
                    }
                    let span = spans.last_mut().filter(|s| scored && s.end == start);
                    if let Some(span) =
                        span.filter(|_| answered && self.append_eos && tokens.len() > start)
                    {
                        span.end += 1;
                    }
                }
            }
            answered = is_response && tokens.len() > start;
        }
        spans.retain(|span| !span.is_empty());
        Ok(Rendered { tokens, spans })
    }

    /// `[BOS] y`: the responses alone, for IFD's L(y), from a sample's own rendering. Their
    /// tokens are the same as there; with no BOS the first one has nothing to be predicted
    /// from and is not scored, as in the Cherry LLM reference. `None` when nothing is left to
    /// score.
    pub fn response_only(&self, rendered: &Rendered) -> Option<ScoredSequence> {
        let mut tokens: Vec<Token> = self.tokenizer.bos().into_iter().collect();
        let mut spans = Vec::with_capacity(rendered.spans.len());
        for span in &rendered.spans {
            let start = tokens.len().max(1);
            tokens.extend(&rendered.tokens[span.clone()]);
            if start < tokens.len() {
                spans.push(start..tokens.len());
            }
        }
        (!spans.is_empty()).then_some(ScoredSequence { tokens, spans })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A byte-level tokenizer with BPE-like merges of "ab", enough to exercise segment rules;
    /// in markup, `<E>` is one special token.
    pub(crate) struct ByteTokenizer;

    impl Tokenize for ByteTokenizer {
        fn tokenize(&self, text: &str) -> Vec<Token> {
            let bytes = text.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i..].starts_with(b"ab") {
                    out.push(1000);
                    i += 2;
                } else {
                    out.push(bytes[i] as Token);
                    i += 1;
                }
            }
            out
        }
        fn tokenize_markup(&self, text: &str) -> Vec<Token> {
            text.split("<E>")
                .enumerate()
                .flat_map(|(n, part)| {
                    let special = (n > 0).then_some(2000);
                    special.into_iter().chain(self.tokenize(part))
                })
                .collect()
        }
        fn bos(&self) -> Option<Token> {
            Some(1)
        }
        fn eos(&self) -> Option<Token> {
            Some(2)
        }
    }

    pub(crate) fn sample(instruction: &str, output: &str) -> Sample {
        conversation(&[(instruction, output)])
    }

    fn conversation(turns: &[(&str, &str)]) -> Sample {
        Sample {
            id: "x".into(),
            system: String::new(),
            turns: turns
                .iter()
                .map(|(instruction, output)| Turn {
                    instruction: (*instruction).into(),
                    input: String::new(),
                    output: (*output).into(),
                })
                .collect(),
            record: Default::default(),
        }
    }

    fn text(tokens: &[Token]) -> String {
        tokens
            .iter()
            .map(|&t| match t {
                1000 => "ab".to_string(),
                2000 => "<E>".to_string(),
                t @ (1 | 2) => format!("[{t}]"),
                t => char::from(t as u8).to_string(),
            })
            .collect()
    }

    /// A chat template with a header, a default system message and `<E>` as its
    /// end-of-turn special token.
    fn chat() -> Template {
        Template::Chat(
            ChatTemplate::new(
                ChatSource::File,
                "H|{% if messages[0].role != 'system' %}S:default<E>\n{% endif %}\
                 {% for m in messages %}{{ {'system': 'S:', 'user': 'U:', 'assistant': 'A:'}[m.role] }}\
                 {{ m.content }}<E>\n{% endfor %}",
                "",
                "<E>",
            )
            .unwrap(),
        )
    }

    fn zero<T: Tokenize>(
        layout: &Layout<T>,
        sample: &Sample,
    ) -> Result<ScoredSequence, Unscorable> {
        layout.render(&[sample]).unwrap().scored()
    }

    fn one<T: Tokenize>(
        layout: &Layout<T>,
        example: &Sample,
        target: &Sample,
    ) -> Result<ScoredSequence, Unscorable> {
        layout.render(&[example, target]).unwrap().scored()
    }

    fn scored(seq: &ScoredSequence) -> Vec<String> {
        seq.spans
            .iter()
            .map(|s| text(&seq.tokens[s.clone()]))
            .collect()
    }

    #[test]
    fn segments_are_tokenised_separately() {
        // "a" ends the raw prompt ("a\n"), the response starts with "b": no merge across.
        let layout = Layout::new(&ByteTokenizer, &Template::Raw, false);
        let rendered = layout.render(&[&sample("a", "bab")]).unwrap();
        assert_eq!(
            rendered.tokens,
            vec![1, b'a' as Token, b'\n' as Token, b'b' as Token, 1000]
        );
        assert_eq!(rendered.spans, std::iter::once(3..5).collect::<Vec<_>>());
        let seq = rendered.clone().scored().unwrap();
        assert_eq!(&seq.tokens[seq.target()], &[b'b' as Token, 1000]);
    }

    #[test]
    fn one_shot_starts_with_the_example_zero_shot_sequence() {
        for template in [Template::Alpaca, Template::Raw, Template::Oda, chat()] {
            let layout = Layout::new(&ByteTokenizer, &template, true);
            let example = conversation(&[("first", "one"), ("again", "two")]);
            let target = sample("second", "three");
            let zero_k = zero(&layout, &example).unwrap();
            let one = one(&layout, &example, &target).unwrap();
            assert_eq!(
                &one.tokens[..zero_k.tokens.len()],
                &zero_k.tokens[..],
                "{template:?}"
            );
            let zero_i = zero(&layout, &target).unwrap();
            assert_eq!(
                &one.tokens[one.target()],
                &zero_i.tokens[zero_i.target()],
                "{template:?}"
            );
            assert_eq!(one.spans.len(), 1, "only the target is scored");
        }
    }

    #[test]
    fn a_chat_one_shot_is_one_conversation_with_the_default_system_message_once() {
        let layout = Layout::new(&ByteTokenizer, &chat(), false);
        let seq = one(&layout, &sample("q1", "a1"), &sample("q2", "a2")).unwrap();
        assert_eq!(
            text(&seq.tokens),
            "H|S:default<E>\nU:q1<E>\nA:a1<E>\nU:q2<E>\nA:a2<E>\n"
        );
        assert_eq!(scored(&seq), ["a2"]);
        // The target's own system message keeps its place, after the example.
        let mut target = sample("q2", "a2");
        target.system = "sys".into();
        let seq = one(&layout, &sample("q1", "a1"), &target).unwrap();
        assert_eq!(
            text(&seq.tokens),
            "H|S:default<E>\nU:q1<E>\nA:a1<E>\nS:sys<E>\nU:q2<E>\nA:a2<E>\n"
        );
    }

    #[test]
    fn every_assistant_turn_is_scored_and_nothing_else() {
        let layout = Layout::new(&ByteTokenizer, &chat(), false);
        let mut conv = conversation(&[("hi", "yo"), ("more", "ok")]);
        conv.system = "be brief".into();
        let seq = zero(&layout, &conv).unwrap();
        assert_eq!(
            text(&seq.tokens),
            "H|S:be brief<E>\nU:hi<E>\nA:yo<E>\nU:more<E>\nA:ok<E>\n",
            "no BOS: a chat template writes its own"
        );
        assert_eq!(scored(&seq), ["yo", "ok"]);
        // The loss is the mean over both responses' tokens, skipping the prompt between.
        let target = seq.target();
        let log_probs: Vec<f32> = target.clone().map(|p| -(p as f32)).collect();
        let expected: f32 = seq
            .spans
            .iter()
            .flat_map(|s| s.clone())
            .map(|p| p as f32)
            .sum::<f32>()
            / 4.0;
        assert!((seq.mean_loss(&log_probs) - expected).abs() < 1e-6);

        // With EOS on, the end-of-turn token is scored with each response.
        let layout = Layout::new(&ByteTokenizer, &chat(), true);
        let seq = zero(&layout, &conv).unwrap();
        assert_eq!(scored(&seq), ["yo<E>", "ok<E>"]);
    }

    #[test]
    fn a_template_that_raises_names_the_sample_and_its_message() {
        let strict = Template::Chat(
            ChatTemplate::new(
                ChatSource::File,
                "{% for m in messages %}{% if m.role == 'system' and not loop.first %}\
                 {{ raise_exception('System message must come first') }}{% endif %}\
                 {{ m.content }}{% endfor %}",
                "",
                "",
            )
            .unwrap(),
        );
        let layout = Layout::new(&ByteTokenizer, &strict, false);
        let mut target = sample("q", "a");
        target.id = "t7".into();
        target.system = "sys".into();
        assert!(layout.render(&[&target]).is_ok());
        let mut example = sample("e", "f");
        example.id = "e3".into();
        let error = layout.render(&[&example, &target]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "sample t7 (after its example, sample e3): the chat template says: System message must come first"
        );
        // Checked up front: the sample after itself shows the same refusal.
        let error = strict.check_samples(&[example, target]).unwrap_err();
        assert_eq!(
            (error.id.as_str(), error.example.as_deref()),
            ("t7", Some("t7"))
        );
    }

    #[test]
    fn oda_and_alpaca_texts() {
        let layout = Layout::new(&ByteTokenizer, &Template::Oda, false);
        let seq = zero(&layout, &conversation(&[("q", "a1"), ("r", "a2")])).unwrap();
        assert_eq!(
            text(&seq.tokens),
            "[1]User: q\nAssistant: a1\nUser: r\nAssistant: a2"
        );
        assert_eq!(scored(&seq), [" a1", " a2"], "the space is the response's");

        let layout = Layout::new(&ByteTokenizer, &Template::Alpaca, false);
        let mut with_input = sample("Add.", "5");
        with_input.turns[0].input = "2 3".into();
        let seq = zero(&layout, &with_input).unwrap();
        assert_eq!(
            text(&seq.tokens[1..]),
            format!("{ALPACA_WITH_INPUT}Add.\n\n### Input:\n2 3\n\n### Response:\n5")
        );
    }

    #[test]
    fn response_only_scores_the_same_tokens() {
        let layout = Layout::new(&ByteTokenizer, &Template::Alpaca, true);
        let rendered = layout
            .render(&[&conversation(&[("q", "one"), ("r", "two")])])
            .unwrap();
        let alone = layout.response_only(&rendered).unwrap();
        let zero = rendered.scored().unwrap();
        assert_eq!(alone.tokens[0], 1, "BOS first");
        let tokens = |s: &ScoredSequence| -> Vec<Token> {
            s.spans
                .iter()
                .flat_map(|r| s.tokens[r.clone()].to_vec())
                .collect()
        };
        assert_eq!(tokens(&alone), tokens(&zero));
    }

    #[test]
    fn a_response_without_tokens_is_unscorable() {
        let layout = Layout::new(&ByteTokenizer, &Template::Raw, false);
        assert_eq!(
            zero(&layout, &sample("q", "")),
            Err(Unscorable::EmptyResponse)
        );
        assert_eq!(
            zero(&layout, &conversation(&[])),
            Err(Unscorable::EmptyResponse)
        );
    }
}
