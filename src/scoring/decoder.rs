//! The seam between the scheduler and whatever runs the model.
//!
//! The scheduler plans and folds; a [`Decoder`] only decodes what it is told, in KV slots it is
//! told to use, and hands back the log-probabilities of the scored tokens. llama.cpp implements
//! it in the `engine` module; a deterministic stand-in can implement it to test planning, resume,
//! interrupts and sharding in milliseconds, without model weights.

use std::ops::Range;

use crate::scoring::prompt::Token;

/// One sequence, or the continuation of one, in a decode call.
#[derive(Debug, Clone)]
pub struct Item<'a> {
    /// Tokens decoded in this call.
    pub tokens: &'a [Token],
    /// Position of `tokens[0]`: 0 for a new sequence, the prefix length for a continuation.
    pub first_pos: usize,
    /// The KV slot (sequence id).
    pub slot: usize,
    /// Indices into `tokens` of the scored tokens; starts at 1 or later, since a token is
    /// scored from the logits of the token before it.
    pub scored: Range<usize>,
}

/// A failure inside a decoder, kept whole for the message.
pub type DecodeError = Box<dyn std::error::Error + Send + Sync>;

/// Teacher-forced decoding of several sequences at once, each in its own KV slot.
pub trait Decoder {
    /// Copies slot `from`'s cache into slot `to`, so an item in `to` can continue the prefix
    /// decoded in `from`.
    ///
    /// # Errors
    /// When the engine cannot copy.
    fn copy_slot(&mut self, from: usize, to: usize) -> Result<(), DecodeError>;

    /// Decodes `items` together in one call, each continuing its slot's cache at
    /// `first_pos`.
    ///
    /// # Errors
    /// When the items exceed the decoder's limits or the engine fails.
    fn decode(&mut self, items: &[Item]) -> Result<(), DecodeError>;

    /// The log-probabilities of each item's scored tokens, from the last [`Decoder::decode`]
    /// of the same `items`.
    fn log_probs(&self, items: &[Item]) -> Vec<Vec<f32>>;

    /// Empties slot `slot`'s cache so it can take a new sequence.
    fn free_slot(&mut self, slot: usize);

    /// Empties every slot, as in a new context.
    fn clear(&mut self);
}

/// Makes a decoder for each worker of a pool, on the worker's own thread (a llama.cpp context
/// stays on the thread that made it). Workers decode different segments of a plan at once,
/// each with its own cache; no thread waits for another inside a decode.
pub trait DecoderPool: Sync {
    /// How many workers to run.
    fn workers(&self) -> usize;

    /// A new decoder for the calling thread.
    ///
    /// # Errors
    /// When the engine cannot make one (usually: not enough memory).
    fn decoder(&self) -> Result<Box<dyn Decoder + '_>, DecodeError>;
}
