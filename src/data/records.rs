//! Dataset file formats: which one a file is, reading its records, and writing a selection back
//! in the same format.
//!
//! Instruction datasets come as JSON arrays, JSON Lines, gzip-compressed JSON Lines and, from
//! the Hugging Face Hub, Parquet. [`crate::data::dataset`] parses JSON text; this module gets that text
//! out of a compressed file, turns Parquet rows into the same JSON objects, and writes the
//! selected subset in the input's own format, so the result drops into the user's pipeline where
//! the original file was. Parquet output copies the chosen rows from the input file itself rather
//! than converting the JSON back, so column types and schema metadata (the `huggingface`
//! features entry among them) come out exactly as they went in.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Decimal128Type, Decimal256Type, Decimal32Type, Decimal64Type,
    Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    Time32MillisecondType, Time32SecondType, Time64MicrosecondType, Time64NanosecondType,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{
    Array, FixedSizeListArray, GenericListArray, MapArray, OffsetSizeTrait, RecordBatch,
    StructArray,
};
use arrow_schema::{DataType, TimeUnit};
use base64::Engine as _;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde_json::{Map, Value};

use crate::data::dataset::{
    parse_dataset_with, samples_from_records, Dataset, Location, ReadOptions,
};
use crate::data::output::{write_atomically, OutputError};

const PARQUET_MAGIC: &[u8; 4] = b"PAR1";
const GZIP_MAGIC: &[u8; 2] = &[0x1f, 0x8b];

/// How the records of a file are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    JsonLines,
    /// An Apache Parquet file; each row is a record.
    Parquet,
}

/// The on-disk format of a dataset file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileFormat {
    /// How the records are laid out.
    pub kind: Kind,
    /// Whether the JSON text is gzip-compressed (always false for Parquet, which compresses
    /// inside the file).
    pub gzip: bool,
}

impl fmt::Display for FileFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Json => "JSON",
            Kind::JsonLines => "JSON Lines",
            Kind::Parquet => "Parquet",
        })?;
        if self.gzip {
            f.write_str(", gzip-compressed")?;
        }
        Ok(())
    }
}

/// Why a dataset file could not be read or its selection written.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The dataset file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is named as Parquet but its bytes are something else.
    #[error("{path}: named .parquet but is not a Parquet file: it starts with {found}, not PAR1")]
    NotParquet {
        /// The dataset file.
        path: PathBuf,
        /// What the first bytes are instead.
        found: String,
    },
    /// The gzip stream is corrupt or ends early.
    #[error("{path}: cannot decompress (corrupt or cut-off gzip data): {source}")]
    Gzip {
        /// The dataset file.
        path: PathBuf,
        /// What the decoder reported.
        source: io::Error,
    },
    /// The (decompressed) text is not UTF-8.
    #[error("{path}: line {line}: not valid UTF-8")]
    Encoding {
        /// The dataset file.
        path: PathBuf,
        /// 1-based line of the first invalid byte.
        line: usize,
    },
    /// Text was asked for from a Parquet file.
    #[error("{path}: is a Parquet file, not JSON text")]
    NotText {
        /// The dataset file.
        path: PathBuf,
    },
    /// The Parquet reader or writer failed.
    #[error("{path}: {source}")]
    Parquet {
        /// The Parquet file.
        path: PathBuf,
        /// The underlying error.
        source: parquet::errors::ParquetError,
    },
    /// A Parquet column has a type that has no JSON form.
    #[error("{path}: column `{column}`: type {data_type} has no JSON form{detail}")]
    UnsupportedType {
        /// The Parquet file.
        path: PathBuf,
        /// The column, with `[]` for list items, `.name` for struct fields and `{}` for map
        /// values, e.g. `messages[].role`.
        column: String,
        /// The Arrow type of that column.
        data_type: String,
        /// More on why, or empty.
        detail: String,
    },
    /// A row to write back is past the end of the source file.
    #[error("{path}: row {row} was selected but the file has {rows} rows (did it change since it was read?)")]
    RowOutOfRange {
        /// The source file.
        path: PathBuf,
        /// The 0-based row asked for.
        row: usize,
        /// Rows in the file.
        rows: usize,
    },
    /// Records can only be written as JSON by [`write_records`]; Parquet goes through
    /// [`write_parquet_rows`].
    #[error("{path}: JSON records cannot be written as Parquet; copy the rows from the source file instead")]
    RecordsAsParquet {
        /// The output file.
        path: PathBuf,
    },
    /// The output file could not be written.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A record is malformed (file, line, record and field named).
    #[error(transparent)]
    Dataset(#[from] crate::data::dataset::DatasetError),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> RecordsError + '_ {
    move |source| RecordsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn parquet_error(path: &Path) -> impl FnOnce(parquet::errors::ParquetError) -> RecordsError + '_ {
    move |source| RecordsError::Parquet {
        path: path.to_path_buf(),
        source,
    }
}

