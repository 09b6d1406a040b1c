//! The engine layer, the only one that talks to llama.cpp (through `llama-cpp-2`): this
//! module, and `embed`, which batches samples through its embedding contexts. It may import
//! the pure layers (`data`, `scoring`, `state`).
//!
//! It loads GGUF models, tokenises with the GGUF vocabulary, decodes packed multi-sequence
//! batches for scoring, and pools embeddings. Everything above it deals in token ids, scored
//! sequences and plain vectors, so the rest of the crate is testable without a model and the
//! llama.cpp API churn stays in one file.
//!
//! Pitfalls handled here (see docs/ENGINE.md): a batch larger than `n_batch`
//! aborts the process inside llama.cpp, so sizes are checked before every decode; reading
//! logits of an unflagged row panics, so only flagged rows are read; the logits buffer is
//! overwritten by the next decode, so rows are consumed before it.

pub mod devices;
pub mod embed;
pub mod tokenizer;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use rayon::prelude::*;

use crate::data::gguf::{GgufError, GgufProblem, GgufSummary};
use crate::scoring::decoder::{DecodeError, Decoder, DecoderPool, Item};
use crate::scoring::prompt::{ModelChat, ScoredSequence, Token, Tokenize};
use crate::scoring::score::log_prob;
use crate::scoring::sizes::ContextSizes;
use crate::state::schema::ModelInfo;

/// Checks that `path` is a readable GGUF file whose metadata is sane and consistent
/// ([`crate::data::gguf`]), before any work that depends on it and before llama.cpp parses it.
///
/// # Errors
/// [`EngineError::Metadata`] naming the file and the key at fault.
pub fn check_model_file(path: &Path) -> Result<GgufSummary, EngineError> {
    Ok(crate::data::gguf::check_file(path)?)
}

/// The longest BOS or EOS text accepted (real ones are a few bytes).
const MAX_SPECIAL_TEXT: usize = 256;

/// Failures of the engine, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file's metadata is unreadable, insane or inconsistent.
    #[error(transparent)]
    Metadata(#[from] GgufError),
    /// llama.cpp could not be initialised.
    #[error("cannot initialise llama.cpp: {0}")]
    Backend(String),
    /// The model file is missing, unreadable or not a GGUF model llama.cpp can load.
    #[error("{path}: {problem}")]
    Model {
        /// The model file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// A context could not be created (usually: not enough memory for the KV cache).
    #[error("{path}: cannot create a llama.cpp context ({what}); try a lower --memory-budget, --ctx-size or --parallel")]
    Context {
        /// The model file.
        path: PathBuf,
        /// The requested sizes.
        what: String,
    },
    /// A batch did not fit the context's limits.
    #[error("internal batch of {tokens} tokens / {sequences} sequences exceeds the limits ({max_tokens} / {max_sequences})")]
    BatchTooLarge {
        /// Tokens in the batch.
        tokens: usize,
        /// Sequences in the batch.
        sequences: usize,
        /// The context's `n_batch`.
        max_tokens: usize,
        /// The context's `n_seq_max`.
        max_sequences: usize,
    },
    /// `llama_decode` failed.
    #[error("llama.cpp decode failed: {0}")]
    Decode(String),
    /// The caller stopped embedding; nothing embedded so far is kept.
    #[error("interrupted while embedding ({done} of {total} samples); run the same command again to start the embedding over")]
    Stopped {
        /// Samples embedded when it stopped.
        done: usize,
        /// Samples to embed.
        total: usize,
    },
    /// `-ngl` where no device can take layers.
    #[error(
        "-ngl {gpu_layers}: llama.cpp sees no GPU here (devices: {devices}); build with a GPU \
         backend (scripts/build-gpu.sh) on a machine with that GPU, or leave -ngl out to run on \
         the CPU"
    )]
    NoGpu {
        /// The layers asked for.
        gpu_layers: u32,
        /// The devices there are.
        devices: String,
    },
    /// The model produced no embedding.
    #[error("{path}: the model produced no embedding; is it an embedding model?")]
    NoEmbedding {
        /// The model file.
        path: PathBuf,
    },
}

/// The process-wide llama.cpp backend; llama.cpp may be initialised only once per process.
fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Backend(e.clone()))
}

