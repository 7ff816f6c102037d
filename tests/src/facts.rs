//! Report lines: the facts the hypervisor states on its serial console.
//!
//! Any serial line that starts with `@ ` is a *fact*:
//!
//! ```text
//! @ <kind> word key=value key="quoted value" ...
//! ```
//!
//! `kind` is the first token. The rest are fields, kept in the order they
//! were written: `key=value`, `key="value"` (a quoted value may contain
//! spaces, `\"` and `\\`), or a bare `word` (a field with no value, as in
//! `@ heap ok bytes=4096` or `@ bootpack none`). Numbers are decimal or
//! `0x` hexadecimal. Every other serial line is free text for humans.
//!
//! This is the contract between the hypervisor and its tests: tests assert on
//! facts, never on the wording of free text.

use std::fmt;

/// The marker that starts a report line.
pub const PREFIX: &str = "@ ";

/// One field of a fact: `key=value` or a bare `word` (value `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The key (or the bare word).
    pub key: String,
    /// The value, unquoted and unescaped; `None` for a bare word.
    pub value: Option<String>,
}

/// One parsed report line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fact {
    /// What the line is about: `boot`, `memmap`, `exit`, ...
    pub kind: String,
    /// The fields, in the order they were written.
    pub fields: Vec<Field>,
}

impl Fact {
    /// The value of `key`, if the fact has `key=value`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.key == key)
            .and_then(|f| f.value.as_deref())
    }

    /// Whether the fact carries the bare word `word` (e.g. `ok`, `none`).
    pub fn has_word(&self, word: &str) -> bool {
        self.fields
            .iter()
            .any(|f| f.key == word && f.value.is_none())
    }

    /// The value of `key` as a number (decimal, or hexadecimal with `0x`).
    pub fn number(&self, key: &str) -> Result<u64, String> {
        let raw = self
            .get(key)
            .ok_or_else(|| format!("`@ {}` has no `{key}=`: {self}", self.kind))?;
        parse_number(raw).ok_or_else(|| {
            format!(
                "`@ {}` field `{key}={raw}` is not a number (decimal or 0x-hex)",
                self.kind
            )
        })
    }
}

impl fmt::Display for Fact {
    /// Writes the fact back as a report line (without a newline).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.kind)?;
        for field in &self.fields {
            match &field.value {
                None => write!(f, " {}", field.key)?,
                Some(v) if needs_quotes(v) => {
                    write!(f, " {}=\"", field.key)?;
                    for c in v.chars() {
                        if c == '"' || c == '\\' {
                            write!(f, "\\")?;
                        }
                        write!(f, "{c}")?;
                    }
                    write!(f, "\"")?;
                }
                Some(v) => write!(f, " {}={v}", field.key)?,
            }
        }
        Ok(())
    }
}

fn needs_quotes(v: &str) -> bool {
    v.is_empty()
        || v.chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\\')
}

/// Parses a decimal or `0x`-hexadecimal number.
pub fn parse_number(raw: &str) -> Option<u64> {
    match raw.strip_prefix("0x").or_else(|| raw.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => raw.parse().ok(),
    }
}

/// Why a line that starts with `@ ` is not a well-formed fact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FactError {
    /// `@ ` with nothing after it.
    MissingKind,
    /// The kind is not `[a-z0-9_-]+`.
    BadKind(String),
    /// A key is empty or not `[A-Za-z0-9_.-]+`.
    BadKey(String),
    /// A quoted value never ends.
    UnterminatedQuote(String),
    /// Something other than a space follows a closing quote.
    JunkAfterQuote(String),
}

impl fmt::Display for FactError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FactError::MissingKind => write!(f, "report line has no kind after `@ `"),
            FactError::BadKind(k) => write!(f, "report kind `{k}` is not [a-z0-9_-]+"),
            FactError::BadKey(k) => write!(f, "report key `{k}` is not [A-Za-z0-9_.-]+"),
            FactError::UnterminatedQuote(k) => write!(f, "quoted value of `{k}` never ends"),
            FactError::JunkAfterQuote(k) => {
                write!(
                    f,
                    "quoted value of `{k}` is followed by something other than a space"
                )
            }
        }
    }
}

