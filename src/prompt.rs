//! Templates and token layout: turning samples into the exact token sequences that are scored.
//!
//! The token layout rules of docs/METHOD.md live here: every segment (markup, prompt part, response, separator) is
//! tokenised on its own and the ids are concatenated, BOS once at the very start. A
//! conversation is one block whose assistant turns are all scored, each conditioned on the
//! conversation before it, as chat fine-tuning trains on them. Finding the response
//! start by tokenising a prefix string would let BPE merge across the boundary and shift the
//! scored range by a token, so no string is ever tokenised across a segment boundary.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::dataset::{Sample, Turn};
use crate::score::{mean_loss, Unscorable};

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
/// resolved against the model's GGUF metadata by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TemplateChoice {
    /// The model's own chat template when its GGUF has one, otherwise Alpaca.
    Auto,
    /// The model's own chat template (an error when its GGUF has none).
    Model,
    /// ChatML (`<|im_start|>role\n...<|im_end|>\n`).
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
    /// A chat format: messages wrapped in the format's markup.
    Chat(ChatMarkup),
}

/// The markup a chat format puts around messages, split into the pieces a segment-wise layout
/// needs. Markup is tokenised with special tokens parsed; the messages never are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMarkup {
    /// Where the markup comes from (`chatml`, or the llama.cpp template the GGUF's matched).
    pub name: String,
    /// Text once at the start of every sequence, before the first message.
    pub header: String,
    /// Around a system message; `None` when the format has no system role (the system text
    /// then opens the first user message).
    pub system: Option<(String, String)>,
    /// Before a user message.
    pub user_open: String,
    /// After a user message, up to where the assistant's response starts.
    pub assistant_open: String,
    /// After the assistant's response (its first token is the end-of-turn token).
    pub assistant_close: String,
}

impl ChatMarkup {
    /// ChatML, as written by Qwen, SmolLM and many others.
    pub fn chatml() -> Self {
        Self {
            name: "chatml".into(),
            header: String::new(),
            system: Some(("<|im_start|>system\n".into(), "<|im_end|>\n".into())),
            user_open: "<|im_start|>user\n".into(),
            assistant_open: "<|im_end|>\n<|im_start|>assistant\n".into(),
            assistant_close: "<|im_end|>\n".into(),
        }
    }
}

/// A chat message for a renderer: role (`system`, `user`, `assistant`) and content.
pub type Message<'a> = (&'a str, &'a str);

/// Why a chat template could not be split into markup pieces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the chat template cannot be split into per-message markup: {0}")]
pub struct MarkupError(String);

