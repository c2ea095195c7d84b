//! `tidelog produce TOPIC`: stdin becomes records, sent through the SDK producer (batching,
//! compression, idempotent retries). Every delivery is awaited; the command fails if any
//! record was not stored.
//!
//! Input (kcat's habits): one record per line, optionally `key<SEP>value` (`-K SEP`), keys
//! and values as text, hex or base64 (`--key-encoding`, `--value-encoding`: base64 makes any
//! bytes safe in a line), or `--input length-prefixed` frames for raw binary. `-H k=v` adds
//! headers; `-Z` sends empty values as null (tombstones).
//!
//! Nothing is half-sent: the whole input is read and checked first, and a bad record (with its
//! line or record number) sends nothing. `--stream` sends each record as it is read instead
//! (for endless input such as `tail -f`); a bad record then stops there, after the earlier
//! ones were sent.

use std::time::Duration;

use tidelog::proto::v1::Acks;
use tidelog::{Compression, DeliveryFuture, Producer, ProducerConfig, Record};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

use super::BrokerArg;
use crate::render::Encoding;

/// Largest key or value a length-prefixed frame may declare (a batch is at most 64 MiB).
const MAX_FRAME_PART: u32 = 64 << 20;

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    pub topic: String,
    #[command(flatten)]
    pub broker: BrokerArg,
    /// Split each line at the first occurrence of this into key and value (a line without it
    /// is a value with a null key).
    #[arg(long, short = 'K')]
    pub key_separator: Option<String>,
    /// A header for every record, `key=value` (repeat for more).
    #[arg(long = "header", short = 'H', value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// How stdin holds records: `lines`, or `length-prefixed` binary frames (per record: key
    /// length as u32 big-endian, 0xFFFFFFFF = null, the key; the same for the value).
    #[arg(long, value_enum, default_value = "lines")]
    pub input: InputFormat,
    /// How keys are written in lines.
    #[arg(long, value_enum, default_value = "text")]
    pub key_encoding: Encoding,
    /// How values are written in lines.
    #[arg(long, value_enum, default_value = "text")]
    pub value_encoding: Encoding,
    /// Send empty values as null values (tombstones), as kcat's -Z.
    #[arg(long, short = 'Z')]
    pub null_empty: bool,
    /// Send each record as it is read, instead of reading and checking all input first.
    #[arg(long)]
    pub stream: bool,
    /// Send every record to this partition (default: by key, keyless records sticky).
    #[arg(long, short = 'p')]
    pub partition: Option<u32>,
    /// `all` (default, as the SDK's and Kafka's producers: idempotent), `leader` or `none`.
    #[arg(long, value_enum, default_value = "all")]
    pub acks: AcksArg,
    /// Default lz4, as the SDKs'.
    #[arg(long, value_enum, default_value = "lz4")]
    pub compression: CompressionArg,
    /// How long a batch waits for more lines.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Print where each record landed.
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    Lines,
    LengthPrefixed,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("header {s:?} is not key=value")),
    }
}

/// Reads records from stdin as the arguments say, numbering them for error messages.
struct Reader<R> {
    input: BufReader<R>,
    format: InputFormat,
    separator: Option<Vec<u8>>,
    keys: Encoding,
    values: Encoding,
    null_empty: bool,
    headers: Vec<(String, bytes::Bytes)>,
    /// Lines (or frames) read so far.
    count: u64,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    fn new(input: R, args: &ProduceArgs) -> Self {
        Self {
            input: BufReader::new(input),
            format: args.input,
            separator: args.key_separator.as_ref().map(|s| s.as_bytes().to_vec()),
            keys: args.key_encoding,
            values: args.value_encoding,
            null_empty: args.null_empty,
            headers: args.headers.iter().map(|(k, v)| (k.clone(), bytes::Bytes::from(v.clone()))).collect(),
            count: 0,
        }
    }

