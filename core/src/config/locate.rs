//! Finds where settings are in a `vm.ron` text, so errors can name line, column and field.
//!
//! ron reports a position but not which setting it is in, and checks made after parsing
//! (a missing disk file, too much memory) have no position at all. This module scans the
//! text once, tracking nesting, and labels every token with the dotted path of the
//! setting it belongs to (`memory`, `boot.kernel`, `disks[1].path`,
//! `network.forwards[0].host`). Enum variant names and `Some(..)` do not add to the path.

/// A line and column, both counted from 1; the column counts characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineCol {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

/// One token of the text and the setting it belongs to.
#[derive(Debug, Clone)]
struct Token {
    start: usize,
    /// Where the token ends (exclusive).
    end: usize,
    path: String,
    /// Whether this token is a field name (`memory` in `memory: "4G"`).
    is_key: bool,
}

/// The scanned text: tokens labelled with their setting paths.
#[derive(Debug)]
pub struct FieldMap<'a> {
    text: &'a str,
    tokens: Vec<Token>,
}

#[derive(Debug)]
enum FrameKind {
    /// `( .. )`: a struct, a tuple, a variant's fields or `Some(..)`.
    Paren,
    /// `[ .. ]`.
    List,
    /// `{ .. }`.
    Map,
}

#[derive(Debug)]
struct Frame {
    kind: FrameKind,
    path: String,
    /// The field whose value is being read, in a `Paren` frame.
    key: Option<String>,
    /// The element being read, in a `List` frame.
    index: usize,
}

impl Frame {
    fn value_path(&self) -> String {
        match self.kind {
            FrameKind::Paren => match &self.key {
                Some(key) => join(&self.path, key),
                None => self.path.clone(),
            },
            FrameKind::List => format!("{}[{}]", self.path, self.index),
            FrameKind::Map => self.path.clone(),
        }
    }
}

/// `parent.child`, or `child` at the top.
pub fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_owned()
    } else {
        format!("{parent}.{child}")
    }
}

