//! SQL text as SQLite reads it: a tokenizer, the canonical spelling of an expression (so that
//! case, whitespace, comments and identifier quoting do not count), and parsers for the parts
//! of `CREATE TABLE` and `CREATE INDEX` that no pragma reports.

use std::collections::BTreeSet;

/// One token of SQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    /// A bare word: a keyword or an unquoted identifier, lower-cased.
    Word(String),
    /// A quoted identifier (`"x"`, `[x]`, `` `x` ``), unquoted and lower-cased.
    Quoted(String),
    /// A string literal, with its quotes, as written.
    Str(String),
    /// A numeric literal, as written (hex digits lower-cased).
    Number(String),
    /// A blob literal `x'..'`, lower-cased.
    Blob(String),
    /// A parameter (`?`, `?1`, `:name`, `@name`, `$name`).
    Param(String),
    /// Punctuation or an operator; `==` is read as `=`, `<>` as `!=`.
    Punct(&'static str),
}

impl Token {
    /// The identifier this token names, if it can name one (a bare word or a quoted name;
    /// SQLite also takes a string literal as a name in some places).
    pub(crate) fn name(&self) -> Option<&str> {
        match self {
            Token::Word(w) | Token::Quoted(w) => Some(w),
            _ => None,
        }
    }

    /// The identifier this token names where SQLite also takes a string literal as a name
    /// (a column list, a referenced table, a collation): `'users'` names `users`.
    pub(crate) fn name_or_string(&self) -> Option<String> {
        match self {
            Token::Str(s) => Some(
                s.strip_prefix('\'')
                    .and_then(|s| s.strip_suffix('\''))
                    .unwrap_or(s)
                    .replace("''", "'")
                    .to_ascii_lowercase(),
            ),
            other => other.name().map(str::to_owned),
        }
    }

    /// Whether this is the bare word `word` (lower case).
    pub(crate) fn is(&self, word: &str) -> bool {
        matches!(self, Token::Word(w) if w == word)
    }

    fn is_punct(&self, p: &str) -> bool {
        matches!(self, Token::Punct(q) if *q == p)
    }
}

#[rustfmt::skip]
const PUNCTUATION: &[&str] = &[
    "->>", "||", "<=", ">=", "==", "!=", "<>", "<<", ">>", "->", "(", ")", ",", ";", ".", "+", "-",
    "*", "/", "%", "<", ">", "=", "&", "|", "~",
];