impl ChatMarkup {
    /// Learns a chat format's markup from a renderer of whole conversations (llama.cpp's
    /// template engine for a GGUF's own template): conversations of placeholder messages are
    /// rendered and the text between the placeholders is the markup. `render` gets the
    /// messages and whether to open an assistant turn at the end.
    ///
    /// # Errors
    /// [`MarkupError`] when the renders do not split consistently (a template that treats
    /// some turns differently from others).
    pub fn discover(
        name: &str,
        render: impl Fn(&[Message], bool) -> Option<String>,
    ) -> Result<Self, MarkupError> {
        const USER: [&str; 2] = ["MIWVuserMIWV1", "MIWVuserMIWV2"];
        const ASSISTANT: [&str; 2] = ["MIWVassistantMIWV1", "MIWVassistantMIWV2"];
        const SYSTEM: &str = "MIWVsystemMIWV";
        let fail = |what: &str| MarkupError(what.to_string());
        let split = |messages: &[Message]| -> Result<Vec<String>, MarkupError> {
            let text = render(messages, false)
                .ok_or_else(|| fail("the template engine cannot render it"))?;
            let mut parts = Vec::new();
            let mut rest = text.as_str();
            for (_, content) in messages {
                let (before, after) = rest
                    .split_once(content)
                    .ok_or_else(|| fail("a message's text does not appear as written"))?;
                parts.push(before.to_string());
                rest = after;
            }
            parts.push(rest.to_string());
            Ok(parts)
        };
        let two = split(&[
            ("user", USER[0]),
            ("assistant", ASSISTANT[0]),
            ("user", USER[1]),
            ("assistant", ASSISTANT[1]),
        ])?;
        let one = split(&[("user", USER[0]), ("assistant", ASSISTANT[0])])?;
        let assistant_open = two[1].clone();
        let assistant_close = one[2].clone();
        if two[3] != assistant_open || one[..2] != two[..2] {
            return Err(fail("the second turn is marked up unlike the first"));
        }
        let user_open = two[2]
            .strip_prefix(&assistant_close)
            .ok_or_else(|| fail("a turn's end differs inside and at the end of a conversation"))?
            .to_string();
        let header = two[0]
            .strip_suffix(&user_open)
            .ok_or_else(|| fail("the first user message is opened unlike the others"))?
            .to_string();
        let system = split(&[
            ("system", SYSTEM),
            ("user", USER[0]),
            ("assistant", ASSISTANT[0]),
        ])
        .ok()
        .and_then(|parts| {
            let open = parts[0].strip_prefix(&header)?;
            let close = parts[1].strip_suffix(&user_open)?;
            (parts[2] == assistant_open && parts[3] == assistant_close)
                .then(|| (open.to_string(), close.to_string()))
        });
        Ok(Self {
            name: name.to_string(),
            header,
            system,
            user_open,
            assistant_open,
            assistant_close,
        })
    }
}

/// Why the asked `--template` cannot be used with this model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `--template model` with a GGUF that has no chat template.
    #[error("the GGUF has no chat template (tokenizer.chat_template); choose another --template")]
    Missing,
    /// The model's template marks up turns inconsistently.
    #[error("{0}; choose another --template (chatml, alpaca, raw, oda)")]
    Unsplittable(MarkupError),
}

impl Template {
    /// The template `choice` means for a model whose own chat template renders through
    /// `model_chat` (`None` when the model has none): `auto` is the model's own template when
    /// there is one, otherwise Alpaca.
    ///
    /// # Errors
    /// [`TemplateError`] when the model's own template is asked for and missing or unusable.
    pub fn resolve<R: Fn(&[Message], bool) -> Option<String>>(
        choice: TemplateChoice,
        model_chat: Option<R>,
    ) -> Result<Self, TemplateError> {
        let own = || -> Result<Option<ChatMarkup>, TemplateError> {
            model_chat
                .map(|render| ChatMarkup::discover("model", render))
                .transpose()
                .map_err(TemplateError::Unsplittable)
        };
        Ok(match choice {
            TemplateChoice::Auto => own()?.map_or(Template::Alpaca, Template::Chat),
            TemplateChoice::Model => Template::Chat(own()?.ok_or(TemplateError::Missing)?),
            TemplateChoice::Chatml => Template::Chat(ChatMarkup::chatml()),
            TemplateChoice::Alpaca => Template::Alpaca,
            TemplateChoice::Raw => Template::Raw,
            TemplateChoice::Oda => Template::Oda,
        })
    }
}

const ALPACA_WITH_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n";
const ALPACA_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n";

/// A piece of a sample's text, tokenised on its own.
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

impl Template {
    /// A short name for messages and `run.json`.
    pub fn name(&self) -> &str {
        match self {
            Template::Alpaca => "alpaca",
            Template::Raw => "raw",
            Template::Oda => "oda",
            Template::Chat(markup) => &markup.name,
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
            Template::Chat(_) => unreachable!("chat prompts are pieces"),
        }
    }

