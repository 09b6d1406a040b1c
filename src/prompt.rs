//! Templates and token layout: turning samples into the exact token sequences that are scored.
//!
//! METHOD.md's rules live here: every segment (prompt part, response, separator) is tokenised
//! on its own and the ids are concatenated, BOS once at the very start. Finding the response
//! start by tokenising a prefix string would let BPE merge across the boundary and shift the
//! scored range by a token, so no string is ever tokenised across a segment boundary.

use std::ops::Range;

use serde::Serialize;

use crate::dataset::Sample;

/// A token id in the scoring model's vocabulary.
pub type Token = i32;

/// What the layout needs from a tokenizer; the engine implements it with the GGUF vocabulary.
pub trait Tokenize {
    /// Tokenises `text` as plain text: no BOS/EOS, special-token syntax not parsed.
    fn tokenize(&self, text: &str) -> Vec<Token>;
    /// The BOS token, when the model wants one at the start of a sequence.
    fn bos(&self) -> Option<Token>;
    /// The end-of-sequence token.
    fn eos(&self) -> Option<Token>;
}

/// How a sample is rendered as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    /// The Stanford Alpaca prompt, with and without input, ending in `### Response:` and a newline.
    Alpaca,
    /// `instruction\ninput\n` then the response.
    Raw,
}

const ALPACA_WITH_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n";
const ALPACA_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n";

impl Template {
    /// The prompt part of a sample's block. It ends at a natural token boundary (a newline),
    /// so the response's first token is one the model expects there (METHOD.md).
    pub fn prompt(self, sample: &Sample) -> String {
        match self {
            Template::Alpaca if sample.input.is_empty() => {
                format!("{ALPACA_NO_INPUT}{}\n\n### Response:\n", sample.instruction)
            }
            Template::Alpaca => format!(
                "{ALPACA_WITH_INPUT}{}\n\n### Input:\n{}\n\n### Response:\n",
                sample.instruction, sample.input
            ),
            Template::Raw if sample.input.is_empty() => format!("{}\n", sample.instruction),
            Template::Raw => format!("{}\n{}\n", sample.instruction, sample.input),
        }
    }

    /// What joins the example's block to the target's block in a one-shot sequence.
    pub fn separator(self) -> &'static str {
        match self {
            Template::Alpaca => "\n\n",
            Template::Raw => "\n",
        }
    }
}

/// A sample's tokens: its templated prompt followed by its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Prompt tokens then response tokens.
    pub tokens: Vec<Token>,
    /// How many of `tokens` belong to the prompt.
    pub prompt_len: usize,
}

impl Block {
    /// Number of response tokens (the scored ones).
    pub fn response_len(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

/// A token sequence and the range of positions whose tokens are scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoredSequence {
    /// The whole sequence, BOS included.
    pub tokens: Vec<Token>,
    /// Positions of the scored (response) tokens; never starts at 0, since a token is scored
    /// from the logits of the token before it.
    pub target: Range<usize>,
}

/// Why a sample cannot be scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unscorable {
    /// The response has no tokens.
    EmptyResponse,
    /// The zero-shot sequence alone does not fit the context.
    TooLong,
    /// There is no other sample to use as the example.
    NoNeighbour,
}

/// Builds blocks and sequences for one template and tokenizer.
pub struct Layout<'t, T: Tokenize> {
    tokenizer: &'t T,
    template: Template,
    prefix: Vec<Token>,
    separator: Vec<Token>,
    eos: Option<Token>,
}

impl<'t, T: Tokenize> Layout<'t, T> {
    /// A layout; `append_eos` ends every response with the model's EOS token.
    pub fn new(tokenizer: &'t T, template: Template, append_eos: bool) -> Self {
        Self {
            tokenizer,
            template,
            prefix: tokenizer.bos().into_iter().collect(),
            separator: tokenizer.tokenize(template.separator()),
            eos: if append_eos { tokenizer.eos() } else { None },
        }
    }

    /// The sample's block, each segment tokenised separately.
    pub fn block(&self, sample: &Sample) -> Block {
        let mut tokens = self.tokenizer.tokenize(&self.template.prompt(sample));
        let prompt_len = tokens.len();
        let response = self.tokenizer.tokenize(&sample.output);
        if !response.is_empty() {
            tokens.extend(response);
            tokens.extend(self.eos);
        }
        Block { tokens, prompt_len }
    }

    /// `[BOS] block_i`: the response scored with its own prompt only.
    pub fn zero_shot(&self, target: &Block, max_len: usize) -> Result<ScoredSequence, Unscorable> {
        self.one_shot(None, target, max_len).map(|(seq, _)| seq)
    }

    /// `[BOS] block_k SEP block_i`; when it does not fit `max_len`, the example is shortened
    /// from the left (the target never is). Returns the sequence and how many example tokens
    /// were dropped.
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
        let start = tokens.len() + target.prompt_len;
        tokens.extend(&target.tokens);
        let end = tokens.len();
        Ok((
            ScoredSequence {
                tokens,
                target: start..end,
            },
            dropped,
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A byte-level tokenizer with BPE-like merges of "ab", enough to exercise segment rules.
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
        fn bos(&self) -> Option<Token> {
            Some(1)
        }
        fn eos(&self) -> Option<Token> {
            Some(2)
        }
    }

    fn sample(instruction: &str, output: &str) -> Sample {
        Sample {
            id: "x".into(),
            instruction: instruction.into(),
            input: String::new(),
            output: output.into(),
            record: Default::default(),
        }
    }

    #[test]
    fn segments_are_tokenised_separately() {
        // "a" ends the raw prompt ("a\n"), the response starts with "b": no merge across.
        let layout = Layout::new(&ByteTokenizer, Template::Raw, false);
        let block = layout.block(&sample("a", "bab"));
        assert_eq!(
            block.tokens,
            vec![b'a' as Token, b'\n' as Token, b'b' as Token, 1000]
        );
        assert_eq!(block.prompt_len, 2);
        let seq = layout.zero_shot(&block, 100).unwrap();
        assert_eq!(seq.tokens[0], 1);
        assert_eq!(&seq.tokens[seq.target.clone()], &[b'b' as Token, 1000]);
    }

    #[test]
    fn one_shot_starts_with_the_example_zero_shot_sequence() {
        let layout = Layout::new(&ByteTokenizer, Template::Alpaca, true);
        let example = layout.block(&sample("first", "one"));
        let target = layout.block(&sample("second", "two"));
        let zero_k = layout.zero_shot(&example, 10_000).unwrap();
        let (one, dropped) = layout.one_shot(Some(&example), &target, 10_000).unwrap();
        assert_eq!(dropped, 0);
        assert_eq!(&one.tokens[..zero_k.tokens.len()], &zero_k.tokens[..]);
        let zero_i = layout.zero_shot(&target, 10_000).unwrap();
        assert_eq!(
            &one.tokens[one.target.clone()],
            &zero_i.tokens[zero_i.target.clone()]
        );
        assert_eq!(*one.tokens.last().unwrap(), 2, "EOS appended");
    }

    #[test]
    fn overflow_shortens_the_example_never_the_target() {
        let layout = Layout::new(&ByteTokenizer, Template::Raw, false);
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
    }
}
