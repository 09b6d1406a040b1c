//! Checking the GGUF vocabulary against the model's reference tokenizer.
//!
//! A GGUF converted with the wrong pre-tokenizer (digits, whitespace or punctuation split
//! differently) still loads and still gives plausible losses, but for the wrong token
//! sequences: every score is silently off. This check tokenizes each segment the scorer
//! tokenizes — the templated prompt, the response and the separator — with llama.cpp's GGUF
//! vocabulary and with the model's own `tokenizer.json` (Hugging Face `tokenizers`, the
//! implementation the model was trained with), and lists every place they disagree.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::dataset::Sample;
use crate::prompt::{Piece, Template, Token, Tokenize};

/// A Hugging Face `tokenizer.json`, used without special tokens like the scorer's segments.
pub struct ReferenceTokenizer {
    inner: tokenizers::Tokenizer,
}

/// The reference tokenizer could not be loaded or used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct TokenizerError {
    /// The `tokenizer.json`.
    pub path: PathBuf,
    /// What went wrong.
    pub problem: String,
}

impl ReferenceTokenizer {
    /// Loads a `tokenizer.json`.
    ///
    /// # Errors
    /// [`TokenizerError`] naming the file.
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        tokenizers::Tokenizer::from_file(path)
            .map(|inner| Self { inner })
            .map_err(|e| TokenizerError {
                path: path.to_path_buf(),
                problem: format!("not a usable tokenizer.json: {e}"),
            })
    }

    /// Token ids of `text`, with no special tokens added.
    pub fn ids(&self, text: &str) -> Vec<Token> {
        match self.inner.encode(text, false) {
            Ok(encoding) => encoding.get_ids().iter().map(|&id| id as Token).collect(),
            // Encoding plain text only fails on a broken tokenizer; show it as a difference.
            Err(_) => vec![-1],
        }
    }

    /// How the reference vocabulary writes token `id`.
    pub fn piece(&self, id: Token) -> String {
        u32::try_from(id)
            .ok()
            .and_then(|id| self.inner.id_to_token(id))
            .unwrap_or_else(|| format!("<{id}>"))
    }
}

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
pub fn check_tokenizer(
    gguf: &impl Tokenize,
    reference: &ReferenceTokenizer,
    samples: &[Sample],
    template: &Template,
) -> TokenizerReport {
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
        for piece in template.pieces(sample) {
            differs |= match piece {
                Piece::Text(text) => compare(&sample.id, "prompt", &text),
                Piece::Response(text) => compare(&sample.id, "response", &text),
                // Markup is the template's, checked once per format, not per sample.
                Piece::Markup(_) | Piece::EndOfResponse(_) => false,
            };
        }
        report.samples_differing += usize::from(differs);
    }
    report
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