/// Finds the format of a dataset file from its bytes, checked against its name.
///
/// The bytes decide: `PAR1` means Parquet, `1f 8b` gzip; for JSON text the first non-blank
/// character after any byte-order mark decides between an array (`[`) and JSON Lines, as
/// [`crate::data::dataset::parse_dataset`] does, so that the selection is written in the shape the
/// records were read in. (Files named `.json` on the Hub are often JSON Lines, and a `.jsonl.gz`
/// download may already be decompressed.) The name is used only where the bytes cannot tell: a
/// file named `.parquet` must be Parquet, and an empty file named `.json` or `.json.gz` is an
/// empty array.
///
/// # Errors
/// [`RecordsError::Io`] when the file cannot be read, [`RecordsError::NotParquet`] for a
/// `.parquet` name on other bytes, [`RecordsError::Gzip`] for a corrupt gzip start.
pub fn detect(path: &Path) -> Result<FileFormat, RecordsError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let mut magic = Vec::with_capacity(4);
    (&mut file)
        .take(4)
        .read_to_end(&mut magic)
        .map_err(io_error(path))?;
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if magic == PARQUET_MAGIC {
        return Ok(FileFormat {
            kind: Kind::Parquet,
            gzip: false,
        });
    }
    let gzip = magic.starts_with(GZIP_MAGIC);
    if name.ends_with(".parquet") {
        let found = if gzip {
            "gzip's magic bytes 1f 8b".to_string()
        } else if magic.is_empty() {
            "nothing (the file is empty)".to_string()
        } else {
            format!("{:02x?}", magic)
        };
        return Err(RecordsError::NotParquet {
            path: path.to_path_buf(),
            found,
        });
    }
    let file = File::open(path).map_err(io_error(path))?;
    let first = if gzip {
        first_character(MultiGzDecoder::new(file)).map_err(|source| RecordsError::Gzip {
            path: path.to_path_buf(),
            source,
        })?
    } else {
        first_character(file).map_err(io_error(path))?
    };
    let kind = match first {
        Some(b'[') => Kind::Json,
        Some(_) => Kind::JsonLines,
        None if name.ends_with(".json") || name.ends_with(".json.gz") => Kind::Json,
        None => Kind::JsonLines,
    };
    Ok(FileFormat { kind, gzip })
}

/// The first byte after a UTF-8 byte-order mark and JSON whitespace, or `None` when there is
/// none.
fn first_character(reader: impl Read) -> io::Result<Option<u8>> {
    const BOM: &[u8] = b"\xef\xbb\xbf";
    let mut reader = io::BufReader::new(reader);
    let mut position = 0usize;
    loop {
        let buf = io::BufRead::fill_buf(&mut reader)?;
        if buf.is_empty() {
            return Ok(None);
        }
        let mut used = 0;
        for &b in buf {
            used += 1;
            let in_bom = position < BOM.len() && b == BOM[position];
            position += 1;
            if !in_bom && !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return Ok(Some(b));
            }
        }
        io::BufRead::consume(&mut reader, used);
    }
}

/// Reads a JSON or JSON Lines file's bytes, decompressed when `format.gzip` is set.
///
/// This is what [`crate::data::dataset::parse_dataset`] takes: it locates bad UTF-8 by line and
/// forgives a file cut inside its last character. A gzip stream that ends early is an error
/// here, though, since the decoder cannot tell where the good data stops.
///
/// # Errors
/// [`RecordsError::NotText`] for Parquet, [`RecordsError::Io`] or [`RecordsError::Gzip`].
pub fn read_bytes(path: &Path, format: FileFormat) -> Result<Vec<u8>, RecordsError> {
    if format.kind == Kind::Parquet {
        return Err(RecordsError::NotText {
            path: path.to_path_buf(),
        });
    }
    if !format.gzip {
        return std::fs::read(path).map_err(io_error(path));
    }
    let file = File::open(path).map_err(io_error(path))?;
    let mut bytes = Vec::new();
    MultiGzDecoder::new(io::BufReader::new(file))
        .read_to_end(&mut bytes)
        .map_err(|source| RecordsError::Gzip {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(bytes)
}

/// Reads a JSON or JSON Lines file as text, decompressed when `format.gzip` is set.
///
/// # Errors
/// As [`read_bytes`], and [`RecordsError::Encoding`] with the line of the first byte that is
/// not UTF-8.
pub fn read_text(path: &Path, format: FileFormat) -> Result<String, RecordsError> {
    String::from_utf8(read_bytes(path, format)?).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        RecordsError::Encoding {
            path: path.to_path_buf(),
            line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
        }
    })
}