/// A loaded GGUF model.
pub struct Model {
    model: LlamaModel,
    path: PathBuf,
    claims: GgufSummary,
    /// Layers offloaded to a GPU device (`-ngl`).
    gpu_layers: u32,
    /// A template's markup, tokenised once: a render tokenises the same few strings
    /// (`<|im_start|>user\n`, ...) for every sample, and each llama.cpp call pays for its
    /// pre-tokeniser's setup.
    markup: std::sync::RwLock<std::collections::HashMap<String, Vec<Token>>>,
}

/// Distinct markup strings kept tokenised; a template that puts sample text in its markup
/// stops filling the cache there.
const MARKUP_CACHE: usize = 4096;

impl Model {
    /// Loads a GGUF model, offloading `gpu_layers` layers when a GPU backend is built in.
    ///
    /// # Errors
    /// [`EngineError::Model`] when the file is missing, not GGUF, or rejected by llama.cpp.
    pub fn load(path: &Path, gpu_layers: u32) -> Result<Self, EngineError> {
        let fail = |problem: String| EngineError::Model {
            path: path.to_path_buf(),
            problem,
        };
        let claims = check_model_file(path)?;
        devices::check_offload(gpu_layers)?;
        let params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers);
        let model = LlamaModel::load_from_file(backend()?, path, &params).map_err(|_| {
            fail("llama.cpp could not load this model (truncated file or unsupported architecture; run with -v for llama.cpp's log)".into())
        })?;
        let model = Self {
            model,
            path: path.to_path_buf(),
            claims,
            gpu_layers,
            markup: Default::default(),
        };
        model.check_loaded()?;
        Ok(model)
    }

    /// Checks what llama.cpp made of the file against what its metadata claims: the same
    /// vocabulary and training context, and BOS and EOS texts of a sane length.
    fn check_loaded(&self) -> Result<(), EngineError> {
        let fail = |problem: GgufProblem| {
            EngineError::Metadata(GgufError {
                path: self.path.clone(),
                problem,
            })
        };
        let loaded = u64::try_from(self.model.n_vocab()).unwrap_or(0);
        if loaded != self.claims.vocab {
            return Err(fail(GgufProblem::Inconsistent {
                key: "tokenizer.ggml.tokens".into(),
                value: self.claims.vocab,
                other: "the vocabulary llama.cpp loaded".into(),
                other_value: loaded,
            }));
        }
        if let Some(claimed) = self.claims.context_length {
            let loaded = u64::from(self.model.n_ctx_train());
            if loaded != claimed {
                return Err(fail(GgufProblem::Inconsistent {
                    key: format!("{}.context_length", self.claims.architecture),
                    value: claimed,
                    other: "the training context llama.cpp loaded".into(),
                    other_value: loaded,
                }));
            }
        }
        let vocab = self.model.vocab();
        for (name, token) in [("BOS", vocab.bos()), ("EOS", vocab.eos())] {
            if token.0 >= 0 && vocab.token_to_piece(token, true, None).len() > MAX_SPECIAL_TEXT {
                return Err(fail(GgufProblem::Field {
                    key: "tokenizer.ggml.tokens".into(),
                    expected: format!(
                        "the {name} token's text is longer than {MAX_SPECIAL_TEXT} bytes"
                    ),
                }));
            }
        }
        Ok(())
    }

    /// What the file's metadata claims, as checked before loading.
    pub fn claims(&self) -> &GgufSummary {
        &self.claims
    }

    /// What one scoring context of `sizes` allocates besides the shared weights, estimated from
    /// the model's shape as llama.cpp sizes its buffers: the KV cache (F16 keys and values for
    /// every cell), the output buffer (F32 logits for every row of a decode that asks for
    /// them, at most `--batch-size` rows) and the compute buffer (one ubatch's logits and its
    /// attention scores).
    pub fn context_memory(&self, sizes: &ContextSizes) -> ContextMemory {
        let arch = self
            .model
            .meta_val_str("general.architecture")
            .unwrap_or_default();
        let head = (self.model.n_embd() as u64) / u64::from(self.model.n_head().max(1));
        let length = |key: &str| {
            self.model
                .meta_val_str(&format!("{arch}.attention.{key}"))
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(head)
        };
        let per_cell = u64::from(self.model.n_layer())
            * u64::from(self.model.n_head_kv())
            * (length("key_length") + length("value_length"))
            * 2;
        let cells = (sizes.ctx_per_sequence * sizes.parallel) as u64;
        let row = self.model.n_vocab().max(0) as u64 * 4;
        // Attention scores of one ubatch over a sequence's cells, per head: about 2 bytes
        // each as llama.cpp reserves them (SmolLM2-135M, 512-token ubatch: 107.5 MiB of
        // compute buffer at 2,048 cells, 167.5 MiB at 8,192).
        let scores = 2 * u64::from(self.model.n_head()) * sizes.ctx_per_sequence as u64;
        ContextMemory {
            kv_bytes: per_cell * cells,
            outputs_bytes: row * sizes.batch as u64,
            compute_bytes: (row + scores) * sizes.ubatch as u64,
        }
    }

    /// The file the model came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refuses models llama.cpp would run but whose losses mean nothing here: embedding-only
    /// encoders (bidirectional attention, no language-model head) and contexts longer than
    /// the model was trained on (positions past it are extrapolated, not measured).
    ///
    /// # Errors
    /// [`EngineError::Model`] saying why.
    pub fn check_can_score(&self, ctx_per_sequence: Option<usize>) -> Result<(), EngineError> {
        let fail = |problem: String| EngineError::Model {
            path: self.path.clone(),
            problem,
        };
        let arch = self
            .model
            .meta_val_str("general.architecture")
            .unwrap_or_default();
        let meta = |key: &str| self.model.meta_val_str(&format!("{arch}.{key}")).ok();
        if meta("attention.causal").as_deref() == Some("false") || meta("pooling_type").is_some() {
            return Err(fail(format!(
                "`{arch}` is an embedding model and cannot score responses; give a generative model with -m (it can still be the --embed-model)"
            )));
        }
        let trained = self.model.n_ctx_train() as usize;
        if let Some(ctx_per_sequence) = ctx_per_sequence.filter(|&c| trained > 0 && c > trained) {
            return Err(fail(format!(
                "--ctx-size {ctx_per_sequence} exceeds the {trained} tokens this model was trained on"
            )));
        }
        Ok(())
    }

    /// Metadata for the run record.
    pub fn info(&self) -> ModelInfo {
        let meta = |key: &str| self.model.meta_val_str(key).ok();
        ModelInfo {
            name: meta("general.name"),
            architecture: meta("general.architecture"),
            quantisation: meta("general.file_type").map(|t| file_type_name(&t)),
            parameters: self.model.n_params(),
            vocab_size: self.model.n_vocab() as usize,
            context_train: self.model.n_ctx_train(),
            embedding_dim: self.model.n_embd_out().max(0) as usize,
        }
    }

    /// The text of a token sequence (special tokens left out), for checking segment boundaries.
    pub fn detokenize(&self, tokens: &[Token]) -> String {
        let tokens: Vec<LlamaToken> = tokens.iter().map(|&t| LlamaToken(t)).collect();
        String::from_utf8_lossy(&self.model.vocab().detokenize(&tokens, true, false)).into_owned()
    }

    fn new_context(
        &self,
        params: LlamaContextParams,
        what: String,
    ) -> Result<LlamaContext<'_>, EngineError> {
        self.model
            .new_context(backend()?, params)
            .map_err(|_| EngineError::Context {
                path: self.path.clone(),
                what,
            })
    }

    /// The GGUF's own chat template (`tokenizer.chat_template`) and the texts of the BOS and
    /// EOS tokens it is rendered with; `None` when the GGUF has no template.
    pub fn chat(&self) -> Option<ModelChat> {
        let jinja = self.model.chat_template(None).ok()?.to_string().ok()?;
        let vocab = self.model.vocab();
        let text = |token: LlamaToken| {
            if token.0 < 0 {
                return String::new();
            }
            String::from_utf8_lossy(&vocab.token_to_piece(token, true, None)).into_owned()
        };
        Some(ModelChat {
            jinja,
            bos_token: text(vocab.bos()),
            eos_token: text(vocab.eos()),
        })
    }

    /// A token's bytes as the vocabulary writes it, special tokens included.
    pub fn piece(&self, token: Token) -> Vec<u8> {
        self.model
            .vocab()
            .token_to_piece(LlamaToken(token), true, None)
    }

    /// Tokenises with the model's own special-token rules (BOS/CLS/SEP as the model wants),
    /// as an embedding model expects its input.
    pub fn tokenize_with_specials(&self, text: &str) -> Vec<Token> {
        to_ids(self.model.vocab().tokenize(text.as_bytes(), true, false))
    }
}