    /// The next record; `None` at the end of input. Errors name the line or record.
    async fn next(&mut self) -> anyhow::Result<Option<Record>> {
        let (key, value) = match self.format {
            InputFormat::Lines => {
                let mut line = Vec::new();
                if self.input.read_until(b'\n', &mut line).await? == 0 {
                    return Ok(None);
                }
                self.count += 1;
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                let n = self.count;
                let (key, value) = match &self.separator {
                    Some(sep) => match find(&line, sep) {
                        Some(at) => (Some(line[..at].to_vec()), line[at + sep.len()..].to_vec()),
                        None => (None, line),
                    },
                    None => (None, line),
                };
                let key = match key {
                    Some(k) => Some(self.keys.decode(&k).map_err(|e| anyhow::anyhow!("line {n}: key is {e}"))?),
                    None => None,
                };
                let value = self.values.decode(&value).map_err(|e| anyhow::anyhow!("line {n}: value is {e}"))?;
                (key, Some(value))
            }
            InputFormat::LengthPrefixed => {
                let Some(key) = self.frame_part(true).await? else { return Ok(None) };
                self.count += 1;
                let value = self.frame_part(false).await?.ok_or_else(|| {
                    anyhow::anyhow!("record {}: the input ends after its key (no value length)", self.count)
                })?;
                (key, value)
            }
        };
        let value = value.filter(|v| !(self.null_empty && v.is_empty()));
        let mut record =
            Record { key: key.map(bytes::Bytes::from), value: value.map(bytes::Bytes::from), ..Record::default() };
        record.headers.clone_from(&self.headers);
        Ok(Some(record))
    }

    /// One length-prefixed part: `Some(None)` for a null, `None` at a clean end of input
    /// (only before a record's key).
    async fn frame_part(&mut self, first: bool) -> anyhow::Result<Option<Option<Vec<u8>>>> {
        let n = self.count + u64::from(first); // counted once its key is read
        if first && self.input.fill_buf().await?.is_empty() {
            return Ok(None); // a clean end: between records
        }
        let mut len = [0u8; 4];
        match self.input.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(truncated(n)),
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_be_bytes(len);
        if len == u32::MAX {
            return Ok(Some(None));
        }
        if len > MAX_FRAME_PART {
            anyhow::bail!("record {n}: a length of {len} bytes is more than a record can hold ({MAX_FRAME_PART}); is the input length-prefixed?");
        }
        let mut bytes = vec![0u8; len as usize];
        self.input.read_exact(&mut bytes).await.map_err(|_| truncated(n))?;
        Ok(Some(Some(bytes)))
    }
}