/// Reads every row of a Parquet file as a JSON object keyed by column name, in column order.
///
/// Strings, integers, booleans and nulls map to their JSON counterparts; floats to numbers
/// (`float32` by its shortest decimal form, so `0.1f32` reads `0.1`; NaN and infinities, which
/// JSON lacks, to null); lists to arrays; structs to objects; maps with string keys to objects
/// (a repeated key keeps its last value). Types without a JSON counterpart become strings, so an
/// unused image or timestamp column does not make a dataset unreadable: binary data as its
/// text when it is UTF-8 and as standard base64 otherwise; decimals in exact decimal notation;
/// dates, times and timestamps in ISO 8601 (`2024-05-01`, `12:30:00`, `2024-05-01T12:30:00`,
/// with `Z` when the column has a time zone, since the values are UTC instants). Dictionary
/// columns read as their values. Durations, intervals, unions and run-end encoded columns are
/// an error.
///
/// # Errors
/// [`RecordsError::Io`], [`RecordsError::Parquet`] for a file the reader rejects, and
/// [`RecordsError::UnsupportedType`] naming the column.
pub fn read_parquet_rows(path: &Path) -> Result<Vec<Map<String, Value>>, RecordsError> {
    let file = File::open(path).map_err(io_error(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|builder| builder.build())
        .map_err(parquet_error(path))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| RecordsError::Parquet {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        let schema = batch.schema();
        let mut columns = Vec::with_capacity(batch.num_columns());
        for (field, column) in schema.fields().iter().zip(batch.columns()) {
            let values = json_values(column.as_ref(), field.name()).map_err(|unsupported| {
                RecordsError::UnsupportedType {
                    path: path.to_path_buf(),
                    column: unsupported.column,
                    data_type: unsupported.data_type.to_string(),
                    detail: unsupported.detail,
                }
            })?;
            columns.push(values.into_iter());
        }
        for _ in 0..batch.num_rows() {
            let mut row = Map::with_capacity(columns.len());
            for (field, values) in schema.fields().iter().zip(columns.iter_mut()) {
                row.insert(field.name().clone(), values.next().unwrap_or(Value::Null));
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// A column whose type has no JSON form, found while converting.
struct Unsupported {
    column: String,
    data_type: DataType,
    detail: String,
}

impl Unsupported {
    fn new(column: &str, data_type: &DataType, detail: &str) -> Self {
        Unsupported {
            column: column.to_string(),
            data_type: data_type.clone(),
            detail: detail.to_string(),
        }
    }
}

/// One JSON value per element of `array`, nulls as `Value::Null`. Works a whole column at a
/// time, so the type dispatch happens once per batch rather than once per cell.
fn json_values(array: &dyn Array, column: &str) -> Result<Vec<Value>, Unsupported> {
    if let Some(values) = scalar_values(array).or_else(|| temporal_values(array)) {
        return Ok(values);
    }
    let data_type = array.data_type();
    match data_type {
        DataType::List(_) => list_values(array.as_list::<i32>(), column),
        DataType::LargeList(_) => list_values(array.as_list::<i64>(), column),
        DataType::FixedSizeList(..) => fixed_size_list_values(array.as_fixed_size_list(), column),
        DataType::Struct(_) => struct_values(array.as_struct(), column),
        DataType::Map(..) => map_values(array.as_map(), column),
        DataType::Dictionary(..) => {
            let dictionary = array.as_any_dictionary();
            let values = json_values(dictionary.values().as_ref(), column)?;
            let keys = dictionary.normalized_keys();
            Ok(each(array, |i| values[keys[i]].clone()))
        }
        _ => Err(Unsupported::new(column, data_type, "")),
    }
}

/// Each row of `array` through `value`, null rows as JSON null.
fn each(array: &dyn Array, value: impl Fn(usize) -> Value) -> Vec<Value> {
    (0..array.len())
        .map(|i| {
            if array.is_null(i) {
                Value::Null
            } else {
                value(i)
            }
        })
        .collect()
}

macro_rules! primitive {
    ($array:expr, $t:ty, $to:expr) => {{
        let a = $array.as_primitive::<$t>();
        each($array, |i| $to(a.value(i)))
    }};
}

macro_rules! binary {
    ($array:expr, $a:expr) => {{
        let a = $a;
        each($array, |i| binary_value(a.value(i)))
    }};
}

macro_rules! decimal {
    ($array:expr, $t:ty) => {{
        let a = $array.as_primitive::<$t>();
        each($array, |i| Value::String(a.value_as_string(i)))
    }};
}

macro_rules! temporal {
    ($array:expr, $t:ty, $method:ident, $format:expr) => {{
        let a = $array.as_primitive::<$t>();
        each($array, |i| {
            a.$method(i).map_or(Value::Null, |v| {
                Value::String(v.format($format).to_string())
            })
        })
    }};
}

/// Numbers, booleans, strings and bytes; `None` for other types.
fn scalar_values(array: &dyn Array) -> Option<Vec<Value>> {
    let string = |s: &str| Value::String(s.to_string());
    Some(match array.data_type() {
        DataType::Null => vec![Value::Null; array.len()],
        DataType::Boolean => {
            let a = array.as_boolean();
            each(array, |i| Value::Bool(a.value(i)))
        }
        DataType::Int8 => primitive!(array, Int8Type, Value::from),
        DataType::Int16 => primitive!(array, Int16Type, Value::from),
        DataType::Int32 => primitive!(array, Int32Type, Value::from),
        DataType::Int64 => primitive!(array, Int64Type, Value::from),
        DataType::UInt8 => primitive!(array, UInt8Type, Value::from),
        DataType::UInt16 => primitive!(array, UInt16Type, Value::from),
        DataType::UInt32 => primitive!(array, UInt32Type, Value::from),
        DataType::UInt64 => primitive!(array, UInt64Type, Value::from),
        DataType::Float16 => {
            let a = array.as_primitive::<Float16Type>();
            each(array, |i| float32_value(a.value(i).to_f32()))
        }
        DataType::Float32 => primitive!(array, Float32Type, float32_value),
        DataType::Float64 => primitive!(array, Float64Type, Value::from),
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            each(array, |i| string(a.value(i)))
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            each(array, |i| string(a.value(i)))
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            each(array, |i| string(a.value(i)))
        }
        DataType::Binary => binary!(array, array.as_binary::<i32>()),
        DataType::LargeBinary => binary!(array, array.as_binary::<i64>()),
        DataType::BinaryView => binary!(array, array.as_binary_view()),
        DataType::FixedSizeBinary(_) => binary!(array, array.as_fixed_size_binary()),
        DataType::Decimal32(..) => decimal!(array, Decimal32Type),
        DataType::Decimal64(..) => decimal!(array, Decimal64Type),
        DataType::Decimal128(..) => decimal!(array, Decimal128Type),
        DataType::Decimal256(..) => decimal!(array, Decimal256Type),
        _ => return None,
    })
}

/// Dates, times and timestamps as ISO 8601 text; `None` for other types.
fn temporal_values(array: &dyn Array) -> Option<Vec<Value>> {
    const DATE_TIME: &str = "%Y-%m-%dT%H:%M:%S%.f";
    const DATE_TIME_UTC: &str = "%Y-%m-%dT%H:%M:%S%.fZ";
    Some(match array.data_type() {
        DataType::Date32 => temporal!(array, Date32Type, value_as_date, "%Y-%m-%d"),
        // Date64 counts milliseconds, but Arrow and Parquet mean it as a calendar date.
        DataType::Date64 => temporal!(array, Date64Type, value_as_date, "%Y-%m-%d"),
        DataType::Time32(TimeUnit::Second) => {
            temporal!(array, Time32SecondType, value_as_time, "%H:%M:%S")
        }
        DataType::Time32(TimeUnit::Millisecond) => {
            temporal!(array, Time32MillisecondType, value_as_time, "%H:%M:%S%.f")
        }
        DataType::Time64(TimeUnit::Microsecond) => {
            temporal!(array, Time64MicrosecondType, value_as_time, "%H:%M:%S%.f")
        }
        DataType::Time64(TimeUnit::Nanosecond) => {
            temporal!(array, Time64NanosecondType, value_as_time, "%H:%M:%S%.f")
        }
        DataType::Timestamp(unit, zone) => {
            let format = if zone.is_some() {
                DATE_TIME_UTC
            } else {
                DATE_TIME
            };
            match unit {
                TimeUnit::Second => {
                    temporal!(array, TimestampSecondType, value_as_datetime, format)
                }
                TimeUnit::Millisecond => {
                    temporal!(array, TimestampMillisecondType, value_as_datetime, format)
                }
                TimeUnit::Microsecond => {
                    temporal!(array, TimestampMicrosecondType, value_as_datetime, format)
                }
                TimeUnit::Nanosecond => {
                    temporal!(array, TimestampNanosecondType, value_as_datetime, format)
                }
            }
        }
        _ => return None,
    })
}

/// Fixed-size lists as JSON arrays.
fn fixed_size_list_values(
    list: &FixedSizeListArray,
    column: &str,
) -> Result<Vec<Value>, Unsupported> {
    let mut items = json_values(list.values().as_ref(), &format!("{column}[]"))?;
    let length = list.value_length() as usize;
    Ok((0..list.len())
        .map(|i| {
            if list.is_null(i) {
                return Value::Null;
            }
            let start = list.value_offset_at(i);
            Value::Array(
                items[start..start + length]
                    .iter_mut()
                    .map(Value::take)
                    .collect(),
            )
        })
        .collect())
}

/// Structs as JSON objects, their fields in schema order.
fn struct_values(array: &StructArray, column: &str) -> Result<Vec<Value>, Unsupported> {
    let fields = array.fields();
    let mut children = Vec::with_capacity(fields.len());
    for (field, child) in fields.iter().zip(array.columns()) {
        let values = json_values(child.as_ref(), &format!("{column}.{}", field.name()))?;
        children.push(values.into_iter());
    }
    Ok((0..array.len())
        .map(|i| {
            let mut object = Map::with_capacity(fields.len());
            for (field, values) in fields.iter().zip(children.iter_mut()) {
                object.insert(field.name().clone(), values.next().unwrap_or(Value::Null));
            }
            if array.is_null(i) {
                Value::Null
            } else {
                Value::Object(object)
            }
        })
        .collect())
}

/// Maps with string keys as JSON objects.
fn map_values(map: &MapArray, column: &str) -> Result<Vec<Value>, Unsupported> {
    if !matches!(
        map.key_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return Err(Unsupported::new(
            column,
            map.data_type(),
            ": JSON object keys must be strings",
        ));
    }
    let keys = json_values(map.keys().as_ref(), &format!("{column}{{}}"))?;
    let mut values = json_values(map.values().as_ref(), &format!("{column}{{}}"))?;
    let offsets = map.value_offsets();
    Ok((0..map.len())
        .map(|i| {
            if map.is_null(i) {
                return Value::Null;
            }
            let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
            let object = (start..end)
                .map(|j| {
                    let key = keys[j].as_str().unwrap_or_default().to_string();
                    (key, values[j].take())
                })
                .collect();
            Value::Object(object)
        })
        .collect())
}

fn list_values<O: OffsetSizeTrait>(
    list: &GenericListArray<O>,
    column: &str,
) -> Result<Vec<Value>, Unsupported> {
    let mut items = json_values(list.values().as_ref(), &format!("{column}[]"))?;
    let offsets = list.value_offsets();
    Ok((0..list.len())
        .map(|i| {
            if list.is_null(i) {
                return Value::Null;
            }
            let (start, end) = (offsets[i].as_usize(), offsets[i + 1].as_usize());
            Value::Array(items[start..end].iter_mut().map(Value::take).collect())
        })
        .collect())
}

/// A `float32` as the JSON number it was written as: `0.1f32` widened to f64 would print as
/// 0.10000000149011612.
fn float32_value(v: f32) -> Value {
    v.to_string()
        .parse::<f64>()
        .map_or(Value::Null, Value::from)
}

/// Text stored without a string annotation (older Spark and Hive writers) reads as that text;
/// anything else, such as image bytes, as base64.
fn binary_value(bytes: &[u8]) -> Value {
    Value::String(match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => base64::engine::general_purpose::STANDARD.encode(bytes),
    })
}

/// Reads a dataset file in any supported format into samples, with the format it was in (the
/// selection is written back in it).
///
/// # Errors
/// [`RecordsError`] for the file itself or, as [`RecordsError::Dataset`], for its records.
pub fn read_samples(
    path: &Path,
    options: &ReadOptions,
) -> Result<(FileFormat, Dataset), RecordsError> {
    let format = detect(path)?;
    let dataset = match format.kind {
        Kind::Parquet => {
            let records = read_parquet_rows(path)?
                .into_iter()
                .enumerate()
                .map(|(record, row)| (Location { line: 0, record }, Value::Object(row)))
                .collect();
            Dataset {
                samples: samples_from_records(records, path, options)?,
                truncated: None,
            }
        }
        Kind::Json | Kind::JsonLines => {
            parse_dataset_with(&read_bytes(path, format)?, path, options)?
        }
    };
    Ok((format, dataset))
}

/// The file name for the selected subset of a dataset in `format`.
pub fn output_file_name(format: FileFormat) -> &'static str {
    match (format.kind, format.gzip) {
        (Kind::Json, false) => "selected.json",
        (Kind::Json, true) => "selected.json.gz",
        (Kind::JsonLines, false) => "selected.jsonl",
        (Kind::JsonLines, true) => "selected.jsonl.gz",
        (Kind::Parquet, _) => "selected.parquet",
    }
}

/// Writes the selected rows of `source` to `dst` in `format`, the format `source` was read in,
/// in the order of `rows` (0-based positions in `source`).
///
/// JSON formats write `record(row)` for each row, so the caller's records go out as read;
/// Parquet copies the rows from `source` (see [`write_parquet_rows`]) and does not call
/// `record`.
///
/// # Errors
/// As [`write_records`] or [`write_parquet_rows`].
pub fn write_selected<'a>(
    source: &Path,
    format: FileFormat,
    dst: &Path,
    rows: &[usize],
    record: impl Fn(usize) -> &'a Map<String, Value>,
) -> Result<(), RecordsError> {
    match format.kind {
        Kind::Parquet => write_parquet_rows(source, dst, rows),
        Kind::Json | Kind::JsonLines => {
            write_records(dst, format, rows.iter().map(|&row| record(row)))
        }
    }
}

/// Writes records as a JSON array (one record per line between the brackets, so that line
/// numbers in error messages still lead to a record) or as JSON Lines, gzip-compressed when
/// `format.gzip` is set; atomically, like every output file.
///
/// # Errors
/// [`RecordsError::RecordsAsParquet`] for a Parquet format, [`RecordsError::Output`] when the
/// file cannot be written.
pub fn write_records<'a>(
    dst: &Path,
    format: FileFormat,
    records: impl IntoIterator<Item = &'a Map<String, Value>>,
) -> Result<(), RecordsError> {
    if format.kind == Kind::Parquet {
        return Err(RecordsError::RecordsAsParquet {
            path: dst.to_path_buf(),
        });
    }
    let array = format.kind == Kind::Json;
    let write_text = |out: &mut dyn Write| -> io::Result<()> {
        let mut first = true;
        for record in records {
            if array {
                out.write_all(if first { b"[\n" } else { b",\n" })?;
            }
            serde_json::to_writer(&mut *out, record)?;
            if !array {
                out.write_all(b"\n")?;
            }
            first = false;
        }
        if array {
            out.write_all(if first { b"[]\n" } else { b"\n]\n" })?;
        }
        Ok(())
    };
    write_atomically(dst, |out| {
        if format.gzip {
            let mut gz = GzEncoder::new(&mut *out, flate2::Compression::default());
            write_text(&mut gz)?;
            gz.finish()?;
            Ok(())
        } else {
            write_text(out)
        }
    })?;
    Ok(())
}