/// Splits SQL text into tokens, dropping whitespace and comments. Never fails: a character it
/// does not know becomes a one-character punctuation token of its own (`?`).
pub(crate) fn tokenize(sql: &str) -> Vec<Token> {
    let chars: Vec<char> = sql.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let text = |from: usize, to: usize| chars[from..to].iter().collect::<String>();
    while i < chars.len() {
        let c = chars[i];
        // SQLite's whitespace is these five ASCII characters only: any other character at or
        // above U+0080 (a non-breaking space too) is part of a name.
        if matches!(c, ' ' | '\t' | '\n' | '\x0c' | '\r') {
            i += 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
        } else if c == '\'' {
            let start = i;
            i = skip_quoted(&chars, i, '\'');
            tokens.push(Token::Str(text(start, i.min(chars.len()))));
        } else if (c == 'x' || c == 'X') && chars.get(i + 1) == Some(&'\'') {
            let start = i;
            i = skip_quoted(&chars, i + 1, '\'');
            tokens.push(Token::Blob(
                text(start, i.min(chars.len())).to_ascii_lowercase(),
            ));
        } else if c == '"' || c == '`' || c == '[' {
            let close = match c {
                '[' => ']',
                other => other,
            };
            let start = i;
            i = skip_quoted(&chars, i, close);
            let inner = text(start + 1, i.saturating_sub(1).max(start + 1));
            let doubled = format!("{close}{close}");
            let name = if c == '[' {
                inner
            } else {
                inner.replace(&doubled, &close.to_string())
            };
            tokens.push(Token::Quoted(name.to_ascii_lowercase()));
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            if c == '0' && matches!(chars.get(i + 1), Some('x' | 'X')) {
                i += 2;
                while i < chars.len() && chars[i].is_ascii_hexdigit() {
                    i += 1;
                }
                tokens.push(Token::Number(text(start, i).to_ascii_lowercase()));
                continue;
            }
            while i < chars.len()
                && (chars[i].is_ascii_digit() || chars[i] == '.' || chars[i] == '_')
            {
                i += 1;
            }
            if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                let mut j = i + 1;
                if j < chars.len() && (chars[j] == '+' || chars[j] == '-') {
                    j += 1;
                }
                if j < chars.len() && chars[j].is_ascii_digit() {
                    i = j;
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            tokens.push(Token::Number(text(start, i).to_ascii_lowercase()));
        } else if c.is_alphanumeric() || c == '_' || !c.is_ascii() {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric()
                    || chars[i] == '_'
                    || chars[i] == '$'
                    || !chars[i].is_ascii())
            {
                i += 1;
            }
            tokens.push(Token::Word(text(start, i).to_ascii_lowercase()));
        } else if matches!(c, '?' | ':' | '@' | '$') {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(Token::Param(text(start, i)));
        } else {
            let rest: String = chars[i..(i + 3).min(chars.len())].iter().collect();
            let punct = PUNCTUATION
                .iter()
                .find(|p| rest.starts_with(**p))
                .copied()
                .unwrap_or("?");
            i += punct.chars().count().max(1);
            tokens.push(Token::Punct(match punct {
                "==" => "=",
                "<>" => "!=",
                other => other,
            }));
        }
    }
    tokens
}