fn truncated(record: u64) -> anyhow::Error {
    anyhow::anyhow!("record {record}: the input ends inside it (a truncated length-prefixed frame)")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AcksArg {
    None,
    Leader,
    All,
}

impl From<AcksArg> for Acks {
    fn from(a: AcksArg) -> Self {
        match a {
            AcksArg::None => Acks::None,
            AcksArg::Leader => Acks::Leader,
            AcksArg::All => Acks::All,
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompressionArg {
    None,
    Lz4,
    Zstd,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Self {
        match c {
            CompressionArg::None => Compression::None,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        }
    }
}

pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let mut reader = Reader::new(tokio::io::stdin(), &args);
    // All or nothing: read and check everything before sending anything.
    let mut checked = Vec::new();
    if !args.stream {
        while let Some(r) = reader.next().await? {
            checked.push(r);
        }
    }
    let client = args.broker.connect().await?;
    let config = ProducerConfig {
        linger: Duration::from_millis(args.linger_ms),
        acks: args.acks.into(),
        // Idempotence needs acks=all; with weaker acks the user chose speed over exactly-once.
        idempotence: args.acks == AcksArg::All,
        compression: args.compression.into(),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).await?;
    // Deliveries are awaited in order by a separate task, so reading stdin never waits on acks.
    let (deliveries, mut pending) = mpsc::channel::<DeliveryFuture>(100_000);
    let verbose = args.verbose;
    let results = tokio::spawn(async move {
        let (mut ok, mut first_error) = (0u64, None);
        while let Some(d) = pending.recv().await {
            match d.await {
                Ok(m) => {
                    ok += 1;
                    if verbose {
                        eprintln!("partition={} offset={}", m.partition, m.offset);
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        (ok, first_error)
    });
    let mut checked = checked.into_iter();
    let mut bad_input = None;
    loop {
        let record = if args.stream {
            match reader.next().await {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    bad_input = Some(e);
                    break;
                }
            }
        } else {
            let Some(r) = checked.next() else { break };
            r
        };
        let delivery = match args.partition {
            Some(p) => producer.send_to(&args.topic, p, record).await?,
            None => producer.send(&args.topic, record).await?,
        };
        if deliveries.send(delivery).await.is_err() {
            break;
        }
    }
    producer.close().await;
    drop(deliveries);
    let (ok, first_error) = results.await?;
    eprintln!("produced {ok} records to {}", args.topic);
    if let Some(e) = bad_input {
        return Err(e.context(format!("stopped reading; the {ok} records before it were sent")));
    }
    match first_error {
        Some(e) => anyhow::bail!("some records were not stored; first error: {e}"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: ProduceArgs,
    }

    async fn read(flags: &[&str], input: &[u8]) -> anyhow::Result<Vec<Record>> {
        let cmd = Cmd::try_parse_from([&["produce", "t"], flags].concat()).unwrap();
        let mut r = Reader::new(input, &cmd.args);
        let mut out = Vec::new();
        while let Some(rec) = r.next().await? {
            out.push(rec);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn lines_keys_encodings_headers_and_nulls() {
        let got = read(&["-K", "::", "-H", "h=1", "--value-encoding", "base64"], b"k::AP8=\n").await.unwrap();
        assert_eq!(got[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(got[0].value.as_deref(), Some(&b"\x00\xff"[..]));
        assert_eq!(got[0].headers, [("h".to_string(), bytes::Bytes::from_static(b"1"))]);
        // Not base64: named by its line.
        assert!(read(&["--value-encoding", "base64"], b"AAAA\n!!\n")
            .await
            .unwrap_err()
            .to_string()
            .starts_with("line 2:"));
        let got = read(&["-K", "::", "-Z"], b"nokey\nk2::\n").await.unwrap();
        assert_eq!((got[0].key.as_deref(), got[0].value.as_deref()), (None, Some(&b"nokey"[..])));
        assert_eq!((got[1].key.as_deref(), got[1].value.as_deref()), (Some(&b"k2"[..]), None), "-Z: a tombstone");
        let kept = read(&["-K", "::"], b"k2::\n").await.unwrap();
        assert_eq!(kept[0].value.as_deref(), Some(&b""[..]), "without -Z an empty value stays empty");
    }

    #[tokio::test]
    async fn length_prefixed_frames_carry_any_bytes_and_nulls() {
        let mut input = Vec::new();
        for (k, v) in [(Some(&b"k\n1"[..]), Some(&b"\x00\n"[..])), (None, None)] {
            for part in [k, v] {
                match part {
                    Some(b) => {
                        input.extend_from_slice(&(b.len() as u32).to_be_bytes());
                        input.extend_from_slice(b);
                    }
                    None => input.extend_from_slice(&u32::MAX.to_be_bytes()),
                }
            }
        }
        let got = read(&["--input", "length-prefixed"], &input).await.unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].key.as_deref(), got[0].value.as_deref()), (Some(&b"k\n1"[..]), Some(&b"\x00\n"[..])));
        assert_eq!((got[1].key.as_deref(), got[1].value.as_deref()), (None, None));
        input.extend_from_slice(&[0, 0, 0, 9, b'x']);
        let e = read(&["--input", "length-prefixed"], &input).await.unwrap_err().to_string();
        assert!(e.starts_with("record 3:"), "{e}");
    }
}