fn to_ids(tokens: Vec<LlamaToken>) -> Vec<Token> {
    tokens.into_iter().map(|t| t.0).collect()
}

impl Tokenize for Model {
    fn tokenize(&self, text: &str) -> Vec<Token> {
        if text.is_empty() {
            return Vec::new();
        }
        to_ids(self.model.vocab().tokenize(text.as_bytes(), false, false))
    }

    fn tokenize_markup(&self, text: &str) -> Vec<Token> {
        if text.is_empty() {
            return Vec::new();
        }
        let cache = |c| self.markup.read().ok().and_then(|m| m.get(c).cloned());
        if let Some(tokens) = cache(text) {
            return tokens;
        }
        let tokens = to_ids(self.model.vocab().tokenize(text.as_bytes(), false, true));
        if let Ok(mut markup) = self.markup.write() {
            if markup.len() < MARKUP_CACHE {
                markup.insert(text.to_string(), tokens.clone());
            }
        }
        tokens
    }

    fn bos(&self) -> Option<Token> {
        let vocab = self.model.vocab();
        vocab.should_add_bos().then(|| vocab.bos().0)
    }

    fn eos(&self) -> Option<Token> {
        let eos = self.model.vocab().eos().0;
        (eos >= 0).then_some(eos)
    }
}

