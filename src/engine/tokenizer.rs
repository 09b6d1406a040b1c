//! The reference tokenizer: a model's own Hugging Face `tokenizer.json`, run by the
//! `tokenizers` crate (the implementation the model was trained with, with Oniguruma's C
//! regular expressions), for `miwv doctor` to compare the GGUF vocabulary against.

use std::path::{Path, PathBuf};

use crate::scoring::prompt::Token;

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
