//! How `tidelog consume` prints a record and how `tidelog produce` reads one, byte-exactly:
//! keys and values as text, hex, base64 or raw bytes, and kcat's format strings
//! (`-f '%k %v\n'`).
//!
//! Format string tokens (as kcat's): `%t` topic, `%p` partition, `%o` offset, `%k` key, `%v`
//! value, `%T` timestamp (ms), `%h` headers (`k=v,k2=v2`, values in the value encoding),
//! `%K` key length and `%S` value length (-1 when null), `%%` a percent sign; escapes `\n`,
//! `\t`, `\r`, `\\`. Nothing is added: end the format with `\n` for one record per line. A null
//! key or value prints as nothing (its length as -1).

use base64::Engine;
use tidelog::ConsumedRecord;

/// How bytes are shown (consume) or read (produce).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    /// UTF-8 text; invalid sequences print as U+FFFD.
    Text,
    /// Lowercase hex.
    Hex,
    /// Standard base64 (with padding).
    Base64,
    /// The bytes as they are.
    Raw,
}

impl Encoding {
    pub fn encode(self, bytes: &[u8], out: &mut Vec<u8>) {
        match self {
            Self::Text => out.extend_from_slice(String::from_utf8_lossy(bytes).as_bytes()),
            Self::Raw => out.extend_from_slice(bytes),
            Self::Hex => {
                for b in bytes {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
            }
            Self::Base64 => out.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(bytes).as_bytes()),
        }
    }

    pub fn encode_string(self, bytes: &[u8]) -> String {
        let mut out = Vec::new();
        self.encode(bytes, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Reads `s` in this encoding (produce); text and raw are taken as they are.
    pub fn decode(self, s: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Self::Text | Self::Raw => Ok(s.to_vec()),
            Self::Base64 => base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| format!("not base64: {e}")),
            Self::Hex => {
                if !s.len().is_multiple_of(2) {
                    return Err("not hex: odd number of digits".into());
                }
                s.chunks(2)
                    .map(|pair| {
                        std::str::from_utf8(pair)
                            .ok()
                            .and_then(|p| u8::from_str_radix(p, 16).ok())
                            .ok_or_else(|| format!("not hex: {:?}", String::from_utf8_lossy(pair)))
                    })
                    .collect()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    Timestamp,
    Headers,
    KeyLen,
    ValueLen,
}

/// A parsed format string.
#[derive(Debug, Clone)]
pub struct Template {
    tokens: Vec<Token>,
}

impl Template {
    pub fn parse(format: &str) -> Result<Self, String> {
        let mut tokens = Vec::new();
        let mut lit = Vec::new();
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            match c {
                '%' => {
                    let token = match chars.next() {
                        Some('%') => {
                            lit.push(b'%');
                            continue;
                        }
                        Some('t') => Token::Topic,
                        Some('p') => Token::Partition,
                        Some('o') => Token::Offset,
                        Some('k') => Token::Key,
                        Some('v') => Token::Value,
                        Some('T') => Token::Timestamp,
                        Some('h') => Token::Headers,
                        Some('K') => Token::KeyLen,
                        Some('S') => Token::ValueLen,
                        Some(other) => {
                            return Err(format!("unknown format token %{other} (use %t %p %o %k %v %T %h %K %S or %%)"))
                        }
                        None => return Err("the format ends in a lone %".into()),
                    };
                    if !lit.is_empty() {
                        tokens.push(Token::Literal(std::mem::take(&mut lit)));
                    }
                    tokens.push(token);
                }
                '\\' => match chars.next() {
                    Some('n') => lit.push(b'\n'),
                    Some('t') => lit.push(b'\t'),
                    Some('r') => lit.push(b'\r'),
                    Some('\\') => lit.push(b'\\'),
                    Some(other) => {
                        lit.push(b'\\');
                        let mut buf = [0u8; 4];
                        lit.extend_from_slice(other.encode_utf8(&mut buf).as_bytes());
                    }
                    None => lit.push(b'\\'),
                },
                c => {
                    let mut buf = [0u8; 4];
                    lit.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        if !lit.is_empty() {
            tokens.push(Token::Literal(lit));
        }
        Ok(Self { tokens })
    }

    /// Appends `r` as this template says to `out`.
    pub fn render(&self, r: &ConsumedRecord, key_enc: Encoding, value_enc: Encoding, out: &mut Vec<u8>) {
        let len = |b: &Option<bytes::Bytes>| b.as_ref().map_or(-1, |b| b.len() as i64);
        for t in &self.tokens {
            match t {
                Token::Literal(l) => out.extend_from_slice(l),
                Token::Topic => out.extend_from_slice(r.topic.as_bytes()),
                Token::Partition => out.extend_from_slice(r.partition.to_string().as_bytes()),
                Token::Offset => out.extend_from_slice(r.offset.to_string().as_bytes()),
                Token::Timestamp => out.extend_from_slice(r.timestamp_ms.to_string().as_bytes()),
                Token::Key => key_enc.encode(r.key.as_deref().unwrap_or_default(), out),
                Token::Value => value_enc.encode(r.value.as_deref().unwrap_or_default(), out),
                Token::KeyLen => out.extend_from_slice(len(&r.key).to_string().as_bytes()),
                Token::ValueLen => out.extend_from_slice(len(&r.value).to_string().as_bytes()),
                Token::Headers => {
                    for (i, (k, v)) in r.headers.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(k.as_bytes());
                        out.push(b'=');
                        value_enc.encode(v, out);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ConsumedRecord {
        ConsumedRecord {
            topic: "t".into(),
            partition: 2,
            offset: 41,
            timestamp_ms: 1700,
            append_time_ms: 1700,
            key: Some(bytes::Bytes::from_static(b"k\xff")),
            value: None,
            headers: vec![("a".into(), bytes::Bytes::from_static(b"1")), ("b".into(), bytes::Bytes::new())],
        }
    }

    #[test]
    fn tokens_escapes_and_encodings() {
        let t = Template::parse("%t/%p@%o %T [%k] [%v] %K %S {%h} 100%%\\n").unwrap();
        let mut out = Vec::new();
        t.render(&record(), Encoding::Hex, Encoding::Text, &mut out);
        assert_eq!(out, b"t/2@41 1700 [6bff] [] 2 -1 {a=1,b=} 100%\n");
        let mut raw = Vec::new();
        Template::parse("%k").unwrap().render(&record(), Encoding::Raw, Encoding::Raw, &mut raw);
        assert_eq!(raw, b"k\xff", "raw is byte-exact");
        assert_eq!(Encoding::Base64.encode_string(b"k\xff"), "a/8=");
        assert!(Template::parse("%x").unwrap_err().contains("%x"));
        assert!(Template::parse("50%").is_err());
    }

    #[test]
    fn decoding_round_trips_and_says_what_is_wrong() {
        for enc in [Encoding::Hex, Encoding::Base64] {
            let bytes = b"\x00\x01binary\xff";
            assert_eq!(enc.decode(enc.encode_string(bytes).as_bytes()).unwrap(), bytes, "{enc:?}");
        }
        assert!(Encoding::Hex.decode(b"abc").unwrap_err().contains("odd"));
        assert!(Encoding::Hex.decode(b"zz").unwrap_err().contains("not hex"));
        assert!(Encoding::Base64.decode(b"!!!").unwrap_err().contains("not base64"));
    }
}
