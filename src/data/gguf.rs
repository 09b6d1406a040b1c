//! What a GGUF file claims about itself, read and checked before llama.cpp sees the file.
//!
//! Users score with model files they downloaded, so a model file is untrusted input. This
//! module walks the file's header (version, counts, every metadata key and value, every tensor
//! record) with each length checked against the bytes that remain, so no count or string in
//! the file can make miwv, or llama.cpp after it, allocate or loop beyond the file's own size.
//! It then checks what miwv relies on: the architecture, the vocabulary (the token list, and the
//! scores and types beside it), the special-token ids, the training context length and the
//! chat template's size, each within sane ranges and consistent with each other. A file that
//! fails is refused with the metadata key named. Tensor data is left to llama.cpp.
//!
//! Pure Rust with no native code, so the fuzz target (`fuzz/fuzz_targets/gguf.rs`) runs it.

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The longest chat template accepted. Real templates are a few KiB (the longest in the test
/// catalogue is under 8 KiB); this leaves a wide margin and bounds what a template may cost.
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;
/// The longest metadata string other than the template (a key, a token, a name).
pub const MAX_STRING_BYTES: u64 = 1 << 16;
/// The most entries in one metadata array (real vocabularies hold up to about 260,000 tokens,
/// merge lists a few times that).
pub const MAX_ARRAY_LEN: u64 = 1 << 24;
/// The most metadata pairs and tensors a file may declare (real files: tens of pairs and
/// at most a few thousand tensors).
pub const MAX_ENTRIES: u64 = 1 << 20;
/// The longest training context accepted (2^28 tokens, far past any model's).
pub const MAX_CONTEXT: u64 = 1 << 28;

/// A model file that cannot be used, with the part of it at fault.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct GgufError {
    /// The model file.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: GgufProblem,
}

/// What is wrong with a GGUF file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufProblem {
    /// Not readable.
    #[error("cannot read the model file: {0}")]
    Unreadable(String),
    /// No GGUF magic.
    #[error("not a GGUF file")]
    NotGguf,
    /// A GGUF version llama.cpp does not read.
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    Version(u32),
    /// The header ends before what it declares.
    #[error("the header is cut off at byte {at} while reading {what}")]
    Truncated {
        /// Byte offset.
        at: u64,
        /// What was being read.
        what: String,
    },
    /// A count or length beyond what the file's remaining bytes can hold.
    #[error("{what} declares {count}, but the file holds at most {fits} from byte {at} on: it is cut off, or the count is false")]
    Short {
        /// What declares it.
        what: String,
        /// The declared count or length.
        count: u64,
        /// The most the rest of the file can hold.
        fits: u64,
        /// Byte offset.
        at: u64,
    },
    /// A count or length beyond the limits.
    #[error("{what} declares {count}, more than {limit}")]
    TooLarge {
        /// What declares it (a key, `metadata pairs`, `tensors`).
        what: String,
        /// The declared count or length.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// A value of an unknown type.
    #[error("metadata `{key}`: unknown value type {kind}")]
    UnknownType {
        /// The key.
        key: String,
        /// The type code.
        kind: u32,
    },
    /// Text that is not UTF-8.
    #[error("{what} is not UTF-8")]
    NotUtf8 {
        /// What holds it.
        what: String,
    },
    /// A key miwv needs is missing, or of the wrong type.
    #[error("metadata `{key}`: {expected}")]
    Field {
        /// The key.
        key: String,
        /// What was expected.
        expected: String,
    },
    /// Two fields disagree.
    #[error("metadata `{key}` ({value}) does not fit `{other}` ({other_value})")]
    Inconsistent {
        /// The key at fault.
        key: String,
        /// Its value.
        value: u64,
        /// The key it must fit.
        other: String,
        /// That key's value.
        other_value: u64,
    },
}