/// The index just past a quoted run that starts at `start` (on its opening quote) and ends with
/// `close`; a doubled `close` inside is an escaped one.
fn skip_quoted(chars: &[char], start: usize, close: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        if chars[i] == close {
            if close != ']' && chars.get(i + 1) == Some(&close) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    i
}

/// SQLite's keywords (sqlite.org/lang_keywords.html), written in upper case in canonical text.
#[rustfmt::skip]
const KEYWORDS: &[&str] = &[
    "abort", "action", "add", "after", "all", "alter", "always", "analyze", "and", "as", "asc",
    "attach", "autoincrement", "before", "begin", "between", "by", "cascade", "case", "cast",
    "check", "collate", "column", "commit", "conflict", "constraint", "create", "cross",
    "current", "current_date", "current_time", "current_timestamp", "database", "default",
    "deferrable", "deferred", "delete", "desc", "detach", "distinct", "do", "drop", "each",
    "else", "end", "escape", "except", "exclude", "exclusive", "exists", "explain", "fail",
    "filter", "first", "following", "for", "foreign", "from", "full", "generated", "glob",
    "group", "groups", "having", "if", "ignore", "immediate", "in", "index", "indexed",
    "initially", "inner", "insert", "instead", "intersect", "into", "is", "isnull", "join",
    "key", "last", "left", "like", "limit", "match", "materialized", "natural", "no", "not",
    "nothing", "notnull", "null", "nulls", "of", "offset", "on", "or", "order", "others",
    "outer", "over", "partition", "plan", "pragma", "preceding", "primary", "query", "raise",
    "range", "recursive", "references", "regexp", "reindex", "release", "rename", "replace",
    "restrict", "returning", "right", "rollback", "row", "rows", "savepoint", "select", "set",
    "table", "temp", "temporary", "then", "ties", "to", "transaction", "trigger", "unbounded",
    "union", "unique", "update", "using", "vacuum", "values", "view", "virtual", "when", "where",
    "window", "with", "without", "true", "false",
];

fn is_keyword(word: &str) -> bool {
    KEYWORDS.contains(&word)
}

/// Writes an identifier so that it reads back as the same name: bare when it can be.
pub(crate) fn quote_name(name: &str) -> String {
    let bare = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_alphanumeric() || c == '_')
        && !is_keyword(name);
    if bare {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// The canonical spelling of a run of tokens: keywords in upper case, names in lower case and
/// quoted only when they must be, one space between tokens except around brackets, commas
/// and dots. Two texts SQLite reads the same way (up to case, whitespace, comments and
/// quoting) have the same canonical spelling.
pub(crate) fn canonical(tokens: &[Token]) -> String {
    let mut out = String::new();
    let mut previous: Option<&Token> = None;
    for token in tokens {
        let piece = match token {
            Token::Word(w) if is_keyword(w) => w.to_ascii_uppercase(),
            Token::Word(w) => w.clone(),
            Token::Quoted(q) => quote_name(q),
            Token::Str(s) | Token::Number(s) | Token::Blob(s) | Token::Param(s) => s.clone(),
            Token::Punct(p) => (*p).to_owned(),
        };
        let glued = match (previous, token) {
            (None, _) => true,
            (_, Token::Punct(")" | "," | "." | ";")) => true,
            (Some(Token::Punct("(" | ".")), _) => true,
            // A function call: a name right before its opening bracket.
            (Some(Token::Word(w)), Token::Punct("(")) => !is_keyword(w),
            (Some(Token::Quoted(_)), Token::Punct("(")) => true,
            (Some(Token::Punct("-" | "+" | "~")), _) => starts_operand(&out),
            _ => false,
        };
        if !glued {
            out.push(' ');
        }
        out.push_str(&piece);
        previous = Some(token);
    }
    out
}

/// Whether the sign just written is a unary one (nothing, an opening bracket, a comma or an
/// operator before it), so that `-1` and `- 1` read the same.
fn starts_operand(out: &str) -> bool {
    let trimmed = out[..out.len() - 1].trim_end();
    trimmed.is_empty()
        || trimmed.ends_with([
            '(', ',', '=', '<', '>', '+', '-', '*', '/', '%', '|', '&', '~',
        ])
        || trimmed.ends_with(" IN")
        || trimmed.ends_with(" AND")
        || trimmed.ends_with(" OR")
        || trimmed.ends_with(" NOT")
        || trimmed.ends_with(" THEN")
        || trimmed.ends_with(" ELSE")
        || trimmed.ends_with(" WHEN")
}

/// The canonical spelling of SQL text (see [`canonical`]).
pub(crate) fn canonical_text(sql: &str) -> String {
    canonical(&tokenize(sql))
}

/// Drops brackets that enclose a whole expression: `(0)` reads as `0`.
pub(crate) fn strip_outer_brackets(mut tokens: &[Token]) -> &[Token] {
    while tokens.len() >= 2
        && tokens[0].is_punct("(")
        && tokens[tokens.len() - 1].is_punct(")")
        && closing_bracket(tokens, 0) == Some(tokens.len() - 1)
    {
        tokens = &tokens[1..tokens.len() - 1];
    }
    tokens
}

/// The index of the bracket closing the one at `open`.
fn closing_bracket(tokens: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, token) in tokens.iter().enumerate().skip(open) {
        if token.is_punct("(") {
            depth += 1;
        } else if token.is_punct(")") {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// Splits a bracketed list at its top-level commas.
fn split_top_level(tokens: &[Token]) -> Vec<&[Token]> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, token) in tokens.iter().enumerate() {
        match token {
            Token::Punct("(") => depth += 1,
            Token::Punct(")") => depth -= 1,
            Token::Punct(",") if depth == 0 => {
                parts.push(&tokens[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < tokens.len() {
        parts.push(&tokens[start..]);
    }
    parts
}

/// A conflict clause's algorithm, `None` for the default (ABORT).
fn conflict_at(tokens: &[Token], i: &mut usize) -> Option<String> {
    if tokens.get(*i).is_some_and(|t| t.is("on"))
        && tokens.get(*i + 1).is_some_and(|t| t.is("conflict"))
    {
        let algorithm = tokens
            .get(*i + 2)
            .and_then(Token::name)
            .map(str::to_ascii_uppercase);
        *i += 3;
        return algorithm.filter(|a| a != "ABORT");
    }
    None
}

/// What a `CREATE TABLE` statement says about one column beyond what `pragma_table_xinfo` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ColumnClauses {
    /// The COLLATE clause's collation, upper case.
    pub collation: Option<String>,
    /// The NOT NULL constraint's conflict algorithm (`None`: ABORT).
    pub not_null_conflict: Option<String>,
    /// The generated column's expression, canonical (VIRTUAL or STORED: see the pragma).
    pub generated: Option<String>,
}

/// A UNIQUE constraint as written: its columns and conflict algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UniqueClause {
    /// Column names, lower case.
    pub columns: Vec<String>,
    /// Conflict algorithm (`None`: ABORT).
    pub conflict: Option<String>,
}

/// A foreign key's DEFERRABLE clause as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ForeignKeyClause {
    /// Referencing columns, lower case.
    pub columns: Vec<String>,
    /// Referenced table, lower case.
    pub table: String,
    /// `DEFERRABLE INITIALLY DEFERRED`: checked at COMMIT instead of after each statement.
    pub deferred: bool,
}

/// What a `CREATE TABLE` statement says that no pragma reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TableClauses {
    /// Per column, by lower-case name.
    pub columns: Vec<(String, ColumnClauses)>,
    /// CHECK constraints (column and table ones alike), canonical expressions.
    pub checks: Vec<String>,
    /// The PRIMARY KEY's conflict algorithm (`None`: ABORT).
    pub primary_key_conflict: Option<String>,
    /// AUTOINCREMENT on the primary key.
    pub autoincrement: bool,
    /// UNIQUE constraints.
    pub unique: Vec<UniqueClause>,
    /// Foreign keys' DEFERRABLE clauses.
    pub foreign_keys: Vec<ForeignKeyClause>,
}

impl TableClauses {
    /// Records a UNIQUE constraint on `columns`, with the conflict clause at `i` (read past).
    fn push_unique(&mut self, columns: Vec<String>, item: &[Token], i: &mut usize) {
        let conflict = conflict_at(item, i);
        self.unique.push(UniqueClause { columns, conflict });
    }

    /// Records the CHECK constraint whose expression is bracketed at `open`; returns where it
    /// ends.
    fn push_check(&mut self, item: &[Token], open: usize) -> usize {
        let (expression, next) = bracketed(item, open);
        self.checks
            .push(canonical(strip_outer_brackets(expression)));
        next
    }

    /// The clauses of column `name` (lower case), or none.
    pub(crate) fn column(&self, name: &str) -> ColumnClauses {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    }
}

#[rustfmt::skip]
const COLUMN_CONSTRAINT_START: &[&str] = &[
    "constraint", "primary", "not", "null", "unique", "check", "default", "collate", "references",
    "generated", "as",
];

const TABLE_CONSTRAINT_START: &[&str] = &["constraint", "primary", "unique", "check", "foreign"];

/// Reads the clauses of a `CREATE TABLE` statement that pragmas do not report. Unknown parts
/// are skipped, never an error: SQLite has already accepted the statement.
pub(crate) fn parse_create_table(sql: &str) -> TableClauses {
    let tokens = tokenize(sql);
    let mut clauses = TableClauses::default();
    let Some(open) = tokens.iter().position(|t| t.is_punct("(")) else {
        return clauses; // CREATE TABLE ... AS SELECT keeps no constraints
    };
    let Some(close) = closing_bracket(&tokens, open) else {
        return clauses;
    };
    for item in split_top_level(&tokens[open + 1..close]) {
        let Some(first) = item.first() else { continue };
        let is_constraint =
            matches!(first, Token::Word(w) if TABLE_CONSTRAINT_START.contains(&w.as_str()));
        if is_constraint {
            parse_table_constraint(item, &mut clauses);
        } else {
            parse_column(item, &mut clauses);
        }
    }
    clauses
}

fn parse_column(item: &[Token], clauses: &mut TableClauses) {
    let name = item[0].name_or_string().unwrap_or_default();
    let mut column = ColumnClauses::default();
    // The type name: words, then an optional bracketed size.
    let mut i = 1;
    while i < item.len() {
        match &item[i] {
            Token::Word(w) if COLUMN_CONSTRAINT_START.contains(&w.as_str()) => break,
            Token::Punct("(") => {
                i = closing_bracket(item, i).map_or(item.len(), |c| c + 1);
                break;
            }
            _ => i += 1,
        }
    }
    while i < item.len() {
        let token = &item[i];
        if token.is("constraint") {
            i += 2;
        } else if token.is("primary") {
            i += 2; // PRIMARY KEY
            if item.get(i).is_some_and(|t| t.is("asc") || t.is("desc")) {
                i += 1;
            }
            clauses.primary_key_conflict = conflict_at(item, &mut i);
            if item.get(i).is_some_and(|t| t.is("autoincrement")) {
                clauses.autoincrement = true;
                i += 1;
            }
        } else if token.is("not") && item.get(i + 1).is_some_and(|t| t.is("null")) {
            i += 2;
            column.not_null_conflict = conflict_at(item, &mut i);
        } else if token.is("null") {
            i += 1;
            conflict_at(item, &mut i);
        } else if token.is("unique") {
            i += 1;
            clauses.push_unique(vec![name.clone()], item, &mut i);
        } else if token.is("check") {
            i = clauses.push_check(item, i + 1);
        } else if token.is("default") {
            i += 1;
            if item.get(i).is_some_and(|t| t.is_punct("(")) {
                i = closing_bracket(item, i).map_or(item.len(), |c| c + 1);
            } else {
                if item
                    .get(i)
                    .is_some_and(|t| t.is_punct("-") || t.is_punct("+"))
                {
                    i += 1;
                }
                i += 1;
            }
        } else if token.is("collate") {
            column.collation = item.get(i + 1).map(collation_name);
            i += 2;
        } else if token.is("references") {
            i = parse_references(item, i, vec![name.clone()], clauses);
        } else if token.is("generated") || token.is("as") {
            if token.is("generated") {
                i += 2; // GENERATED ALWAYS
            }
            let (expression, next) = bracketed(item, i + 1);
            let expression = canonical(strip_outer_brackets(expression));
            i = next;
            if item
                .get(i)
                .is_some_and(|t| t.is("stored") || t.is("virtual"))
            {
                i += 1;
            }
            column.generated = Some(expression);
        } else {
            i += 1;
        }
    }
    clauses.columns.push((name, column));
}

/// The tokens inside the brackets that open at `open`, and the index after the closing one.
fn bracketed(tokens: &[Token], open: usize) -> (&[Token], usize) {
    if !tokens.get(open).is_some_and(|t| t.is_punct("(")) {
        return (&[], open);
    }
    match closing_bracket(tokens, open) {
        Some(close) => (&tokens[open + 1..close], close + 1),
        None => (&tokens[open + 1..], tokens.len()),
    }
}

fn collation_name(token: &Token) -> String {
    match token {
        Token::Str(s) => s.trim_matches('\'').to_ascii_uppercase(),
        other => other.name().unwrap_or_default().to_ascii_uppercase(),
    }
}

/// Names in a bracketed column list (each possibly with COLLATE and ASC/DESC after it); SQLite
/// takes a string literal (`'a'`) and a bracketed name (`(a)`) as the column too.
fn column_names(list: &[Token]) -> Vec<String> {
    split_top_level(list)
        .into_iter()
        .filter_map(|part| {
            let mut end = part.len();
            if end > 0 && (part[end - 1].is("asc") || part[end - 1].is("desc")) {
                end -= 1;
            }
            if end >= 2 && part[end - 2].is("collate") {
                end -= 2;
            }
            match strip_outer_brackets(&part[..end]) {
                [single] => single.name_or_string(),
                _ => None,
            }
        })
        .collect()
}

fn parse_references(
    item: &[Token],
    at: usize,
    columns: Vec<String>,
    clauses: &mut TableClauses,
) -> usize {
    let mut i = at + 1;
    let table = item
        .get(i)
        .and_then(Token::name_or_string)
        .unwrap_or_default();
    i += 1;
    if item.get(i).is_some_and(|t| t.is_punct("(")) {
        i = bracketed(item, i).1;
    }
    let mut deferred = false;
    while i < item.len() {
        let token = &item[i];
        if token.is("on") {
            i += 2; // ON DELETE | ON UPDATE
            if item.get(i).is_some_and(|t| t.is("set") || t.is("no")) {
                i += 1;
            }
            i += 1;
        } else if token.is("match") {
            i += 2;
        } else if token.is("not") && item.get(i + 1).is_some_and(|t| t.is("deferrable")) {
            i += 2;
            deferred = false;
            if item.get(i).is_some_and(|t| t.is("initially")) {
                i += 2;
            }
        } else if token.is("deferrable") {
            i += 1;
            deferred = item.get(i).is_some_and(|t| t.is("initially"))
                && item.get(i + 1).is_some_and(|t| t.is("deferred"));
            if item.get(i).is_some_and(|t| t.is("initially")) {
                i += 2;
            }
        } else {
            break;
        }
    }
    clauses.foreign_keys.push(ForeignKeyClause {
        columns,
        table,
        deferred,
    });
    i
}

fn parse_table_constraint(item: &[Token], clauses: &mut TableClauses) {
    let mut i = 0;
    while i < item.len() {
        let token = &item[i];
        if token.is("constraint") {
            i += 2;
        } else if token.is("primary") {
            let (list, next) = bracketed(item, i + 2);
            if list.iter().any(|t| t.is("autoincrement")) {
                clauses.autoincrement = true;
            }
            i = next;
            clauses.primary_key_conflict = conflict_at(item, &mut i);
        } else if token.is("unique") {
            let (list, next) = bracketed(item, i + 1);
            i = next;
            clauses.push_unique(column_names(list), item, &mut i);
        } else if token.is("check") {
            i = clauses.push_check(item, i + 1);
            conflict_at(item, &mut i);
        } else if token.is("foreign") {
            let (list, next) = bracketed(item, i + 2);
            let columns = column_names(list);
            if item.get(next).is_some_and(|t| t.is("references")) {
                i = parse_references(item, next, columns, clauses);
            } else {
                i = next;
            }
        } else {
            i += 1;
        }
    }
}

/// What a `CREATE INDEX` statement says that `pragma_index_xinfo` does not: the expression of
/// each key (`None` for a plain column) and the WHERE clause.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IndexClauses {
    /// Per key, in order: the canonical expression, or `None` for a column.
    pub expressions: Vec<Option<String>>,
    /// The partial index's WHERE clause, canonical.
    pub where_clause: Option<String>,
}

/// Reads the key expressions and the WHERE clause of a `CREATE INDEX` statement.
pub(crate) fn parse_create_index(sql: &str) -> IndexClauses {
    let tokens = tokenize(sql);
    let mut clauses = IndexClauses::default();
    let Some(on) = tokens.iter().position(|t| t.is("on")) else {
        return clauses;
    };
    let Some(open) = tokens[on..]
        .iter()
        .position(|t| t.is_punct("("))
        .map(|p| p + on)
    else {
        return clauses;
    };
    let (list, next) = bracketed(&tokens, open);
    for part in split_top_level(list) {
        let mut end = part.len();
        if end > 0 && (part[end - 1].is("asc") || part[end - 1].is("desc")) {
            end -= 1;
        }
        if end >= 2 && part[end - 2].is("collate") {
            end -= 2;
        }
        let key = strip_outer_brackets(&part[..end]);
        clauses.expressions.push(match key {
            [single] if single.name().is_some() => None,
            other => Some(canonical(other)),
        });
    }
    if tokens.get(next).is_some_and(|t| t.is("where")) {
        let rest = &tokens[next + 1..];
        let rest = rest.strip_suffix(&[Token::Punct(";")]).unwrap_or(rest);
        clauses.where_clause = Some(canonical(rest));
    }
    clauses
}

/// Whether SQL text names `table` anywhere (as a bare or quoted name): a view or trigger that
/// does depends on it.
pub(crate) fn mentions(sql: &str, table: &str) -> bool {
    tokenize(sql).iter().any(|t| t.name() == Some(table))
}

/// Tables a migration drops (`DROP TABLE [IF EXISTS] name`), lower case, in order.
pub(crate) fn dropped_tables(sql: &str) -> BTreeSet<String> {
    let tokens = tokenize(sql);
    let mut dropped = BTreeSet::new();
    for (i, pair) in tokens.windows(2).enumerate() {
        if pair[0].is("drop") && pair[1].is("table") {
            let mut j = i + 2;
            if tokens.get(j).is_some_and(|t| t.is("if")) {
                j += 2;
            }
            // `schema.name`: the name is after the dot.
            if tokens.get(j + 1).is_some_and(|t| t.is_punct(".")) {
                j += 2;
            }
            if let Some(name) = tokens.get(j).and_then(Token::name) {
                dropped.insert(name.to_owned());
            }
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_text_ignores_case_spacing_quoting_and_comments() {
        let a = canonical_text("CHECK (is_admin IN (0, 1))");
        let b = canonical_text("check(\"IS_ADMIN\" in (0,1)) -- boolean");
        let c = canonical_text("check ( [is_admin]  IN  ( 0 , 1 ) )");
        assert_eq!(a, "CHECK (is_admin IN (0, 1))");
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(canonical_text("lower( Username )"), "lower(username)");
        assert_eq!(canonical_text("x == -1"), canonical_text("x=- 1"));
        assert_eq!(canonical_text("\"select\""), "\"select\"");
        assert_ne!(canonical_text("'A'"), canonical_text("'a'"));
    }

    #[test]
    fn create_table_clauses_are_read() {
        let clauses = parse_create_table(
            "CREATE TABLE \"t\" (\"id\" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT UNIQUE,
             name VARCHAR(10) COLLATE nocase NOT NULL ON CONFLICT IGNORE CHECK (length(name) > 0),
             up TEXT GENERATED ALWAYS AS (upper(name)) STORED,
             u INT REFERENCES users(id) DEFERRABLE INITIALLY DEFERRED,
             CONSTRAINT k UNIQUE (name, u) ON CONFLICT REPLACE,
             CHECK (u > 0))",
        );
        assert!(clauses.autoincrement);
        assert_eq!(clauses.checks, vec!["length(name) > 0", "u > 0"]);
        let name = clauses.column("name");
        assert_eq!(name.collation.as_deref(), Some("NOCASE"));
        assert_eq!(name.not_null_conflict.as_deref(), Some("IGNORE"));
        assert_eq!(
            clauses.column("up").generated.as_deref(),
            Some("upper(name)")
        );
        assert_eq!(clauses.unique.len(), 2);
        assert_eq!(clauses.unique[1].conflict.as_deref(), Some("REPLACE"));
        assert!(clauses.foreign_keys[0].deferred);
    }

    #[test]
    fn create_index_expressions_and_where_are_read() {
        let clauses = parse_create_index(
            "CREATE UNIQUE INDEX ix ON users (lower(username) COLLATE nocase DESC, id) WHERE username IS NOT NULL",
        );
        assert_eq!(
            clauses.expressions,
            vec![Some("lower(username)".to_owned()), None]
        );
        assert_eq!(
            clauses.where_clause.as_deref(),
            Some("username IS NOT NULL")
        );
    }

    #[test]
    fn dropped_tables_are_found() {
        let dropped = dropped_tables(
            "CREATE TABLE new_users (x); DROP TABLE users; ALTER TABLE new_users RENAME TO users;",
        );
        assert_eq!(dropped.into_iter().collect::<Vec<_>>(), vec!["users"]);
    }
}