/// How llama.cpp's OpenMP threads wait between parallel regions unless the user says
/// otherwise. libgomp's default spins about 300,000 times at every barrier before sleeping:
/// fastest on an idle machine, but when another program keeps a core busy, a spinning thread
/// takes the CPU from the one it waits for, and a 2-core laptop scored 2.9 times slower. A
/// short spin keeps the idle speed and most of the busy speed (docs/PERFORMANCE.md, "On a busy
/// machine"); `OMP_WAIT_POLICY=PASSIVE` gives up 15% on the idle machine for little more.
pub const OPENMP_WAIT: (&str, &str) = ("GOMP_SPINCOUNT", "1000");

/// The variables with which a user chooses how OpenMP threads wait; when either is set,
/// [`OPENMP_WAIT`] is not applied.
pub const OPENMP_WAIT_VARIABLES: [&str; 2] = ["OMP_WAIT_POLICY", "GOMP_SPINCOUNT"];

/// llama.cpp's `llama_ftype` values and their names, as `llama-quantize` spells them.
const FILE_TYPES: [(u32, &str); 33] = [
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (7, "Q8_0"),
    (8, "Q5_0"),
    (9, "Q5_1"),
    (10, "Q2_K"),
    (11, "Q3_K_S"),
    (12, "Q3_K_M"),
    (13, "Q3_K_L"),
    (14, "Q4_K_S"),
    (15, "Q4_K_M"),
    (16, "Q5_K_S"),
    (17, "Q5_K_M"),
    (18, "Q6_K"),
    (19, "IQ2_XXS"),
    (20, "IQ2_XS"),
    (21, "Q2_K_S"),
    (22, "IQ3_XS"),
    (23, "IQ3_XXS"),
    (24, "IQ1_S"),
    (25, "IQ4_NL"),
    (26, "IQ3_S"),
    (27, "IQ3_M"),
    (28, "IQ2_S"),
    (29, "IQ2_M"),
    (30, "IQ4_XS"),
    (31, "IQ1_M"),
    (32, "BF16"),
    (36, "TQ1_0"),
    (37, "TQ2_0"),
    (38, "MXFP4_MOE"),
];