/// What miwv reads from a GGUF file's metadata, checked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GgufSummary {
    /// The GGUF version.
    pub version: u32,
    /// Tensors declared.
    pub tensors: u64,
    /// `general.architecture`.
    pub architecture: String,
    /// Tokens in `tokenizer.ggml.tokens`.
    pub vocab: u64,
    /// `{arch}.context_length`, when present.
    pub context_length: Option<u64>,
    /// Every `tokenizer.ggml.*_token_id` and its value.
    pub special_tokens: Vec<(String, u64)>,
    /// The length of `tokenizer.chat_template` in bytes, when present.
    pub chat_template_bytes: Option<usize>,
    /// Where the header (magic, counts, metadata and tensor records) ends.
    pub header_bytes: u64,
    /// Where the tensor data starts: the header's end, aligned to `general.alignment`.
    pub data_offset: u64,
}

/// Reads and checks the metadata of the GGUF file at `path`.
///
/// # Errors
/// [`GgufError`] naming the file and the part of it at fault.
pub fn check_file(path: &Path) -> Result<GgufSummary, GgufError> {
    let fail = |problem| GgufError {
        path: path.to_path_buf(),
        problem,
    };
    let file =
        std::fs::File::open(path).map_err(|e| fail(GgufProblem::Unreadable(e.to_string())))?;
    let len = file
        .metadata()
        .map_err(|e| fail(GgufProblem::Unreadable(e.to_string())))?
        .len();
    read_metadata(BufReader::new(file), len).map_err(fail)
}

/// Reads and checks the metadata of a GGUF file of `len` bytes from `reader`.
///
/// # Errors
/// [`GgufProblem`] naming the part at fault.
pub fn read_metadata(reader: impl Read + Seek, len: u64) -> Result<GgufSummary, GgufProblem> {
    let mut header = Header { reader, at: 0, len };
    let mut found = Found::default();
    let mut magic = [0u8; 4];
    header.bytes(&mut magic, "the magic")?;
    if &magic != b"GGUF" {
        return Err(GgufProblem::NotGguf);
    }
    let version = header.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufProblem::Version(version));
    }
    let tensors = header.count("tensors", MAX_ENTRIES, 8 + 4 + 8 + 4 + 8)?;
    let pairs = header.count("metadata pairs", MAX_ENTRIES, 8 + 4 + 1)?;
    for _ in 0..pairs {
        let key = header.string("a metadata key", MAX_STRING_BYTES)?;
        let kind = header.u32(&key)?;
        found.value(&mut header, &key, kind)?;
    }
    for _ in 0..tensors {
        header.skip_tensor_record()?;
    }
    let alignment = found.alignment.unwrap_or(32);
    if alignment == 0 || !alignment.is_power_of_two() || alignment > 1 << 16 {
        return Err(GgufProblem::Field {
            key: "general.alignment".into(),
            expected: format!("{alignment} is not a power of two up to 65536"),
        });
    }
    let header_bytes = header.at;
    found.check(version, tensors, header_bytes, alignment)
}

/// The file read so far, every read checked against its length.
struct Header<R> {
    reader: R,
    at: u64,
    len: u64,
}