    /// What joins the example's block to the target's block in a one-shot sequence, and one
    /// turn to the next within a block.
    pub fn separator(&self) -> &'static str {
        match self {
            Template::Alpaca => "\n\n",
            Template::Raw | Template::Oda => "\n",
            Template::Chat(_) => "",
        }
    }

    /// Markup once at the start of every sequence.
    pub fn header(&self) -> &str {
        match self {
            Template::Chat(markup) => &markup.header,
            _ => "",
        }
    }

    /// A sample's block as pieces, in order: system message, then each turn's prompt and
    /// response.
    pub fn pieces(&self, sample: &Sample) -> Vec<Piece> {
        let mut pieces = Vec::new();
        let mut system = (!sample.system.is_empty()).then_some(sample.system.as_str());
        for (t, turn) in sample.turns.iter().enumerate() {
            match self {
                Template::Chat(markup) => {
                    let mut prompt = turn.prompt_text();
                    match (system.take(), &markup.system) {
                        (Some(text), Some((open, close))) => {
                            pieces.push(Piece::Markup(open.clone()));
                            pieces.push(Piece::Text(text.to_string()));
                            pieces.push(Piece::Markup(close.clone()));
                        }
                        (Some(text), None) => prompt = format!("{text}\n\n{prompt}"),
                        (None, _) => {}
                    }
                    pieces.push(Piece::Markup(markup.user_open.clone()));
                    pieces.push(Piece::Text(prompt));
                    pieces.push(Piece::Markup(markup.assistant_open.clone()));
                    pieces.push(Piece::Response(turn.output.clone()));
                    pieces.push(Piece::EndOfResponse(Some(markup.assistant_close.clone())));
                }
                _ => {
                    if let Some(text) = system.take() {
                        let system = match self {
                            Template::Oda => format!("System: {text}\n"),
                            _ => format!("{text}{}", self.separator()),
                        };
                        pieces.push(Piece::Text(system));
                    }
                    if t > 0 {
                        pieces.push(Piece::Text(self.separator().into()));
                    }
                    pieces.push(Piece::Text(self.text_prompt(turn)));
                    let response = match self {
                        // ODA writes `Assistant: {output}`: the space belongs to the
                        // response's first token, as BPE reads it.
                        Template::Oda => format!(" {}", turn.output),
                        _ => turn.output.clone(),
                    };
                    pieces.push(Piece::Response(response));
                    pieces.push(Piece::EndOfResponse(None));
                }
            }
        }
        pieces
    }
}

/// A sample's tokens: its templated turns, and which of them are response tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Every token of the block.
    pub tokens: Vec<Token>,
    /// Positions (within `tokens`) of the scored response tokens, one range per turn.
    pub spans: Vec<Range<usize>>,
}

impl Block {
    /// Number of response tokens (the scored ones).
    pub fn response_len(&self) -> usize {
        self.spans.iter().map(ExactSizeIterator::len).sum()
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

/// Builds blocks and sequences for one template and tokenizer.
pub struct Layout<'t, T: Tokenize> {
    tokenizer: &'t T,
    template: Template,
    prefix: Vec<Token>,
    separator: Vec<Token>,
    append_eos: bool,
}

impl<'t, T: Tokenize> Layout<'t, T> {
    /// A layout; `append_eos` scores the end of every response: the model's EOS token, or a
    /// chat format's end-of-turn token.
    pub fn new(tokenizer: &'t T, template: &Template, append_eos: bool) -> Self {
        let mut prefix: Vec<Token> = tokenizer.bos().into_iter().collect();
        prefix.extend(tokenizer.tokenize_markup(template.header()));
        Self {
            tokenizer,
            template: template.clone(),
            prefix,
            separator: tokenizer.tokenize(template.separator()),
            append_eos,
        }
    }