/// The weight formats `miwv quantize` writes: those llama.cpp makes without an importance
/// matrix (the IQ formats need one, and the ternary and MoE formats suit other models).
pub const QUANTIZE_FORMATS: [&str; 17] = [
    "F32", "BF16", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S",
    "Q4_1", "Q4_0", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K",
];

/// A `general.file_type` value as a name.
fn file_type_name(value: &str) -> String {
    value
        .parse::<u32>()
        .ok()
        .and_then(|v| FILE_TYPES.iter().find(|(t, _)| *t == v))
        .map_or_else(
            || format!("file_type {value}"),
            |(_, name)| name.to_string(),
        )
}

/// Whether a weight format is quantised (stores fewer bits than 16 per weight).
fn is_quantised(format: &str) -> bool {
    !matches!(format, "F32" | "F16" | "BF16")
}

/// What [`quantize`] did.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// The input's weight format, as llama.cpp names it.
    pub from: String,
    /// The format written.
    pub to: String,
    /// Whether the input's weights were already quantised, so the output rounds them twice.
    pub requantised: bool,
    /// The output's sha256, to check that two machines wrote the same bytes.
    pub sha256: String,
    /// The output's size in bytes.
    pub bytes: u64,
}

/// Writes the weights of the GGUF `input` to `output` in another `format` (a name from
/// [`QUANTIZE_FORMATS`]), as llama.cpp's `llama-quantize` does, with `threads` threads. An
/// input that is already quantised is converted too (its values are dequantised and rounded
/// again), with a warning. The output holds the
/// same bytes for the same input and format on every machine.
///
/// # Errors
/// [`EngineError::Model`] naming the input when it cannot be read, the format is not one
/// llama.cpp writes without an importance matrix, or llama.cpp fails.
pub fn quantize(
    input: &Path,
    output: &Path,
    format: &str,
    threads: usize,
) -> Result<Quantized, EngineError> {
    let fail = |problem: String| EngineError::Model {
        path: input.to_path_buf(),
        problem,
    };
    let format = format.to_ascii_uppercase();
    if !QUANTIZE_FORMATS.contains(&format.as_str()) {
        return Err(fail(format!(
            "cannot write `{format}`; --type takes one of {}",
            QUANTIZE_FORMATS.join(", ")
        )));
    }
    let (ftype, _) = FILE_TYPES
        .iter()
        .find(|(_, name)| *name == format)
        .expect("every writable format has a file type");
    check_model_file(input)?;
    let header = LlamaModelParams::default().with_vocab_only(true);
    let from = LlamaModel::load_from_file(backend()?, input, &header)
        .map_err(|_| fail("llama.cpp could not read this model's metadata".into()))?
        .meta_val_str("general.file_type")
        .map_or_else(|_| "unknown".to_string(), |t| file_type_name(&t));
    let requantised = is_quantised(&from);
    if requantised {
        let consequence = if is_quantised(&format) {
            "rounded again, so this copy is further from the original weights than one made from F16 or F32"
        } else {
            "written as they are: the copy is no closer to the original weights than the input"
        };
        tracing::warn!(
            "{} is already quantised ({from}): its weights are dequantised and {consequence}",
            input.display()
        );
    }
    // Written beside the output and renamed when complete, so a stopped conversion never
    // leaves a truncated file under the output's name.
    let partial = PathBuf::from(format!("{}.part", output.display()));
    let path = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| fail(format!("{} has a NUL byte in its name", p.display())))
    };
    let (c_input, c_output) = (path(input)?, path(&partial)?);
    // SAFETY: the default parameters are plain values with null pointers for the optional
    // tables; both paths are NUL-terminated and outlive the call.
    let failed = unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.ftype = *ftype as llama_cpp_sys_2::llama_ftype;
        params.nthread = threads as i32;
        params.allow_requantize = true;
        llama_cpp_sys_2::llama_model_quantize(c_input.as_ptr(), c_output.as_ptr(), &params)
    };
    if failed != 0 {
        let _ = std::fs::remove_file(&partial);
        return Err(fail(format!(
            "llama.cpp could not write it as {format} to {} (run with -vv for llama.cpp's log)",
            output.display()
        )));
    }
    std::fs::rename(&partial, output).map_err(|e| {
        fail(format!(
            "cannot move {} to {}: {e}",
            partial.display(),
            output.display()
        ))
    })?;
    let (sha256, bytes) = crate::data::output::file_sha256(output)
        .map_err(|e| fail(format!("cannot read back {}: {e}", output.display())))?;
    Ok(Quantized {
        requantised,
        from,
        to: format,
        sha256,
        bytes,
    })
}