/// Writes the rows of the Parquet file `source` at positions `rows`, in that order, to a new
/// Parquet file `dst` with the same Arrow schema and schema metadata.
///
/// The output uses the compression of the source's first column chunk when this build can
/// write it (snappy, zstd, gzip, lz4, none), snappy otherwise, and the source's first row
/// group size as its row group size, so readers tuned to the source find the same layout. The
/// whole source is held in memory while writing; the rows were read into memory to score them
/// anyway.
///
/// # Errors
/// [`RecordsError::Parquet`] when `source` cannot be read, [`RecordsError::RowOutOfRange`],
/// and [`RecordsError::Output`] when `dst` cannot be written.
pub fn write_parquet_rows(source: &Path, dst: &Path, rows: &[usize]) -> Result<(), RecordsError> {
    let file = File::open(source).map_err(io_error(source))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_error(source))?;
    let schema = builder.schema().clone();
    let first_group = builder.metadata().row_groups().first();
    let compression = first_group
        .and_then(|group| group.columns().first())
        .map(|column| column.compression())
        .filter(|compression| {
            matches!(
                compression,
                Compression::UNCOMPRESSED
                    | Compression::SNAPPY
                    | Compression::GZIP(_)
                    | Compression::LZ4
                    | Compression::LZ4_RAW
                    | Compression::ZSTD(_)
            )
        })
        .unwrap_or(Compression::SNAPPY);
    let group_rows = first_group
        .and_then(|group| usize::try_from(group.num_rows()).ok())
        .filter(|&n| n > 0);
    let batches = builder
        .build()
        .map_err(parquet_error(source))?
        .collect::<Result<Vec<RecordBatch>, _>>()
        .map_err(|e| RecordsError::Parquet {
            path: source.to_path_buf(),
            source: e.into(),
        })?;

    let indices = batch_rows(&batches, rows, source)?;

    // The Arrow schema embedded by the writer keeps the metadata too, but pyarrow (and so the
    // `datasets` library) reads schema metadata such as `huggingface` from the file's own
    // key-value pairs, which is where pyarrow writes it.
    let mut metadata: Vec<KeyValue> = schema
        .metadata()
        .iter()
        .map(|(key, value)| KeyValue::new(key.clone(), value.clone()))
        .collect();
    metadata.sort_by(|a, b| a.key.cmp(&b.key));
    let properties = WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(group_rows.or(Some(
            parquet::file::properties::DEFAULT_MAX_ROW_GROUP_ROW_COUNT,
        )))
        .set_key_value_metadata((!metadata.is_empty()).then_some(metadata))
        .build();
    let batch_refs: Vec<&RecordBatch> = batches.iter().collect();
    write_atomically(dst, |out| {
        let mut writer = ArrowWriter::try_new(out, Arc::clone(&schema), Some(properties))
            .map_err(io::Error::other)?;
        // Bounded chunks keep the gathered copy small next to the source held in memory.
        for chunk in indices.chunks(8192) {
            let batch = arrow_select::interleave::interleave_record_batch(&batch_refs, chunk)
                .map_err(io::Error::other)?;
            writer.write(&batch).map_err(io::Error::other)?;
        }
        writer.close().map_err(io::Error::other)?;
        Ok(())
    })?;
    Ok(())
}