    /// The sample's block, each piece tokenised separately.
    pub fn block(&self, sample: &Sample) -> Block {
        let mut tokens = Vec::new();
        let mut spans: Vec<Range<usize>> = Vec::new();
        for piece in self.template.pieces(sample) {
            match piece {
                Piece::Markup(text) => tokens.extend(self.tokenizer.tokenize_markup(&text)),
                Piece::Text(text) => tokens.extend(self.tokenizer.tokenize(&text)),
                Piece::Response(text) => {
                    let start = tokens.len();
                    tokens.extend(self.tokenizer.tokenize(&text));
                    spans.push(start..tokens.len());
                }
                Piece::EndOfResponse(markup) => {
                    let span = spans.last_mut().expect("a response comes first");
                    let answered = span.end > span.start;
                    match markup {
                        Some(text) => tokens.extend(self.tokenizer.tokenize_markup(&text)),
                        None if answered && self.append_eos => tokens.extend(self.tokenizer.eos()),
                        None => {}
                    }
                    if answered && self.append_eos {
                        span.end = (span.end + 1).min(tokens.len());
                    }
                }
            }
        }
        spans.retain(|span| span.end > span.start);
        Block { tokens, spans }
    }

    /// `[BOS] header block_i`: the response scored with its own prompt only.
    pub fn zero_shot(&self, target: &Block, max_len: usize) -> Result<ScoredSequence, Unscorable> {
        self.one_shot(None, target, max_len).map(|(seq, _)| seq)
    }

    /// `[BOS] header block_k SEP block_i`; when it does not fit `max_len`, the example is
    /// shortened from the left (the target never is). Returns the sequence and how many
    /// example tokens were dropped.
    pub fn one_shot(
        &self,
        example: Option<&Block>,
        target: &Block,
        max_len: usize,
    ) -> Result<(ScoredSequence, usize), Unscorable> {
        if target.response_len() == 0 {
            return Err(Unscorable::EmptyResponse);
        }
        let base = self.prefix.len() + target.tokens.len();
        if base > max_len || base < 2 {
            return Err(Unscorable::TooLong);
        }
        let mut tokens = Vec::with_capacity(max_len.min(base + 2 * target.tokens.len()));
        tokens.extend(&self.prefix);
        let mut dropped = 0;
        if let Some(example) = example {
            let room = max_len - base;
            let kept = room
                .saturating_sub(self.separator.len())
                .min(example.tokens.len());
            dropped = example.tokens.len() - kept;
            if kept > 0 {
                tokens.extend(&example.tokens[dropped..]);
                tokens.extend(&self.separator);
            }
        }
        Ok((shifted(tokens, target), dropped))
    }