fn context_params(sizes: &ContextSizes) -> LlamaContextParams {
    let threads = sizes.threads_per_worker() as i32;
    LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(
            (sizes.ctx_per_sequence * sizes.parallel) as u32,
        ))
        .with_n_batch(sizes.batch as u32)
        .with_n_ubatch(sizes.ubatch as u32)
        .with_n_seq_max(sizes.parallel as u32)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        // Pinned so results do not change with llama.cpp's automatic choice (numerics differ).
        .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED)
}

/// Bytes one scoring context allocates besides the weights ([`Model::context_memory`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextMemory {
    /// The KV cache.
    pub kv_bytes: u64,
    /// The output (logits) buffer, at its largest.
    pub outputs_bytes: u64,
    /// The compute buffer, roughly.
    pub compute_bytes: u64,
}

impl ContextMemory {
    /// All of it.
    pub fn total(&self) -> u64 {
        self.kv_bytes + self.outputs_bytes + self.compute_bytes
    }
}

/// Scoring contexts for [`ContextSizes::workers`] workers, all on one loaded model (the
/// weights are shared; each context has its own KV cache and buffers).
pub struct ScorerPool<'m> {
    model: &'m Model,
    sizes: ContextSizes,
}

impl<'m> ScorerPool<'m> {
    /// A pool for `sizes.workers` contexts of `sizes`; they are made by the workers. Logs
    /// the layout and the memory each context will take.
    pub fn new(model: &'m Model, sizes: ContextSizes) -> Self {
        let memory = model.context_memory(&sizes);
        let mib = |bytes: u64| bytes / (1 << 20);
        let place = match model.offload(model.gpu_layers) {
            Ok(devices::Offload {
                offloaded,
                layers,
                device: Some(device),
            }) if offloaded > 0 => format!("{device}, {offloaded} of {layers} layers there"),
            _ => "the CPU".into(),
        };
        tracing::info!(
            "scoring with {} workers x {} threads on {place}; each context about {} MiB besides \
             the weights (KV cache {}, logits up to {}, compute about {} MiB)",
            sizes.workers,
            sizes.threads_per_worker(),
            mib(memory.total()),
            mib(memory.kv_bytes),
            mib(memory.outputs_bytes),
            mib(memory.compute_bytes)
        );
        ScorerPool { model, sizes }
    }
}

impl DecoderPool for ScorerPool<'_> {
    fn workers(&self) -> usize {
        self.sizes.workers
    }

    fn decoder(&self) -> Result<Box<dyn Decoder + '_>, DecodeError> {
        Ok(Box::new(Scorer::new(self.model, self.sizes)?))
    }
}

/// A context for teacher-forced scoring of many sequences per decode: the llama.cpp
/// [`Decoder`].
pub struct Scorer<'m> {
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    sizes: ContextSizes,
    path: PathBuf,
    /// (batch row, target token) of every logit row the last decode scores, in item order.
    rows: Vec<(i32, usize)>,
}

impl<'m> Scorer<'m> {
    /// A scoring context over `model`.
    ///
    /// # Errors
    /// [`EngineError::Context`] when llama.cpp cannot allocate it.
    pub fn new(model: &'m Model, sizes: ContextSizes) -> Result<Self, EngineError> {
        // Separate KV streams per sequence: a unified cache mixed with several sequences per
        // ubatch was measured to move losses by up to 0.18 nats on CPU (docs/ENGINE.md).
        model.check_can_score(Some(sizes.ctx_per_sequence))?;
        let params = context_params(&sizes).with_kv_unified(false);
        let ctx = model.new_context(
            params,
            format!(
                "{} sequences x {} tokens",
                sizes.parallel, sizes.ctx_per_sequence
            ),
        )?;
        Ok(Self {
            ctx,
            batch: LlamaBatch::new(sizes.batch, 1),
            sizes,
            path: model.path.clone(),
            rows: Vec::new(),
        })
    }