/// Each of `rows` (rows of the file) as (batch, row in that batch).
fn batch_rows(
    batches: &[RecordBatch],
    rows: &[usize],
    source: &Path,
) -> Result<Vec<(usize, usize)>, RecordsError> {
    let mut starts = Vec::with_capacity(batches.len());
    let mut total = 0;
    for batch in batches {
        starts.push(total);
        total += batch.num_rows();
    }
    rows.iter()
        .map(|&row| {
            if row >= total {
                return Err(RecordsError::RowOutOfRange {
                    path: source.to_path_buf(),
                    row,
                    rows: total,
                });
            }
            let batch = starts.partition_point(|&start| start <= row) - 1;
            Ok((batch, row - starts[batch]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use arrow_array::builder::{
        Int64Builder, ListBuilder, MapBuilder, StringBuilder, StructBuilder,
    };
    use arrow_array::{
        ArrayRef, BinaryArray, Date32Array, Decimal128Array, DictionaryArray, DurationSecondArray,
        Float32Array, Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
    };
    use arrow_schema::{Field, Fields, Schema};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use serde_json::json;

    use super::*;

    fn write_parquet(path: &Path, batch: &RecordBatch, properties: WriterProperties) {
        let file = File::create(path).unwrap();
        let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(properties)).unwrap();
        writer.write(batch).unwrap();
        writer.close().unwrap();
    }

    fn snappy() -> WriterProperties {
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build()
    }

    fn objects(values: Vec<Value>) -> Vec<Map<String, Value>> {
        values
            .into_iter()
            .map(|v| match v {
                Value::Object(o) => o,
                other => panic!("not an object: {other}"),
            })
            .collect()
    }

    fn read_arrow(path: &Path) -> (Arc<Schema>, Vec<RecordBatch>) {
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
        let schema = builder.schema().clone();
        let batches = builder.build().unwrap().collect::<Result<_, _>>().unwrap();
        (schema, batches)
    }

    /// Columns as the `datasets` library writes a chat dataset, with its features entry.
    fn chat_batch() -> RecordBatch {
        let message = Fields::from(vec![
            Field::new("role", DataType::Utf8, true),
            Field::new("content", DataType::Utf8, true),
        ]);
        let mut messages = ListBuilder::new(StructBuilder::from_fields(message.clone(), 0))
            .with_field(Field::new("item", DataType::Struct(message), true));
        let conversations: [&[(&str, &str)]; 3] = [
            &[("user", "Hi"), ("assistant", "Hello!")],
            &[
                ("system", "Be brief."),
                ("user", "2+2?"),
                ("assistant", "4"),
            ],
            &[("user", "Name a colour.")],
        ];
        for conversation in conversations {
            for (role, content) in conversation {
                let turn = messages.values();
                turn.field_builder::<StringBuilder>(0)
                    .unwrap()
                    .append_value(role);
                turn.field_builder::<StringBuilder>(1)
                    .unwrap()
                    .append_value(content);
                turn.append(true);
            }
            messages.append(true);
        }
        let mut tags = ListBuilder::new(StringBuilder::new());
        tags.values().append_value("math");
        tags.values().append_null();
        tags.append(true);
        tags.append_null();
        tags.append(true);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec!["a", "b", "c"])),
            Arc::new(messages.finish()),
            Arc::new(Float64Array::from(vec![Some(0.5), None, Some(-2.25)])),
            Arc::new(tags.finish()),
        ];
        let fields: Vec<Field> = ["id", "messages", "score", "tags"]
            .iter()
            .zip(&columns)
            .map(|(name, column)| Field::new(*name, column.data_type().clone(), true))
            .collect();
        let schema = Schema::new_with_metadata(
            fields,
            HashMap::from([(
                "huggingface".to_string(),
                r#"{"info": {"features": {}}}"#.to_string(),
            )]),
        );
        RecordBatch::try_new(Arc::new(schema), columns).unwrap()
    }

    fn chat_rows() -> Vec<Map<String, Value>> {
        objects(vec![
            json!({"id": "a", "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}],
              "score": 0.5, "tags": ["math", null]}),
            json!({"id": "b", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}],
              "score": null, "tags": null}),
            json!({"id": "c", "messages": [{"role": "user", "content": "Name a colour."}],
              "score": -2.25, "tags": []}),
        ])
    }

    #[test]
    fn reads_a_chat_parquet_as_json_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train-00000-of-00001.parquet");
        write_parquet(&path, &chat_batch(), snappy());
        assert_eq!(
            detect(&path).unwrap(),
            FileFormat {
                kind: Kind::Parquet,
                gzip: false
            }
        );
        let rows = read_parquet_rows(&path).unwrap();
        assert_eq!(rows, chat_rows());
        // Column order is kept, since the records are written back as they were read.
        let keys: Vec<&String> = rows[0].keys().collect();
        assert_eq!(keys, ["id", "messages", "score", "tags"]);
    }

    #[test]
    fn writes_chosen_parquet_rows_in_order_with_the_same_schema() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("chat.parquet");
        write_parquet(&source, &chat_batch(), snappy());
        let format = detect(&source).unwrap();
        let dst = dir.path().join(output_file_name(format));
        assert_eq!(dst.file_name().unwrap(), "selected.parquet");
        write_selected(&source, format, &dst, &[2, 0], |_| {
            unreachable!("Parquet rows come from the source file")
        })
        .unwrap();

        let (in_schema, _) = read_arrow(&source);
        let (out_schema, _) = read_arrow(&dst);
        assert_eq!(out_schema, in_schema);
        let expected = chat_rows();
        assert_eq!(
            read_parquet_rows(&dst).unwrap(),
            [expected[2].clone(), expected[0].clone()]
        );
        let reader = SerializedFileReader::new(File::open(&dst).unwrap()).unwrap();
        let metadata = reader.metadata();
        assert_eq!(
            metadata.row_group(0).column(0).compression(),
            Compression::SNAPPY
        );
        let kv = metadata.file_metadata().key_value_metadata().unwrap();
        assert!(kv.iter().any(|kv| kv.key == "huggingface"
            && kv.value.as_deref() == Some(r#"{"info": {"features": {}}}"#)));
        assert!(!dir.path().join("selected.tmp").exists());
    }

    #[test]
    fn reads_an_alpaca_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alpaca.parquet");
        let columns: Vec<(&str, ArrayRef)> = vec![
            (
                "instruction",
                Arc::new(StringArray::from(vec!["Add the numbers.", "Say hi."])),
            ),
            ("input", Arc::new(StringArray::from(vec!["2 and 3", ""]))),
            ("output", Arc::new(StringArray::from(vec!["5", "Hi!"]))),
        ];
        write_parquet(
            &path,
            &RecordBatch::try_from_iter(columns).unwrap(),
            snappy(),
        );
        assert_eq!(
            read_parquet_rows(&path).unwrap(),
            objects(vec![
                json!({"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}),
                json!({"instruction": "Say hi.", "input": "", "output": "Hi!"}),
            ])
        );
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gzip_json_lines_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.jsonl.gz");
        let text = "{\"id\": \"x\", \"instruction\": \"Ünïcode\", \"output\": \"ok\"}\n\
                    {\"id\": \"y\", \"instruction\": \"b\", \"output\": \"c\", \"extra\": [1, 2.5]}\n\
                    {\"id\": \"z\", \"instruction\": \"d\", \"output\": \"e\"}\n";
        // Two gzip members, as `cat a.gz b.gz` makes: a MultiGzDecoder reads both.
        let (first, second) = text.split_at(text.find("{\"id\": \"y\"").unwrap());
        let mut bytes = gzip(first.as_bytes());
        bytes.extend(gzip(second.as_bytes()));
        std::fs::write(&path, bytes).unwrap();

        let format = detect(&path).unwrap();
        assert_eq!(
            format,
            FileFormat {
                kind: Kind::JsonLines,
                gzip: true
            }
        );
        assert_eq!(read_text(&path, format).unwrap(), text);
        let records: Vec<Map<String, Value>> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();

        let dst = dir.path().join(output_file_name(format));
        assert_eq!(dst.file_name().unwrap(), "selected.jsonl.gz");
        write_selected(&path, format, &dst, &[2, 0], |i| &records[i]).unwrap();
        assert_eq!(detect(&dst).unwrap(), format);
        let written = read_text(&dst, format).unwrap();
        let reread: Vec<Map<String, Value>> = written
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(reread, [records[2].clone(), records[0].clone()]);
        // The records go out as read, key order included.
        assert_eq!(
            written.lines().next().unwrap(),
            serde_json::to_string(&records[2]).unwrap()
        );
    }

    #[test]
    fn json_arrays_are_written_back_as_arrays() {
        let dir = tempfile::tempdir().unwrap();
        let records = objects(vec![json!({"a": 1}), json!({"b": [2]}), json!({"c": "3"})]);
        for gzip in [false, true] {
            let format = FileFormat {
                kind: Kind::Json,
                gzip,
            };
            let dst = dir.path().join(output_file_name(format));
            write_records(&dst, format, [&records[1], &records[2]]).unwrap();
            assert_eq!(detect(&dst).unwrap(), format);
            let text = read_text(&dst, format).unwrap();
            assert_eq!(text, "[\n{\"b\":[2]},\n{\"c\":\"3\"}\n]\n");
            write_records(&dst, format, []).unwrap();
            assert_eq!(read_text(&dst, format).unwrap(), "[]\n");
        }
        let parquet = FileFormat {
            kind: Kind::Parquet,
            gzip: false,
        };
        let err = write_records(&dir.path().join("x.parquet"), parquet, &records).unwrap_err();
        assert!(
            matches!(err, RecordsError::RecordsAsParquet { .. }),
            "{err}"
        );
    }

    #[test]
    fn detection_trusts_the_bytes_and_checks_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let format = |kind, gzip| FileFormat { kind, gzip };
        let cases = [
            (file("a.json", b"[{\"x\": 1}]"), format(Kind::Json, false)),
            (
                file("b.jsonl", b"{\"x\": 1}\n"),
                format(Kind::JsonLines, false),
            ),
            (
                file("c.ndjson", b"{\"x\": 1}\n"),
                format(Kind::JsonLines, false),
            ),
            // Hub files named .json are often JSON Lines; the parser goes by the content too.
            (
                file("d.json", b"{\"x\": 1}\n{\"x\": 2}\n"),
                format(Kind::JsonLines, false),
            ),
            (
                file("e.json", b"\xef\xbb\xbf \r\n\t[{\"x\": 1}]"),
                format(Kind::Json, false),
            ),
            (file("f.json.gz", &gzip(b"\n[]")), format(Kind::Json, true)),
            (
                file("g.jsonl.gz", &gzip(b"{}\n")),
                format(Kind::JsonLines, true),
            ),
            // A gzip file without the .gz name, and a .gz name on text already decompressed.
            (
                file("h.jsonl", &gzip(b"{}\n")),
                format(Kind::JsonLines, true),
            ),
            (file("i.jsonl.gz", b"{}\n"), format(Kind::JsonLines, false)),
            (file("j.json", b""), format(Kind::Json, false)),
            (file("k.jsonl", b""), format(Kind::JsonLines, false)),
            (file("l.txt", b"[]"), format(Kind::Json, false)),
        ];
        for (path, expected) in &cases {
            assert_eq!(detect(path).unwrap(), *expected, "{}", path.display());
        }
        let gz = &cases[7];
        assert_eq!(read_text(&gz.0, gz.1).unwrap(), "{}\n");

        let real = dir.path().join("real.parquet");
        write_parquet(&real, &chat_batch(), snappy());
        let renamed = file("m.bin", &std::fs::read(&real).unwrap());
        assert_eq!(detect(&renamed).unwrap(), format(Kind::Parquet, false));

        for (name, bytes, found) in [
            ("n.parquet", &b"{\"x\": 1}\n"[..], "[7b, 22, 78, 22]"),
            ("o.parquet", &gzip(b"PAR1")[..], "gzip"),
            ("p.parquet", &b""[..], "empty"),
        ] {
            let path = file(name, bytes);
            let message = detect(&path).unwrap_err().to_string();
            assert!(
                message.starts_with(&path.display().to_string()),
                "{message}"
            );
            assert!(message.contains("not a Parquet file"), "{message}");
            assert!(message.contains(found), "{message}");
        }
        let missing = dir.path().join("missing.jsonl");
        let message = detect(&missing).unwrap_err().to_string();
        assert!(message.contains("missing.jsonl"), "{message}");
    }

    #[test]
    fn bad_gzip_and_bad_text_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let gz = FileFormat {
            kind: Kind::JsonLines,
            gzip: true,
        };
        let cut = dir.path().join("cut.jsonl.gz");
        let whole = gzip("{\"x\": \"a long enough line\"}\n".repeat(50).as_bytes());
        std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
        let err = read_text(&cut, gz).unwrap_err();
        assert!(matches!(err, RecordsError::Gzip { .. }), "{err}");
        assert!(err.to_string().contains("cut.jsonl.gz"), "{err}");

        let latin1 = dir.path().join("latin1.jsonl.gz");
        std::fs::write(&latin1, gzip(b"{\"x\": 1}\n{\"x\": \"caf\xe9\"}\n")).unwrap();
        let err = read_text(&latin1, gz).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("latin1.jsonl.gz: line 2: not valid UTF-8"),
            "{message}"
        );
        // The bytes go to the dataset parser unchanged; it has its own UTF-8 handling.
        assert!(read_bytes(&latin1, gz).unwrap().ends_with(b"caf\xe9\"}\n"));

        let parquet = FileFormat {
            kind: Kind::Parquet,
            gzip: false,
        };
        let err = read_text(&latin1, parquet).unwrap_err();
        assert!(matches!(err, RecordsError::NotText { .. }), "{err}");
    }

    /// 3000 rows in row groups of 500, read in batches of 1024: selected rows straddle both
    /// kinds of boundary, and the output keeps the source's compression and row group size.
    #[test]
    fn many_row_groups_and_batches() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("big.parquet");
        let n = 3000;
        let batch = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("r{i}")),
                )) as ArrayRef,
            ),
            ("n", Arc::new(Int64Array::from_iter_values(0..n as i64))),
        ])
        .unwrap();
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(Default::default()))
            .set_max_row_group_row_count(Some(500))
            .build();
        write_parquet(&source, &batch, properties);
        let rows = read_parquet_rows(&source).unwrap();
        assert_eq!(rows.len(), n);
        assert_eq!(
            rows[2047],
            objects(vec![json!({"id": "r2047", "n": 2047})])[0]
        );

        let dst = dir.path().join("selected.parquet");
        let chosen = [2999, 0, 499, 500, 1023, 1024, 1500, 2047, 2048, 7, 2999];
        write_parquet_rows(&source, &dst, &chosen).unwrap();
        let ns: Vec<i64> = read_parquet_rows(&dst)
            .unwrap()
            .iter()
            .map(|row| row["n"].as_i64().unwrap())
            .collect();
        assert_eq!(ns, chosen.map(|i| i as i64));

        let reversed: Vec<usize> = (0..n).rev().collect();
        write_parquet_rows(&source, &dst, &reversed).unwrap();
        let (_, batches) = read_arrow(&dst);
        let out: Vec<i64> = batches
            .iter()
            .flat_map(|b| b.column(1).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(out, (0..n as i64).rev().collect::<Vec<_>>());
        let reader = SerializedFileReader::new(File::open(&dst).unwrap()).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 6);
        assert!(matches!(
            reader.metadata().row_group(0).column(0).compression(),
            Compression::ZSTD(_)
        ));

        let err = write_parquet_rows(&source, &dst, &[1, 3000]).unwrap_err();
        assert!(
            err.to_string()
                .contains("big.parquet: row 3000 was selected but the file has 3000 rows"),
            "{err}"
        );
        write_parquet_rows(&source, &dst, &[]).unwrap();
        assert!(read_parquet_rows(&dst).unwrap().is_empty());
        assert_eq!(read_arrow(&dst).0, read_arrow(&source).0);
    }

    #[test]
    fn types_without_a_json_form_read_as_strings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("types.parquet");
        let mut map = MapBuilder::new(None, StringBuilder::new(), Int64Builder::new());
        map.keys().append_value("k");
        map.values().append_value(1);
        map.append(true).unwrap();
        map.append(true).unwrap();
        let dictionary: DictionaryArray<Int32Type> = vec!["en", "fr"].into_iter().collect();
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("f32", Arc::new(Float32Array::from(vec![0.1, f32::NAN]))),
            (
                "bytes",
                Arc::new(BinaryArray::from(vec![&b"text"[..], &b"\x89PNG"[..]])),
            ),
            (
                "price",
                Arc::new(
                    Decimal128Array::from(vec![12345, -5])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
            ),
            ("day", Arc::new(Date32Array::from(vec![19844, 0]))),
            (
                "at",
                Arc::new(
                    TimestampMillisecondArray::from(vec![1714566600250, 0]).with_timezone("UTC"),
                ),
            ),
            ("meta", Arc::new(map.finish())),
            ("lang", Arc::new(dictionary)),
        ];
        write_parquet(
            &path,
            &RecordBatch::try_from_iter(columns).unwrap(),
            snappy(),
        );
        assert_eq!(
            read_parquet_rows(&path).unwrap(),
            objects(vec![
                json!({"f32": 0.1, "bytes": "text", "price": "123.45", "day": "2024-05-01",
                       "at": "2024-05-01T12:30:00.250Z", "meta": {"k": 1}, "lang": "en"}),
                json!({"f32": null, "bytes": "iVBORw==", "price": "-0.05", "day": "1970-01-01",
                       "at": "1970-01-01T00:00:00Z", "meta": {}, "lang": "fr"}),
            ])
        );

        let durations = dir.path().join("durations.parquet");
        let columns: Vec<(&str, ArrayRef)> =
            vec![("elapsed", Arc::new(DurationSecondArray::from(vec![5])))];
        write_parquet(
            &durations,
            &RecordBatch::try_from_iter(columns).unwrap(),
            snappy(),
        );
        let message = read_parquet_rows(&durations).unwrap_err().to_string();
        assert!(
            message.contains("durations.parquet: column `elapsed`"),
            "{message}"
        );
        assert!(message.contains("no JSON form"), "{message}");
    }
}