    /// `[BOS] y`: the responses alone, for IFD's L(y). Their tokens are the same as in the
    /// block; with no BOS the first one has nothing to be predicted from and is not scored,
    /// as in the Cherry LLM reference. `None` when nothing is left to score or it does not fit.
    pub fn response_only(&self, target: &Block, max_len: usize) -> Option<ScoredSequence> {
        let mut tokens: Vec<Token> = self.tokenizer.bos().into_iter().collect();
        let mut spans = Vec::with_capacity(target.spans.len());
        for span in &target.spans {
            let start = tokens.len().max(1);
            tokens.extend(&target.tokens[span.clone()]);
            if start < tokens.len() {
                spans.push(start..tokens.len());
            }
        }
        (!spans.is_empty() && tokens.len() <= max_len).then_some(ScoredSequence { tokens, spans })
    }
}

/// `tokens` followed by the target block, with the block's spans moved to where it starts.
fn shifted(mut tokens: Vec<Token>, target: &Block) -> ScoredSequence {
    let offset = tokens.len();
    tokens.extend(&target.tokens);
    let spans = target
        .spans
        .iter()
        .map(|span| span.start + offset..span.end + offset)
        .collect();
    ScoredSequence { tokens, spans }
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

    fn markup() -> ChatMarkup {
        ChatMarkup {
            name: "test".into(),
            header: "H|".into(),
            system: Some(("S:".into(), "<E>\n".into())),
            user_open: "U:".into(),
            assistant_open: "<E>\nA:".into(),
            assistant_close: "<E>\n".into(),
        }
    }

    /// A ChatML renderer with a header, as a template engine would write it.
    fn render_chatml(messages: &[Message], add_assistant: bool) -> Option<String> {
        let mut out = String::from("<s>");
        for (role, content) in messages {
            out += &format!("<|im_start|>{role}\n{content}<|im_end|>\n");
        }
        if add_assistant {
            out += "<|im_start|>assistant\n";
        }
        Some(out)
    }

    #[test]
    fn chat_markup_is_learned_from_renders() {
        let markup = ChatMarkup::discover("model", render_chatml).unwrap();
        let mut expected = ChatMarkup::chatml();
        expected.name = "model".into();
        expected.header = "<s>".into();
        assert_eq!(markup, expected);

        // A template that folds the system message into the first user message.
        let folded = |messages: &[Message], _: bool| {
            let mut out = String::new();
            let mut system = "";
            for (role, content) in messages {
                match *role {
                    "system" => system = content,
                    "user" => out += &format!("[INST] {system}{content} [/INST]"),
                    _ => out += &format!(" {content}</s>"),
                }
            }
            Some(out)
        };
        let markup = ChatMarkup::discover("model", folded).unwrap();
        assert_eq!(markup.system, None);
        assert_eq!(markup.user_open, "[INST] ");

        // A template that drops a message cannot be split.
        let lossy = |messages: &[Message], _: bool| Some(messages[0].1.to_string());
        assert!(ChatMarkup::discover("model", lossy).is_err());
    }

    #[test]
    fn segments_are_tokenised_separately() {
        // "a" ends the raw prompt ("a\n"), the response starts with "b": no merge across.
        let layout = Layout::new(&ByteTokenizer, &Template::Raw, false);
        let block = layout.block(&sample("a", "bab"));
        assert_eq!(
            block.tokens,
            vec![b'a' as Token, b'\n' as Token, b'b' as Token, 1000]
        );
        assert_eq!(block.spans, std::iter::once(2..4).collect::<Vec<_>>());
        let seq = layout.zero_shot(&block, 100).unwrap();
        assert_eq!(seq.tokens[0], 1);
        assert_eq!(&seq.tokens[seq.target()], &[b'b' as Token, 1000]);
    }

    #[test]
    fn one_shot_starts_with_the_example_zero_shot_sequence() {
        for template in [
            Template::Alpaca,
            Template::Raw,
            Template::Oda,
            Template::Chat(markup()),
        ] {
            let layout = Layout::new(&ByteTokenizer, &template, true);
            let example = layout.block(&conversation(&[("first", "one"), ("again", "two")]));
            let target = layout.block(&sample("second", "three"));
            let zero_k = layout.zero_shot(&example, 10_000).unwrap();
            let (one, dropped) = layout.one_shot(Some(&example), &target, 10_000).unwrap();
            assert_eq!(dropped, 0);
            assert_eq!(&one.tokens[..zero_k.tokens.len()], &zero_k.tokens[..]);
            let zero_i = layout.zero_shot(&target, 10_000).unwrap();
            assert_eq!(
                &one.tokens[one.target()],
                &zero_i.tokens[zero_i.target()],
                "{template:?}"
            );
            assert_eq!(one.spans.len(), 1, "only the target is scored");
        }
    }

    #[test]
    fn every_assistant_turn_is_scored_and_nothing_else() {
        let layout = Layout::new(&ByteTokenizer, &Template::Chat(markup()), false);
        let mut chat = conversation(&[("hi", "yo"), ("more", "ok")]);
        chat.system = "be brief".into();
        let seq = layout.zero_shot(&layout.block(&chat), 1000).unwrap();
        assert_eq!(
            text(&seq.tokens),
            "[1]H|S:be brief<E>\nU:hi<E>\nA:yo<E>\nU:more<E>\nA:ok<E>\n"
        );
        let scored: Vec<String> = seq
            .spans
            .iter()
            .map(|s| text(&seq.tokens[s.clone()]))
            .collect();
        assert_eq!(scored, ["yo", "ok"]);
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
        let layout = Layout::new(&ByteTokenizer, &Template::Chat(markup()), true);
        let seq = layout.zero_shot(&layout.block(&chat), 1000).unwrap();
        let scored: Vec<String> = seq
            .spans
            .iter()
            .map(|s| text(&seq.tokens[s.clone()]))
            .collect();
        assert_eq!(scored, ["yo<E>", "ok<E>"]);
    }

    #[test]
    fn a_format_without_system_role_opens_the_first_message_with_it() {
        let mut markup = markup();
        markup.system = None;
        let layout = Layout::new(&ByteTokenizer, &Template::Chat(markup), false);
        let mut chat = sample("hi", "yo");
        chat.system = "sys".into();
        let seq = layout.zero_shot(&layout.block(&chat), 1000).unwrap();
        assert_eq!(text(&seq.tokens), "[1]H|U:sys\n\nhi<E>\nA:yo<E>\n");
    }

    #[test]
    fn oda_and_alpaca_texts() {
        let layout = Layout::new(&ByteTokenizer, &Template::Oda, false);
        let seq = layout
            .zero_shot(
                &layout.block(&conversation(&[("q", "a1"), ("r", "a2")])),
                1000,
            )
            .unwrap();
        assert_eq!(
            text(&seq.tokens),
            "[1]User: q\nAssistant: a1\nUser: r\nAssistant: a2"
        );
        let scored: Vec<String> = seq
            .spans
            .iter()
            .map(|s| text(&seq.tokens[s.clone()]))
            .collect();
        assert_eq!(scored, [" a1", " a2"], "the space is the response's");

        let layout = Layout::new(&ByteTokenizer, &Template::Alpaca, false);
        let mut with_input = sample("Add.", "5");
        with_input.turns[0].input = "2 3".into();
        let seq = layout.zero_shot(&layout.block(&with_input), 1000).unwrap();
        assert_eq!(
            text(&seq.tokens[1..]),
            format!("{ALPACA_WITH_INPUT}Add.\n\n### Input:\n2 3\n\n### Response:\n5")
        );
    }

    #[test]
    fn response_only_scores_the_same_tokens() {
        let layout = Layout::new(&ByteTokenizer, &Template::Alpaca, true);
        let block = layout.block(&conversation(&[("q", "one"), ("r", "two")]));
        let zero = layout.zero_shot(&block, 1000).unwrap();
        let alone = layout.response_only(&block, 1000).unwrap();
        assert_eq!(alone.tokens[0], 1, "BOS first");
        let tokens = |s: &ScoredSequence| -> Vec<Token> {
            s.spans
                .iter()
                .flat_map(|r| s.tokens[r.clone()].to_vec())
                .collect()
        };
        assert_eq!(tokens(&alone), tokens(&zero));
        assert!(layout.response_only(&block, 3).is_none(), "too long");
    }

    #[test]
    fn overflow_shortens_the_example_never_the_target() {
        let layout = Layout::new(&ByteTokenizer, &Template::Raw, false);
        let example = layout.block(&sample("0123456789", "0123456789"));
        let target = layout.block(&sample("q", "xyz"));
        let max = 1 + target.tokens.len() + 1 + 5;
        let (seq, dropped) = layout.one_shot(Some(&example), &target, max).unwrap();
        assert_eq!(seq.tokens.len(), max);
        assert_eq!(dropped, example.tokens.len() - 5);
        assert_eq!(&seq.tokens[1..6], &example.tokens[dropped..]);
        assert_eq!(
            layout.one_shot(Some(&example), &target, target.tokens.len()),
            Err(Unscorable::TooLong)
        );
        let empty = layout.block(&sample("q", ""));
        assert_eq!(
            layout.zero_shot(&empty, 100),
            Err(Unscorable::EmptyResponse)
        );
        let no_turns = layout.block(&conversation(&[]));
        assert_eq!(
            layout.zero_shot(&no_turns, 100),
            Err(Unscorable::EmptyResponse)
        );
    }
}