fn is_key(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// Parses one serial line. `Ok(None)`: not a report line (free text).
/// A trailing `\r` (serial consoles send CRLF) is ignored.
pub fn parse_line(line: &str) -> Result<Option<Fact>, FactError> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let Some(rest) = line.strip_prefix(PREFIX) else {
        return Ok(None);
    };
    let rest = rest.trim_start_matches(' ');
    let (kind, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
    if kind.is_empty() {
        return Err(FactError::MissingKind);
    }
    if !kind
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return Err(FactError::BadKind(kind.to_string()));
    }
    let mut fields = Vec::new();
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            break;
        }
        // A token runs to the next space, or to `=` if one comes first.
        let token_end = rest.find([' ', '=']).unwrap_or(rest.len());
        let key = &rest[..token_end];
        if !is_key(key) {
            return Err(FactError::BadKey(key.to_string()));
        }
        rest = &rest[token_end..];
        let Some(after_eq) = rest.strip_prefix('=') else {
            fields.push(Field {
                key: key.to_string(),
                value: None,
            });
            continue;
        };
        let value;
        if let Some(quoted) = after_eq.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, e)) => v.push(e),
                        None => break,
                    },
                    c => v.push(c),
                }
            }
            let end = end.ok_or_else(|| FactError::UnterminatedQuote(key.to_string()))?;
            rest = &quoted[end..];
            if !rest.is_empty() && !rest.starts_with(' ') {
                return Err(FactError::JunkAfterQuote(key.to_string()));
            }
            value = v;
        } else {
            let end = after_eq.find(' ').unwrap_or(after_eq.len());
            value = after_eq[..end].to_string();
            rest = &after_eq[end..];
        }
        fields.push(Field {
            key: key.to_string(),
            value: Some(value),
        });
    }
    Ok(Some(Fact {
        kind: kind.to_string(),
        fields,
    }))
}

/// A malformed report line in a transcript.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number in the transcript.
    pub line: usize,
    /// The line as it was received.
    pub text: String,
    /// What is wrong with it.
    pub error: FactError,
}

/// Every fact in a serial transcript, plus the `@ ` lines that did not parse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// Well-formed facts, in order.
    pub facts: Vec<Fact>,
    /// Lines that start with `@ ` but are malformed: a hypervisor bug.
    pub bad: Vec<BadLine>,
    /// Facts reported by guests: console lines `[NAME] @ kind ...`, which
    /// the hypervisor prefixes with the domain's name (ABI clause CON-1d),
    /// so a guest can never forge a hypervisor fact. In order, with NAME.
    pub guest: Vec<(String, Fact)>,
    /// Guest lines that look like facts but do not parse.
    pub guest_bad: Vec<BadLine>,
}

/// Splits a guest console line `[NAME] rest` into `(NAME, rest)`.
pub fn guest_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('[')?;
    let (name, rest) = rest.split_once("] ")?;
    if name.is_empty() || name.contains(' ') {
        return None;
    }
    Some((name, rest))
}

impl Facts {
    /// Parses every line of `transcript`.
    pub fn parse(transcript: &str) -> Facts {
        let mut out = Facts::default();
        for (i, line) in transcript.lines().enumerate() {
            if let Some((name, rest)) = guest_line(line) {
                match parse_line(rest) {
                    Ok(Some(f)) => out.guest.push((name.to_string(), f)),
                    Ok(None) => {}
                    Err(error) => out.guest_bad.push(BadLine {
                        line: i + 1,
                        text: line.to_string(),
                        error,
                    }),
                }
                continue;
            }
            match parse_line(line) {
                Ok(Some(f)) => out.facts.push(f),
                Ok(None) => {}
                Err(error) => out.bad.push(BadLine {
                    line: i + 1,
                    text: line.to_string(),
                    error,
                }),
            }
        }
        out
    }