impl<R: Read + Seek> Header<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.at)
    }

    fn bytes(&mut self, buffer: &mut [u8], what: &str) -> Result<(), GgufProblem> {
        if (buffer.len() as u64) > self.remaining() {
            return Err(self.truncated(what));
        }
        self.reader
            .read_exact(buffer)
            .map_err(|_| self.truncated(what))?;
        self.at += buffer.len() as u64;
        Ok(())
    }

    fn truncated(&self, what: &str) -> GgufProblem {
        GgufProblem::Truncated {
            at: self.at,
            what: what.to_string(),
        }
    }

    fn skip(&mut self, bytes: u64, what: &str) -> Result<(), GgufProblem> {
        if bytes > self.remaining() {
            return Err(self.truncated(what));
        }
        let offset = i64::try_from(bytes).map_err(|_| self.truncated(what))?;
        self.reader
            .seek(SeekFrom::Current(offset))
            .map_err(|_| self.truncated(what))?;
        self.at += bytes;
        Ok(())
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufProblem> {
        let mut b = [0u8; 4];
        self.bytes(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufProblem> {
        let mut b = [0u8; 8];
        self.bytes(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A count of items of at least `least_bytes` each: within `limit` and what the file's
    /// remaining bytes can hold.
    fn count(&mut self, what: &str, limit: u64, least_bytes: u64) -> Result<u64, GgufProblem> {
        let count = self.u64(what)?;
        if count > limit {
            return Err(GgufProblem::TooLarge {
                what: what.to_string(),
                count,
                limit,
            });
        }
        let fits = self.remaining() / least_bytes.max(1);
        if count > fits {
            return Err(GgufProblem::Short {
                what: what.to_string(),
                count,
                fits,
                at: self.at,
            });
        }
        Ok(count)
    }

    fn string_length(&mut self, what: &str, limit: u64) -> Result<u64, GgufProblem> {
        self.count(what, limit, 1)
    }

    fn string(&mut self, what: &str, limit: u64) -> Result<String, GgufProblem> {
        let len = self.string_length(what, limit)?;
        let mut bytes = vec![0u8; len as usize];
        self.bytes(&mut bytes, what)?;
        String::from_utf8(bytes).map_err(|_| GgufProblem::NotUtf8 {
            what: what.to_string(),
        })
    }

    fn skip_string(&mut self, what: &str, limit: u64) -> Result<(), GgufProblem> {
        let len = self.string_length(what, limit)?;
        self.skip(len, what)
    }

    fn skip_tensor_record(&mut self) -> Result<(), GgufProblem> {
        self.skip_string("a tensor name", MAX_STRING_BYTES)?;
        let dims = self.u32("a tensor's dimensions")?;
        if dims > 8 {
            return Err(GgufProblem::TooLarge {
                what: "a tensor's dimensions".into(),
                count: dims.into(),
                limit: 8,
            });
        }
        self.skip(u64::from(dims) * 8 + 4 + 8, "a tensor record")
    }
}

/// The fixed size of a scalar value type, `None` for strings and arrays.
fn scalar_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

const STRING: u32 = 8;
const ARRAY: u32 = 9;

/// The values of the keys miwv checks, gathered while the rest is skipped.
#[derive(Default)]
struct Found {
    architecture: Option<String>,
    /// Keys ending in `.context_length`, with their values.
    context_lengths: Vec<(String, u64)>,
    /// Lengths of the vocabulary arrays that must agree (`tokens`, `scores`, `token_type`).
    vocab_arrays: Vec<(String, u64)>,
    special_tokens: Vec<(String, u64)>,
    chat_template_bytes: Option<usize>,
    alignment: Option<u64>,
}

impl Found {
    fn value<R: Read + Seek>(
        &mut self,
        header: &mut Header<R>,
        key: &str,
        kind: u32,
    ) -> Result<(), GgufProblem> {
        match kind {
            STRING => self.string(header, key),
            ARRAY => self.array(header, key),
            _ => {
                let size = scalar_size(kind).ok_or_else(|| GgufProblem::UnknownType {
                    key: key.to_string(),
                    kind,
                })?;
                let mut b = [0u8; 8];
                header.bytes(&mut b[..size as usize], key)?;
                let integer = match kind {
                    0 | 2 | 4 | 10 => Some(u64::from_le_bytes(b)),
                    // Signed: a negative id or length is refused below as out of range.
                    1 => Some(i8::from_le_bytes([b[0]]) as i64 as u64),
                    3 => Some(i16::from_le_bytes([b[0], b[1]]) as i64 as u64),
                    5 => Some(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64 as u64),
                    11 => Some(i64::from_le_bytes(b) as u64),
                    _ => None,
                };
                self.integer(key, integer);
                Ok(())
            }
        }
    }

    fn integer(&mut self, key: &str, value: Option<u64>) {
        let Some(value) = value else {
            return;
        };
        if key == "general.alignment" {
            self.alignment = Some(value);
        } else if key.starts_with("tokenizer.ggml.") && key.ends_with("_token_id") {
            self.special_tokens.push((key.to_string(), value));
        } else if key.ends_with(".context_length") {
            self.context_lengths.push((key.to_string(), value));
        }
    }

    fn string<R: Read + Seek>(
        &mut self,
        header: &mut Header<R>,
        key: &str,
    ) -> Result<(), GgufProblem> {
        match key {
            "general.architecture" => {
                self.architecture = Some(header.string(key, 64)?);
            }
            "tokenizer.chat_template" => {
                let len = header.string_length(key, MAX_TEMPLATE_BYTES as u64)?;
                header.skip(len, key)?;
                self.chat_template_bytes = Some(len as usize);
            }
            _ => header.skip_string(key, MAX_STRING_BYTES)?,
        }
        Ok(())
    }

    fn array<R: Read + Seek>(
        &mut self,
        header: &mut Header<R>,
        key: &str,
    ) -> Result<(), GgufProblem> {
        let kind = header.u32(key)?;
        let least = match kind {
            STRING => 8,
            ARRAY => {
                return Err(GgufProblem::Field {
                    key: key.to_string(),
                    expected: "an array of arrays is not a value miwv reads".into(),
                })
            }
            _ => scalar_size(kind).ok_or_else(|| GgufProblem::UnknownType {
                key: key.to_string(),
                kind,
            })?,
        };
        let count = header.count(key, MAX_ARRAY_LEN, least)?;
        if matches!(
            key,
            "tokenizer.ggml.tokens" | "tokenizer.ggml.scores" | "tokenizer.ggml.token_type"
        ) {
            self.vocab_arrays.push((key.to_string(), count));
        }
        if kind == STRING {
            for _ in 0..count {
                header.skip_string(key, MAX_STRING_BYTES)?;
            }
            Ok(())
        } else {
            header.skip(count * least, key)
        }
    }

    fn check(
        self,
        version: u32,
        tensors: u64,
        header_bytes: u64,
        alignment: u64,
    ) -> Result<GgufSummary, GgufProblem> {
        let field = |key: &str, expected: &str| GgufProblem::Field {
            key: key.to_string(),
            expected: expected.to_string(),
        };
        let architecture = self
            .architecture
            .filter(|a| !a.is_empty())
            .ok_or_else(|| field("general.architecture", "missing: llama.cpp needs it"))?;
        let tokens = "tokenizer.ggml.tokens";
        let vocab = self
            .vocab_arrays
            .iter()
            .find(|(key, _)| key == tokens)
            .map(|&(_, n)| n)
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                field(
                    tokens,
                    "missing or empty: miwv scores with the model's own vocabulary",
                )
            })?;
        for (key, n) in &self.vocab_arrays {
            if *n != vocab {
                return Err(inconsistent(key, *n, tokens, vocab));
            }
        }
        for (key, id) in &self.special_tokens {
            if *id >= vocab {
                return Err(inconsistent(key, *id, tokens, vocab));
            }
        }
        let context_key = format!("{architecture}.context_length");
        let context_length = self
            .context_lengths
            .iter()
            .find(|(key, _)| *key == context_key)
            .map(|&(_, n)| n);
        if let Some(n) = context_length {
            if n == 0 || n > MAX_CONTEXT {
                return Err(field(
                    &context_key,
                    &format!("{n} tokens is not a training context (1 to {MAX_CONTEXT})"),
                ));
            }
        }
        Ok(GgufSummary {
            version,
            tensors,
            architecture,
            vocab,
            context_length,
            special_tokens: self.special_tokens,
            chat_template_bytes: self.chat_template_bytes,
            header_bytes,
            data_offset: header_bytes.div_ceil(alignment) * alignment,
        })
    }
}

fn inconsistent(key: &str, value: u64, other: &str, other_value: u64) -> GgufProblem {
    GgufProblem::Inconsistent {
        key: key.to_string(),
        value,
        other: other.to_string(),
        other_value,
    }
}