impl<'a> FieldMap<'a> {
    /// Scans `text`. Never fails: text that is not valid RON still gets best-effort labels.
    pub fn new(text: &'a str) -> FieldMap<'a> {
        let mut scanner = Scanner {
            bytes: text.as_bytes(),
            pos: 0,
        };
        let mut stack: Vec<Frame> = Vec::new();
        let mut tokens = Vec::new();
        let current_path =
            |stack: &[Frame]| stack.last().map(Frame::value_path).unwrap_or_default();
        while let Some(start) = scanner.next_token_start() {
            // Each arm pushes at most one token starting here; its end is fixed below.
            let pushed_before = tokens.len();
            let byte = scanner.bytes[start];
            match byte {
                b'#' => {
                    scanner.skip_attribute();
                    continue;
                }
                b'(' | b'[' | b'{' => {
                    let path = current_path(&stack);
                    tokens.push(Token {
                        start,
                        end: start,
                        path: path.clone(),
                        is_key: false,
                    });
                    let kind = match byte {
                        b'(' => FrameKind::Paren,
                        b'[' => FrameKind::List,
                        _ => FrameKind::Map,
                    };
                    stack.push(Frame {
                        kind,
                        path,
                        key: None,
                        index: 0,
                    });
                    scanner.pos = start + 1;
                }
                b')' | b']' | b'}' => {
                    let path = stack.last().map(|f| f.path.clone()).unwrap_or_default();
                    tokens.push(Token {
                        start,
                        end: start,
                        path,
                        is_key: false,
                    });
                    stack.pop();
                    scanner.pos = start + 1;
                }
                b',' => {
                    if let Some(frame) = stack.last_mut() {
                        tokens.push(Token {
                            start,
                            end: start,
                            path: frame.path.clone(),
                            is_key: false,
                        });
                        frame.key = None;
                        frame.index += 1;
                    }
                    scanner.pos = start + 1;
                }
                b'"' | b'\'' | b'r' if byte != b'r' || scanner.raw_string_ahead(start) => {
                    tokens.push(Token {
                        start,
                        end: start,
                        path: current_path(&stack),
                        is_key: false,
                    });
                    if byte == b'r' {
                        scanner.skip_raw_string(start);
                    } else {
                        scanner.skip_quoted(start);
                    }
                }
                _ if is_word_byte(byte) => {
                    let end = scanner.word_end(start);
                    let word = &text[start..end];
                    scanner.pos = end;
                    let is_key = matches!(
                        stack.last(),
                        Some(Frame {
                            kind: FrameKind::Paren,
                            ..
                        })
                    ) && scanner.colon_follows()
                        && !word.starts_with(|c: char| c.is_ascii_digit());
                    if let Some(frame) = stack.last_mut().filter(|_| is_key) {
                        frame.key = Some(word.trim_start_matches("r#").to_owned());
                    }
                    tokens.push(Token {
                        start,
                        end: start,
                        path: current_path(&stack),
                        is_key,
                    });
                }
                _ => {
                    // `:` and anything unexpected belong to the value being read.
                    tokens.push(Token {
                        start,
                        end: start,
                        path: current_path(&stack),
                        is_key: false,
                    });
                    scanner.pos = start + 1;
                }
            }
            let pushed = tokens.len() > pushed_before;
            if let Some(token) = tokens.last_mut().filter(|_| pushed) {
                token.end = scanner.pos.min(text.len());
            }
        }
        FieldMap { text, tokens }
    }

    /// The setting the byte at `offset` belongs to (`""` for the file as a whole).
    pub fn path_at(&self, offset: usize) -> &str {
        let index = self.tokens.partition_point(|t| t.start <= offset);
        index
            .checked_sub(1)
            .and_then(|i| self.tokens.get(i))
            .map_or("", |t| t.path.as_str())
    }

    /// The setting of the last token that starts before `offset`: for a syntax error at
    /// `offset`, the setting the parser had just read.
    pub fn path_before(&self, offset: usize) -> &str {
        let index = self.tokens.partition_point(|t| t.start < offset);
        index
            .checked_sub(1)
            .and_then(|i| self.tokens.get(i))
            .map_or("", |t| t.path.as_str())
    }

    /// Where the value of setting `path` starts, if the text sets it.
    pub fn value_position(&self, path: &str) -> Option<LineCol> {
        let key = self.tokens.iter().position(|t| t.is_key && t.path == path);
        let value = match key {
            // The value is the first token after the key's colon.
            Some(k) => self.tokens.get(k + 2).map(|t| t.start),
            // A list element has no key: its first token is the value.
            None => self.tokens.iter().find(|t| t.path == path).map(|t| t.start),
        };
        value.map(|offset| self.line_col(offset))
    }

    /// The byte range of the value of setting `path` when that value is a single token
    /// (a string, number or name), for replacing it in place.
    pub fn scalar_value_range(&self, path: &str) -> Option<std::ops::Range<usize>> {
        let key = self
            .tokens
            .iter()
            .position(|t| t.is_key && t.path == path)?;
        let value = self.tokens.get(key + 2)?;
        let after = self.tokens.get(key + 3);
        let single = after.is_none_or(|t| !matches!(self.text.as_bytes().get(t.start), Some(b'(')));
        single.then_some(value.start..value.end)
    }

    /// The byte range of the value of setting `path` when that value is a list
    /// (`[` to its `]`, both included), for replacing the whole list in place.
    pub fn list_value_range(&self, path: &str) -> Option<std::ops::Range<usize>> {
        let key = self
            .tokens
            .iter()
            .position(|t| t.is_key && t.path == path)?;
        let open = self.tokens.get(key + 2)?;
        if self.text.as_bytes().get(open.start) != Some(&b'[') {
            return None;
        }
        let mut depth = 0usize;
        for token in self.tokens.get(key + 2..)? {
            match self.text.as_bytes().get(token.start) {
                Some(b'(' | b'[' | b'{') => depth += 1,
                Some(b')' | b']' | b'}') => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return Some(open.start..token.start + 1);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Where the field name of setting `path` is, if the text sets it.
    pub fn key_position(&self, path: &str) -> Option<LineCol> {
        self.tokens
            .iter()
            .find(|t| t.is_key && t.path == path)
            .map(|t| self.line_col(t.start))
    }

    /// Line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> LineCol {
        line_col(self.text, offset)
    }
}

/// Line and column (in characters, both from 1) of a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> LineCol {
    let before = text.get(..offset).unwrap_or(text);
    let line = 1 + before.matches('\n').count();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = 1 + before[line_start..].chars().count();
    LineCol { line, column }
}

/// The byte offset of a line and column (in characters) in `text`, clamped to its end.
pub fn offset_of(text: &str, at: LineCol) -> usize {
    let mut line_start = 0;
    for _ in 1..at.line {
        match text[line_start..].find('\n') {
            Some(i) => line_start += i + 1,
            None => return text.len(),
        }
    }
    text[line_start..]
        .char_indices()
        .nth(at.column.saturating_sub(1))
        .map_or(text.len(), |(i, _)| line_start + i)
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || b == b'_'
        || b == b'#'
        || b == b'.'
        || b == b'+'
        || b == b'-'
        || b >= 0x80
}

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    /// The bytes from the cursor on (empty past the end).
    fn rest(&self) -> &[u8] {
        self.bytes.get(self.pos..).unwrap_or(&[])
    }

    /// Skips blanks and comments; returns where the next token starts.
    fn next_token_start(&mut self) -> Option<usize> {
        self.skip_trivia();
        (self.pos < self.bytes.len()).then_some(self.pos)
    }

    fn skip_trivia(&mut self) {
        loop {
            while self.pos < self.bytes.len() && self.bytes[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            if self.rest().starts_with(b"//") {
                while self.pos < self.bytes.len() && self.bytes[self.pos] != b'\n' {
                    self.pos += 1;
                }
            } else if self.rest().starts_with(b"/*") {
                self.skip_block_comment();
            } else {
                return;
            }
        }
    }

    /// Block comments nest in RON.
    fn skip_block_comment(&mut self) {
        let mut depth = 0usize;
        while self.pos < self.bytes.len() {
            if self.rest().starts_with(b"/*") {
                depth += 1;
                self.pos += 2;
            } else if self.rest().starts_with(b"*/") {
                depth -= 1;
                self.pos += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.pos += 1;
            }
        }
    }

    fn skip_attribute(&mut self) {
        while self.pos < self.bytes.len() && self.bytes[self.pos] != b']' {
            self.pos += 1;
        }
        self.pos += 1;
    }

    /// Skips a `"string"` or `'c'` literal starting at `start`, escapes included.
    fn skip_quoted(&mut self, start: usize) {
        let quote = self.bytes[start];
        self.pos = start + 1;
        while self.pos < self.bytes.len() {
            match self.bytes[self.pos] {
                b'\\' => self.pos += 2,
                b if b == quote => {
                    self.pos += 1;
                    return;
                }
                _ => self.pos += 1,
            }
        }
    }

    fn raw_string_ahead(&self, start: usize) -> bool {
        let rest = self.bytes.get(start + 1..).unwrap_or(&[]);
        let hashes = rest.iter().take_while(|&&b| b == b'#').count();
        rest.get(hashes) == Some(&b'"')
    }

    fn skip_raw_string(&mut self, start: usize) {
        let rest = self.bytes.get(start + 1..).unwrap_or(&[]);
        let hashes = rest.iter().take_while(|&&b| b == b'#').count();
        self.pos = start + 1 + hashes + 1;
        while self.pos < self.bytes.len() {
            if self.bytes[self.pos] == b'"'
                && self
                    .bytes
                    .get(self.pos + 1..)
                    .unwrap_or(&[])
                    .iter()
                    .take(hashes)
                    .filter(|&&b| b == b'#')
                    .count()
                    == hashes
            {
                self.pos += 1 + hashes;
                return;
            }
            self.pos += 1;
        }
    }

    fn word_end(&self, start: usize) -> usize {
        let mut end = start;
        while end < self.bytes.len() && is_word_byte(self.bytes[end]) {
            end += 1;
        }
        end.max(start + 1)
    }

    /// Whether the next token (after blanks and comments) is a `:`. Does not move.
    fn colon_follows(&mut self) -> bool {
        let saved = self.pos;
        self.skip_trivia();
        let colon = self.bytes.get(self.pos) == Some(&b':');
        self.pos = saved;
        colon
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"// comment (with: parens)
(
    version: 1,
    memory: "4G", /* block: comment */
    boot: Kernel(kernel: "bzImage", initrd: Some("initrd.img")),
    disks: [
        (path: "a.raw"),
        (path: "b.qcow2", format: Qcow2),
    ],
    network: User(mac: "52:54:00:00:00:01", forwards: [(host: 2222, guest: 22)]),
)
"#;

    #[test]
    fn finds_values_of_nested_settings() {
        let map = FieldMap::new(TEXT);
        let at = |line, column| Some(LineCol { line, column });
        assert_eq!(map.value_position("version"), at(3, 14));
        assert_eq!(map.value_position("memory"), at(4, 13));
        assert_eq!(map.value_position("boot.kernel"), at(5, 26));
        assert_eq!(map.value_position("boot.initrd"), at(5, 45));
        assert_eq!(map.value_position("disks[1].path"), at(8, 16));
        assert_eq!(map.value_position("disks[1].format"), at(8, 35));
        assert_eq!(map.value_position("disks[0]"), at(7, 9));
        assert_eq!(map.value_position("network.forwards[0].guest"), at(10, 76));
        assert_eq!(map.key_position("memory"), at(4, 5));
        assert_eq!(map.value_position("cdrom"), None);
    }

    #[test]
    fn labels_offsets_with_their_setting() {
        let map = FieldMap::new(TEXT);
        let offset = |line, column| offset_of(TEXT, LineCol { line, column });
        assert_eq!(map.path_at(offset(4, 14)), "memory");
        assert_eq!(map.path_at(offset(5, 50)), "boot.initrd");
        assert_eq!(map.path_at(offset(8, 9)), "disks[1]");
        assert_eq!(map.path_at(offset(8, 10)), "disks[1].path");
        assert_eq!(map.path_at(offset(1, 5)), "");
    }

    #[test]
    fn converts_between_offsets_and_line_columns() {
        let text = "ab\ncdé\nf";
        assert_eq!(line_col(text, 0), LineCol { line: 1, column: 1 });
        assert_eq!(line_col(text, 4), LineCol { line: 2, column: 2 });
        assert_eq!(line_col(text, 8), LineCol { line: 3, column: 1 });
        assert_eq!(offset_of(text, LineCol { line: 3, column: 1 }), 8);
        assert_eq!(offset_of(text, LineCol { line: 2, column: 3 }), 5);
    }

    #[test]
    fn skips_strings_comments_and_literals_that_look_like_structure() {
        let text = "(\n    a: \"x: (y, [z\\\"\", /* (b: 1, /* nested */ c: 2) */\n    \
                    d: r#\"raw \"(e: 1)\" text\"#, f: 'x', g: ')',\n    h: [1, 2],\n)";
        let map = FieldMap::new(text);
        let at = |line, column| Some(LineCol { line, column });
        assert_eq!(map.value_position("a"), at(2, 8));
        assert_eq!(map.value_position("b"), None);
        assert_eq!(map.value_position("c"), None);
        assert_eq!(map.value_position("e"), None);
        assert_eq!(map.value_position("d"), at(3, 8));
        assert_eq!(map.value_position("g"), at(3, 43));
        assert_eq!(map.value_position("h"), at(4, 8));
        assert_eq!(map.value_position("h[1]"), at(4, 12));
    }

    #[test]
    fn survives_every_truncation_of_a_file() {
        for end in (0..=TEXT.len()).filter(|&i| TEXT.is_char_boundary(i)) {
            let map = FieldMap::new(&TEXT[..end]);
            map.path_at(end);
            map.value_position("network.forwards[0].guest");
        }
    }
}