    /// The sizes this context was made with.
    pub fn sizes(&self) -> ContextSizes {
        self.sizes
    }

    /// Decodes `sequences` together in one call, each from position 0 in its own slot, and
    /// returns for each the log-probability of every target token given all before it.
    ///
    /// # Errors
    /// As [`Scorer::decode_items`].
    pub fn target_log_probs(
        &mut self,
        sequences: &[&ScoredSequence],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let items: Vec<Item> = sequences
            .iter()
            .enumerate()
            .map(|(slot, s)| Item {
                tokens: &s.tokens,
                first_pos: 0,
                slot,
                scored: s.target(),
            })
            .collect();
        let result = self.decode_items(&items).map(|()| self.log_probs(&items));
        self.clear();
        result
    }

    /// Runs `llama_decode` for `items` without reading any logits (the engine's own ceiling in
    /// the benchmark); [`Decoder::log_probs`] reads them afterwards.
    ///
    /// # Errors
    /// [`EngineError::BatchTooLarge`] when the items exceed the context's limits (checked here
    /// because llama.cpp aborts the process instead of returning an error), or a decode
    /// failure.
    pub fn decode_items(&mut self, items: &[Item]) -> Result<(), EngineError> {
        let tokens: usize = items.iter().map(|s| s.tokens.len()).sum();
        let fits = tokens <= self.sizes.batch
            && items.iter().all(|s| {
                s.slot < self.sizes.parallel
                    && s.first_pos + s.tokens.len() <= self.sizes.ctx_per_sequence
                    && s.scored.start >= 1
                    && s.scored.end <= s.tokens.len()
            });
        if !fits {
            return Err(EngineError::BatchTooLarge {
                tokens,
                sequences: items.len(),
                max_tokens: self.sizes.batch,
                max_sequences: self.sizes.parallel,
            });
        }
        self.batch.clear();
        self.rows.clear();
        for item in items {
            for (offset, &token) in item.tokens.iter().enumerate() {
                // The logits at one position predict the token at the next.
                let wanted = offset + 1 >= item.scored.start && offset + 1 < item.scored.end;
                if wanted {
                    self.rows
                        .push((self.batch.n_tokens(), item.tokens[offset + 1] as usize));
                }
                let pos = (item.first_pos + offset) as i32;
                self.batch
                    .add(LlamaToken(token), pos, &[item.slot as i32], wanted)
                    .map_err(|e| EngineError::Decode(e.to_string()))?;
            }
        }
        self.ctx
            .decode(&mut self.batch)
            .map_err(|e| EngineError::Decode(format!("{e} ({})", self.path.display())))
    }
}

impl Decoder for Scorer<'_> {
    fn copy_slot(&mut self, from: usize, to: usize) -> Result<(), DecodeError> {
        if from.max(to) >= self.sizes.parallel {
            return Err(format!(
                "cache copy between slots {from} and {to} of {}",
                self.sizes.parallel
            )
            .into());
        }
        self.ctx
            .kv_cache_seq_cp(from as i32, to as i32, None, None)
            .map_err(|e| EngineError::Decode(e.to_string()).into())
    }

    fn decode(&mut self, items: &[Item]) -> Result<(), DecodeError> {
        Ok(self.decode_items(items)?)
    }

    fn log_probs(&self, items: &[Item]) -> Vec<Vec<f32>> {
        let ctx = &self.ctx;
        let logits: Vec<(&[f32], usize)> = self
            .rows
            .iter()
            .map(|&(row, token)| (ctx.get_logits_ith(row), token))
            .collect();
        // The log-softmax over the vocabulary runs on all cores between decodes.
        let log_probs: Vec<f32> = logits
            .par_iter()
            .map(|&(row, token)| log_prob(row, token))
            .collect();
        let mut log_probs = log_probs.into_iter();
        items
            .iter()
            .map(|s| log_probs.by_ref().take(s.scored.len()).collect())
            .collect()
    }

    fn free_slot(&mut self, slot: usize) {
        // Only fails for ids above i32::MAX, which `decode` never accepts.
        let _ = self.ctx.clear_kv_cache_seq(Some(slot as u32), None, None);
    }

    fn clear(&mut self) {
        self.ctx.clear_kv_cache();
    }
}