    /// Every fact of kind `kind`, in order.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Fact> + 'a {
        self.facts.iter().filter(move |f| f.kind == kind)
    }

    /// Every guest fact of kind `kind`, with the reporting domain's name.
    pub fn guest_of_kind<'a>(
        &'a self,
        kind: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Fact)> + 'a {
        self.guest
            .iter()
            .filter(move |(_, f)| f.kind == kind)
            .map(|(n, f)| (n.as_str(), f))
    }

    /// The single fact of kind `kind` reported by guest `name`.
    pub fn guest_one<'a>(&'a self, name: &str, kind: &'a str) -> Result<&'a Fact, String> {
        let mut it = self.guest_of_kind(kind).filter(|(n, _)| *n == name);
        match (it.next(), it.next()) {
            (Some((_, f)), None) => Ok(f),
            (None, _) => Err(format!("guest `{name}` reported no `@ {kind}` line")),
            (Some(_), Some(_)) => Err(format!("guest `{name}` reported several `@ {kind}` lines")),
        }
    }

    /// The single fact of kind `kind`: an error if there is none or several.
    pub fn one(&self, kind: &str) -> Result<&Fact, String> {
        let mut it = self.facts.iter().filter(|f| f.kind == kind);
        match (it.next(), it.next()) {
            (Some(f), None) => Ok(f),
            (None, _) => Err(format!("no `@ {kind}` report line")),
            (Some(a), Some(b)) => Err(format!(
                "expected one `@ {kind}` report line, got several:\n  {a}\n  {b}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(line: &str) -> Fact {
        parse_line(line).expect("parses").expect("is a fact")
    }

    #[test]
    fn guest_facts_are_kept_apart() {
        let f = Facts::parse(
            "@ exit status=success\n[ping] @ exit status=failure\n[ping] @ pingpong rounds=3\n[a b] @ x\n",
        );
        assert_eq!(
            f.of_kind("exit").count(),
            1,
            "the guest's @ exit is not the hypervisor's"
        );
        assert_eq!(f.guest_of_kind("exit").count(), 1);
        assert_eq!(
            f.guest_one("ping", "pingpong").unwrap().number("rounds"),
            Ok(3)
        );
        assert!(f.guest_one("pong", "pingpong").is_err());
        assert_eq!(f.facts.len(), 1, "`[a b] @ x` is free text, not a fact");
    }

    #[test]
    fn free_text_is_not_a_fact() {
        assert_eq!(parse_line("Tahoma booting"), Ok(None));
        assert_eq!(parse_line("@boot no space"), Ok(None));
        assert_eq!(parse_line(" @ boot indented"), Ok(None));
        assert_eq!(parse_line(""), Ok(None));
    }

    #[test]
    fn kind_and_ordered_fields() {
        let f =
            fact("@ memmap regions=7 ram_bytes=536870912 usable_frames=130000 free_frames=129000");
        assert_eq!(f.kind, "memmap");
        let keys: Vec<_> = f.fields.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(
            keys,
            ["regions", "ram_bytes", "usable_frames", "free_frames"]
        );
        assert_eq!(f.number("ram_bytes"), Ok(536_870_912));
        assert_eq!(f.get("regions"), Some("7"));
        assert_eq!(f.get("absent"), None);
    }

    #[test]
    fn quoted_values_keep_spaces_and_escapes() {
        let f = fact(r#"@ panic message="selftest: \"boom\" \\ here" location="src/main.rs:42""#);
        assert_eq!(f.get("message"), Some(r#"selftest: "boom" \ here"#));
        assert_eq!(f.get("location"), Some("src/main.rs:42"));
        let f = fact(r#"@ boot abi=1 cmdline="""#);
        assert_eq!(f.get("cmdline"), Some(""));
    }

    #[test]
    fn bare_words_are_fields_without_value() {
        let f = fact("@ heap ok bytes=1048576");
        assert!(f.has_word("ok"));
        assert_eq!(f.get("ok"), None);
        assert_eq!(f.number("bytes"), Ok(1_048_576));
        let f = fact("@ bootpack none");
        assert!(f.has_word("none"));
        assert_eq!(f.fields.len(), 1);
    }

    #[test]
    fn hex_numbers() {
        let f = fact("@ exception vector=14 name=page-fault error=0x2 rip=0xffffffff80001234 cr2=0xdeadb000 rsp=0x1000");
        assert_eq!(f.number("vector"), Ok(14));
        assert_eq!(f.number("cr2"), Ok(0xdead_b000));
        assert_eq!(f.number("rip"), Ok(0xffff_ffff_8000_1234));
        assert!(f.number("name").is_err());
        assert!(f
            .number("nothere")
            .unwrap_err()
            .contains("has no `nothere=`"));
    }

    #[test]
    fn crlf_and_extra_spaces_are_tolerated() {
        let f = fact("@ exit  status=success\r");
        assert_eq!(f.get("status"), Some("success"));
        assert_eq!(f.fields.len(), 1);
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert_eq!(parse_line("@ "), Err(FactError::MissingKind));
        assert_eq!(
            parse_line("@ Boot x=1"),
            Err(FactError::BadKind("Boot".into()))
        );
        assert_eq!(
            parse_line(r#"@ panic message="never ends"#),
            Err(FactError::UnterminatedQuote("message".into()))
        );
        assert_eq!(
            parse_line(r#"@ panic message="a"b"#),
            Err(FactError::JunkAfterQuote("message".into()))
        );
        assert_eq!(parse_line("@ x =1"), Err(FactError::BadKey("".into())));
    }

    #[test]
    fn display_round_trips() {
        for line in [
            "@ boot abi=1 cmdline=\"selftest=panic x\"",
            "@ heap ok bytes=4096",
            "@ bootpack error=\"declared 4096 but got \\\"4095\\\"\"",
            "@ conformance clause=EVT-3 name=\"send wakes\" outcome=pass detail=\"\"",
        ] {
            assert_eq!(fact(line).to_string(), line);
        }
    }

    #[test]
    fn transcript_collects_facts_and_bad_lines() {
        let t =
            "Tahoma\n@ boot abi=1 cmdline=\"\"\nnoise\n@ exit status=\"x\n@ exit status=success\n";
        let facts = Facts::parse(t);
        assert_eq!(facts.facts.len(), 2);
        assert_eq!(facts.bad.len(), 1);
        assert_eq!(facts.bad[0].line, 4);
        assert_eq!(facts.one("exit").unwrap().get("status"), Some("success"));
        assert!(facts.one("memmap").unwrap_err().contains("no `@ memmap`"));
        let twice = Facts::parse("@ exit status=success\n@ exit status=failure\n");
        assert!(twice.one("exit").unwrap_err().contains("several"));
    }
}