/// A context that turns token sequences into pooled embeddings.
pub struct Embedder<'m> {
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    model: &'m Model,
    max_tokens: usize,
    max_sequences: usize,
}

impl<'m> Embedder<'m> {
    /// Most tokens of one text that are embedded; longer texts are cut.
    pub const MAX_TOKENS: usize = 512;
    /// Texts embedded per decode.
    pub const BATCH_SEQUENCES: usize = 8;
    /// Tokens per decode.
    pub const BATCH_TOKENS: usize = 4096;

    /// An embedding context with mean pooling over `model`.
    ///
    /// # Errors
    /// [`EngineError::Context`] when llama.cpp cannot create it.
    pub fn new(model: &'m Model, threads: usize) -> Result<Self, EngineError> {
        let max_tokens = Self::MAX_TOKENS.min(model.model.n_ctx_train() as usize);
        let sizes = ContextSizes {
            ctx_per_sequence: Self::MAX_TOKENS,
            parallel: Self::BATCH_SEQUENCES,
            batch: Self::BATCH_TOKENS,
            // Non-causal encoders need a whole sequence in one ubatch.
            ubatch: Self::BATCH_TOKENS,
            threads,
            workers: 1,
        };
        // Causal models (`--embed-model self`) keep a KV stream per sequence, as for scoring.
        let params = context_params(&sizes)
            .with_kv_unified(false)
            .with_embeddings(true)
            .with_pooling_type(LlamaPoolingType::Mean);
        let ctx = model.new_context(params, "embeddings".into())?;
        Ok(Self {
            ctx,
            batch: LlamaBatch::new(Self::BATCH_TOKENS, 1),
            model,
            max_tokens,
            max_sequences: Self::BATCH_SEQUENCES,
        })
    }

    /// Longest input in tokens; callers cut texts to this.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Most texts per [`Embedder::embed`] call.
    pub fn max_sequences(&self) -> usize {
        self.max_sequences
    }

    /// Most tokens per [`Embedder::embed`] call.
    pub fn max_batch_tokens(&self) -> usize {
        Self::BATCH_TOKENS
    }

    /// Tokenises a text for this model, cut to [`Embedder::max_tokens`].
    pub fn tokenize(&self, text: &str) -> Vec<Token> {
        let mut tokens = self.model.tokenize_with_specials(text);
        tokens.truncate(self.max_tokens);
        tokens
    }

    /// Mean-pooled embeddings of the given token sequences, decoded together.
    ///
    /// # Errors
    /// [`EngineError::BatchTooLarge`] past the limits above; [`EngineError::NoEmbedding`] when
    /// the model cannot embed.
    pub fn embed(&mut self, texts: &[Vec<Token>]) -> Result<Vec<Vec<f32>>, EngineError> {
        let tokens: usize = texts.iter().map(Vec::len).sum();
        if tokens > Self::BATCH_TOKENS
            || texts.len() > self.max_sequences
            || texts.iter().any(|t| t.len() > self.max_tokens)
        {
            return Err(EngineError::BatchTooLarge {
                tokens,
                sequences: texts.len(),
                max_tokens: Self::BATCH_TOKENS,
                max_sequences: self.max_sequences,
            });
        }
        self.batch.clear();
        for (seq_id, text) in texts.iter().enumerate() {
            for (pos, &token) in text.iter().enumerate() {
                self.batch
                    .add(LlamaToken(token), pos as i32, &[seq_id as i32], true)
                    .map_err(|e| EngineError::Decode(e.to_string()))?;
            }
        }
        let decoded = self.ctx.decode(&mut self.batch);
        let result = decoded
            .map_err(|e| EngineError::Decode(format!("{e} ({})", self.model.path.display())))
            .and_then(|()| {
                (0..texts.len())
                    .map(|seq| {
                        self.ctx
                            .embeddings_seq_ith(seq as i32)
                            .map(<[f32]>::to_vec)
                            .map_err(|_| EngineError::NoEmbedding {
                                path: self.model.path.clone(),
                            })
                    })
                    .collect()
            });
        self.ctx.clear_kv_cache();
        result
    }
}
