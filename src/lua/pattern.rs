//! Lua 5.4 patterns (`string.find`, `match`, `gmatch`, `gsub`) in Rust, with every
//! step counted. Lua's own matcher backtracks inside one C call, where neither the
//! instruction budget's count hook nor its wall-clock check can reach it:
//! `("a"):rep(3000):find(("a*"):rep(12) .. "b")` would hold the worker for good. The
//! sandbox sends calls whose worst case is small to Lua's C functions (fast) and the
//! others here, where steps are charged to the hook's budget as it runs.
//!
//! The matcher is a port of `lstrlib.c` (Lua 5.4, MIT licence) — same grammar, same
//! captures, same results and errors; `tests` compare it with the C functions. Owns:
//! matching and the four functions' semantics. Must not touch: the budget itself (it
//! asks a [`Charge`]).

use mlua::{Function, IntoLuaMulti, Lua, MultiValue, Value};

/// Most captures in a pattern (`LUA_MAXCAPTURES`).
const MAX_CAPTURES: usize = 32;
/// Deepest recursion of the matcher (`MAXCCALLS`).
const MAX_DEPTH: usize = 200;
/// Steps between two calls of the charge.
const CHARGE_EVERY: u64 = 1024;
const ESC: u8 = b'%';
const SPECIALS: &[u8] = b"^$*+?.([%-";

/// Why a match stopped with an error (the messages are Lua's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("malformed pattern (ends with '%')")]
    EndsWithEscape,
    #[error("malformed pattern (missing ']')")]
    MissingBracket,
    #[error("malformed pattern (missing arguments to '%b')")]
    MissingBalance,
    #[error("missing '[' after '%f' in pattern")]
    MissingFrontierBracket,
    #[error("invalid capture index %{0}")]
    CaptureIndex(usize),
    #[error("invalid pattern capture")]
    PatternCapture,
    #[error("unfinished capture")]
    UnfinishedCapture,
    #[error("too many captures")]
    TooManyCaptures,
    #[error("pattern too complex")]
    TooComplex,
    #[error("invalid use of '%' in replacement string")]
    Replacement,
    /// The charge refused more steps (the budget is spent).
    #[error("{0}")]
    Budget(String),
}

/// Pays for matcher steps: `Err(message)` stops the match.
pub type Charge<'a> = &'a mut dyn FnMut(u64) -> Result<(), String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Len {
    Unfinished,
    Position,
    Bytes(usize),
}

/// One capture of a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture {
    /// A substring, by byte range of the subject.
    Text(usize, usize),
    /// A position capture `()`: 1-based.
    Position(usize),
}

struct State<'a, 'c> {
    src: &'a [u8],
    pat: &'a [u8],
    depth: usize,
    level: usize,
    caps: [(usize, Len); MAX_CAPTURES],
    steps: u64,
    charge: Charge<'c>,
}

impl<'a, 'c> State<'a, 'c> {
    fn new(src: &'a [u8], pat: &'a [u8], charge: Charge<'c>) -> Self {
        State {
            src,
            pat,
            depth: MAX_DEPTH,
            level: 0,
            caps: [(0, Len::Unfinished); MAX_CAPTURES],
            steps: 0,
            charge,
        }
    }

    fn reset(&mut self) {
        self.level = 0;
        self.depth = MAX_DEPTH;
    }

    /// The pattern byte at `i`, or 0 past the end (C reads the terminating NUL).
    fn p(&self, i: usize) -> u8 {
        self.pat.get(i).copied().unwrap_or(0)
    }

    /// The subject byte at `i`, or 0 past the end.
    fn s(&self, i: usize) -> u8 {
        self.src.get(i).copied().unwrap_or(0)
    }

    fn step(&mut self) -> Result<(), PatternError> {
        self.steps += 1;
        if self.steps.is_multiple_of(CHARGE_EVERY) {
            (self.charge)(CHARGE_EVERY).map_err(PatternError::Budget)?;
        }
        Ok(())
    }

    /// Charges the steps not yet paid for.
    fn settle(&mut self) -> Result<(), PatternError> {
        let rest = self.steps % CHARGE_EVERY;
        self.steps -= rest;
        if rest > 0 {
            (self.charge)(rest).map_err(PatternError::Budget)?;
        }
        Ok(())
    }

    /// Charges `n` bytes of output built here (gsub's result lives outside the Lua
    /// memory limit until it is done): one step per 64 bytes, so the budget bounds it.
    fn pay_bytes(&mut self, n: usize) -> Result<(), PatternError> {
        let units = (n / 64) as u64;
        if units > 0 {
            (self.charge)(units).map_err(PatternError::Budget)?;
        }
        Ok(())
    }

    fn class_end(&self, mut p: usize) -> Result<usize, PatternError> {
        let c = self.p(p);
        p += 1;
        match c {
            ESC => {
                if p >= self.pat.len() {
                    return Err(PatternError::EndsWithEscape);
                }
                Ok(p + 1)
            }
            b'[' => {
                if self.p(p) == b'^' {
                    p += 1;
                }
                loop {
                    if p >= self.pat.len() {
                        return Err(PatternError::MissingBracket);
                    }
                    let c = self.p(p);
                    p += 1;
                    if c == ESC && p < self.pat.len() {
                        p += 1;
                    }
                    if self.p(p) == b']' {
                        break;
                    }
                }
                Ok(p + 1)
            }
            _ => Ok(p),
        }
    }

    fn bracket_class(&self, c: u8, mut p: usize, ec: usize) -> bool {
        let mut sig = true;
        if self.p(p + 1) == b'^' {
            sig = false;
            p += 1;
        }
        loop {
            p += 1;
            if p >= ec {
                break;
            }
            if self.p(p) == ESC {
                p += 1;
                if class_matches(c, self.p(p)) {
                    return sig;
                }
            } else if self.p(p + 1) == b'-' && p + 2 < ec {
                p += 2;
                if self.p(p - 2) <= c && c <= self.p(p) {
                    return sig;
                }
            } else if self.p(p) == c {
                return sig;
            }
        }
        !sig
    }

    fn single(&self, s: usize, p: usize, ep: usize) -> bool {
        if s >= self.src.len() {
            return false;
        }
        let c = self.src[s];
        match self.p(p) {
            b'.' => true,
            ESC => class_matches(c, self.p(p + 1)),
            b'[' => self.bracket_class(c, p, ep - 1),
            pc => pc == c,
        }
    }

    fn balance(&mut self, s: usize, p: usize) -> Result<Option<usize>, PatternError> {
        if p + 1 >= self.pat.len() {
            return Err(PatternError::MissingBalance);
        }
        if s >= self.src.len() || self.src[s] != self.p(p) {
            return Ok(None);
        }
        let (b, e) = (self.p(p), self.p(p + 1));
        let mut depth = 1;
        let mut s = s + 1;
        while s < self.src.len() {
            self.step()?;
            let c = self.src[s];
            if c == e {
                depth -= 1;
                if depth == 0 {
                    return Ok(Some(s + 1));
                }
            } else if c == b {
                depth += 1;
            }
            s += 1;
        }
        Ok(None)
    }

    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> Result<Option<usize>, PatternError> {
        let mut i = 0;
        while self.single(s + i, p, ep) {
            self.step()?;
            i += 1;
        }
        loop {
            if let Some(res) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(res));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    fn min_expand(
        &mut self,
        mut s: usize,
        p: usize,
        ep: usize,
    ) -> Result<Option<usize>, PatternError> {
        loop {
            if let Some(res) = self.do_match(s, ep + 1)? {
                return Ok(Some(res));
            }
            if self.single(s, p, ep) {
                s += 1;
            } else {
                return Ok(None);
            }
        }
    }

    fn start_capture(
        &mut self,
        s: usize,
        p: usize,
        what: Len,
    ) -> Result<Option<usize>, PatternError> {
        if self.level >= MAX_CAPTURES {
            return Err(PatternError::TooManyCaptures);
        }
        self.caps[self.level] = (s, what);
        self.level += 1;
        let res = self.do_match(s, p)?;
        if res.is_none() {
            self.level -= 1;
        }
        Ok(res)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Result<Option<usize>, PatternError> {
        let l = (0..self.level)
            .rev()
            .find(|&l| self.caps[l].1 == Len::Unfinished)
            .ok_or(PatternError::PatternCapture)?;
        self.caps[l].1 = Len::Bytes(s - self.caps[l].0);
        let res = self.do_match(s, p)?;
        if res.is_none() {
            self.caps[l].1 = Len::Unfinished;
        }
        Ok(res)
    }

    fn match_capture(&mut self, s: usize, digit: u8) -> Result<Option<usize>, PatternError> {
        // `%0` is index -1: invalid, as every index of no finished capture.
        let index = usize::from(digit - b'0');
        let l = index.wrapping_sub(1);
        let (init, len) = match self.caps.get(l) {
            Some(&(init, Len::Bytes(len))) if l < self.level => (init, len),
            // A position's length reads as huge in C: never matches.
            Some(&(_, Len::Position)) if l < self.level => return Ok(None),
            _ => return Err(PatternError::CaptureIndex(index)),
        };
        if self.src.len() - s >= len && self.src[init..init + len] == self.src[s..s + len] {
            Ok(Some(s + len))
        } else {
            Ok(None)
        }
    }

    /// `match` of lstrlib: where a match of the pattern from `p` at `s` ends.
    fn do_match(&mut self, s: usize, p: usize) -> Result<Option<usize>, PatternError> {
        if self.depth == 0 {
            return Err(PatternError::TooComplex);
        }
        self.depth -= 1;
        let res = self.match_body(s, p);
        self.depth += 1;
        res
    }

    fn match_body(&mut self, mut s: usize, mut p: usize) -> Result<Option<usize>, PatternError> {
        loop {
            self.step()?;
            if p >= self.pat.len() {
                return Ok(Some(s));
            }
            match self.p(p) {
                b'(' => {
                    return if self.p(p + 1) == b')' {
                        self.start_capture(s, p + 2, Len::Position)
                    } else {
                        self.start_capture(s, p + 1, Len::Unfinished)
                    };
                }
                b')' => return self.end_capture(s, p + 1),
                b'$' if p + 1 == self.pat.len() => {
                    return Ok((s == self.src.len()).then_some(s));
                }
                ESC if self.p(p + 1) == b'b' => match self.balance(s, p + 2)? {
                    Some(end) => {
                        s = end;
                        p += 4;
                        continue;
                    }
                    None => return Ok(None),
                },
                ESC if self.p(p + 1) == b'f' => {
                    p += 2;
                    if self.p(p) != b'[' {
                        return Err(PatternError::MissingFrontierBracket);
                    }
                    let ep = self.class_end(p)?;
                    let previous = if s == 0 { 0 } else { self.s(s - 1) };
                    if !self.bracket_class(previous, p, ep - 1)
                        && self.bracket_class(self.s(s), p, ep - 1)
                    {
                        p = ep;
                        continue;
                    }
                    return Ok(None);
                }
                ESC if self.p(p + 1).is_ascii_digit() => {
                    match self.match_capture(s, self.p(p + 1))? {
                        Some(end) => {
                            s = end;
                            p += 2;
                            continue;
                        }
                        None => return Ok(None),
                    }
                }
                _ => {
                    let ep = self.class_end(p)?;
                    let suffix = self.p(ep);
                    if !self.single(s, p, ep) {
                        if matches!(suffix, b'*' | b'?' | b'-') && ep < self.pat.len() {
                            p = ep + 1;
                            continue;
                        }
                        return Ok(None);
                    }
                    match suffix {
                        b'?' if ep < self.pat.len() => {
                            if let Some(res) = self.do_match(s + 1, ep + 1)? {
                                return Ok(Some(res));
                            }
                            p = ep + 1;
                        }
                        b'+' if ep < self.pat.len() => return self.max_expand(s + 1, p, ep),
                        b'*' if ep < self.pat.len() => return self.max_expand(s, p, ep),
                        b'-' if ep < self.pat.len() => return self.min_expand(s, p, ep),
                        _ => {
                            s += 1;
                            p = ep;
                        }
                    }
                }
            }
        }
    }

    fn capture(&self, i: usize, s: usize, e: usize) -> Result<Capture, PatternError> {
        if i >= self.level {
            if i != 0 {
                return Err(PatternError::CaptureIndex(i + 1));
            }
            return Ok(Capture::Text(s, e));
        }
        let (init, len) = self.caps[i];
        match len {
            Len::Unfinished => Err(PatternError::UnfinishedCapture),
            Len::Position => Ok(Capture::Position(init + 1)),
            Len::Bytes(l) => Ok(Capture::Text(init, init + l)),
        }
    }

    /// The captures of a match of `s..e` (the whole match when the pattern has none;
    /// nothing for `find`, which passes `None`).
    fn captures(&self, whole: Option<(usize, usize)>) -> Result<Vec<Capture>, PatternError> {
        let n = if self.level == 0 && whole.is_some() {
            1
        } else {
            self.level
        };
        let (s, e) = whole.unwrap_or((0, 0));
        (0..n).map(|i| self.capture(i, s, e)).collect()
    }
}

/// A character class letter against a byte, in the C locale.
fn class_matches(c: u8, class: u8) -> bool {
    let res = match class.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        // C's isspace also takes the vertical tab.
        b's' => c.is_ascii_whitespace() || c == 0x0b,
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        _ => return class == c,
    };
    if class.is_ascii_uppercase() {
        !res
    } else {
        res
    }
}

/// `posrelatI`: a 1-based start from a Lua index, then 0-based.
fn start_index(init: i64, len: usize) -> usize {
    let pos = if init > 0 {
        usize::try_from(init).unwrap_or(usize::MAX)
    } else if init == 0 || init.unsigned_abs() > len as u64 {
        1
    } else {
        len - init.unsigned_abs() as usize + 1
    };
    pos - 1
}

/// Whether a pattern has no special characters (a plain search will do).
fn no_specials(p: &[u8]) -> bool {
    !p.iter().any(|c| SPECIALS.contains(c))
}

/// The byte every match of `p` (not anchored) starts with, when its first item is
/// one literal byte that must occur at least once (not followed by `*`, `?` or `-`).
fn literal_first(p: &[u8]) -> Option<u8> {
    let (byte, len) = match *p.first()? {
        ESC => match p.get(1) {
            Some(&c) if !c.is_ascii_alphanumeric() => (c, 2),
            _ => return None,
        },
        c if SPECIALS.contains(&c) || c == b')' => return None,
        c => (c, 1),
    };
    match p.get(len) {
        Some(b'*' | b'?' | b'-') => None,
        _ => Some(byte),
    }
}

/// A match: where it starts and ends (0-based, end exclusive), and its captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub start: usize,
    pub end: usize,
    pub captures: Vec<Capture>,
}

/// The first match at or after `from` (up to the subject's end, inclusive) that does
/// not end at `last` (how gmatch and gsub skip a repeated empty match); only at
/// `from` when `anchored`. Its captures stay in `st`.
fn next(
    st: &mut State<'_, '_>,
    from: usize,
    last: Option<usize>,
    anchored: bool,
) -> Result<Option<(usize, usize)>, PatternError> {
    let first = if anchored {
        None
    } else {
        literal_first(st.pat)
    };
    let mut at = from;
    while at <= st.src.len() {
        if let Some(byte) = first {
            // Only a position holding the pattern's first byte can start a match:
            // skip to the next one (a C-speed scan, charged by the bytes skipped as
            // the library's scans are) instead of one matcher step per position.
            let rest = st.src.get(at..).unwrap_or_default();
            let skip = memchr::memchr(byte, rest).unwrap_or(rest.len());
            st.pay_bytes(skip)?;
            at += skip;
            if at >= st.src.len() {
                break;
            }
        }
        st.reset();
        if let Some(end) = st.do_match(at, 0)? {
            if Some(end) != last {
                return Ok(Some((at, end)));
            }
        }
        if anchored {
            break;
        }
        at += 1;
    }
    Ok(None)
}

/// `string.find` (`find`) or `string.match`, with their results.
pub fn find(
    s: &[u8],
    p: &[u8],
    init: i64,
    plain: bool,
    is_find: bool,
    charge: Charge<'_>,
) -> Result<Option<Found>, PatternError> {
    let from = start_index(init, s.len());
    if from > s.len() {
        return Ok(None);
    }
    if is_find && (plain || no_specials(p)) {
        // Plain search: linear (Lua's own is not).
        let hit = memchr::memmem::find(&s[from..], p);
        // Charged as the library's scans are: one per 64 bytes read.
        charge((s.len() - from) as u64 / 64 + 1).map_err(PatternError::Budget)?;
        return Ok(hit.map(|i| Found {
            start: from + i,
            end: from + i + p.len(),
            captures: Vec::new(),
        }));
    }
    let (anchored, p) = match p.first() {
        Some(b'^') => (true, &p[1..]),
        _ => (false, p),
    };
    let mut st = State::new(s, p, charge);
    let found = match next(&mut st, from, None, anchored)? {
        Some((start, end)) => Some(Found {
            start,
            end,
            captures: st.captures((!is_find).then_some((start, end)))?,
        }),
        None => None,
    };
    st.settle()?;
    Ok(found)
}

/// The text and position values of `caps` as Lua values.
fn capture_values(lua: &Lua, s: &[u8], caps: &[Capture]) -> mlua::Result<Vec<Value>> {
    caps.iter()
        .map(|c| match c {
            Capture::Text(a, b) => lua.create_string(&s[*a..*b]).map(Value::String),
            Capture::Position(n) => Ok(Value::Integer(*n as i64)),
        })
        .collect()
}

fn lua_err(e: PatternError) -> mlua::Error {
    mlua::Error::runtime(e.to_string())
}

/// The Lua functions: `find(s, p, init, plain)`, `match(s, p, init)`,
/// `gmatch(s, p, init)`, `gsub(s, p, repl, n)` — the C functions' arguments and
/// results. `charge` pays for steps (the budget).
pub fn functions<C>(lua: &Lua, charge: C) -> mlua::Result<[Function; 4]>
where
    C: Fn(u64) -> Result<(), String> + Clone + Send + 'static,
{
    let c = charge.clone();
    let find_fn = lua.create_function(
        move |lua,
              (s, p, init, plain): (
            mlua::LuaString,
            mlua::LuaString,
            Option<i64>,
            Option<Value>,
        )| {
            let (s, p) = (s.as_bytes(), p.as_bytes());
            let plain = plain.is_some_and(|v| !matches!(v, Value::Nil | Value::Boolean(false)));
            let mut pay = |n| c(n);
            match find(&s, &p, init.unwrap_or(1), plain, true, &mut pay).map_err(lua_err)? {
                None => Value::Nil.into_lua_multi(lua),
                Some(f) => {
                    let mut out = vec![
                        Value::Integer(f.start as i64 + 1),
                        Value::Integer(f.end as i64),
                    ];
                    out.extend(capture_values(lua, &s, &f.captures)?);
                    Ok(MultiValue::from_vec(out))
                }
            }
        },
    )?;
    let c = charge.clone();
    let match_fn = lua.create_function(
        move |lua, (s, p, init): (mlua::LuaString, mlua::LuaString, Option<i64>)| {
            let (s, p) = (s.as_bytes(), p.as_bytes());
            let mut pay = |n| c(n);
            match find(&s, &p, init.unwrap_or(1), false, false, &mut pay).map_err(lua_err)? {
                None => Value::Nil.into_lua_multi(lua),
                Some(f) => Ok(MultiValue::from_vec(capture_values(lua, &s, &f.captures)?)),
            }
        },
    )?;
    let c = charge.clone();
    let gmatch_fn = lua.create_function(
        move |lua, (s, p, init): (mlua::LuaString, mlua::LuaString, Option<i64>)| {
            let len = s.as_bytes().len();
            let start = start_index(init.unwrap_or(1), len).min(len + 1);
            let state = std::cell::Cell::new((start, None::<usize>));
            let c = c.clone();
            lua.create_function(move |lua, ()| {
                let (src, pat) = (s.as_bytes(), p.as_bytes());
                let (from, last) = state.get();
                if from > src.len() {
                    return Ok(MultiValue::new());
                }
                let mut pay = |n| c(n);
                // gmatch never anchors: a leading '^' matches itself.
                let mut st = State::new(&src, &pat, &mut pay);
                let found = next(&mut st, from, last, false).map_err(lua_err)?;
                let captures = match found {
                    Some((start, end)) => Some(st.captures(Some((start, end))).map_err(lua_err)?),
                    None => None,
                };
                st.settle().map_err(lua_err)?;
                match (found, captures) {
                    (Some((_, end)), Some(caps)) => {
                        state.set((end, Some(end)));
                        Ok(MultiValue::from_vec(capture_values(lua, &src, &caps)?))
                    }
                    _ => {
                        state.set((src.len() + 1, last));
                        Ok(MultiValue::new())
                    }
                }
            })
        },
    )?;
    let c = charge;
    let gsub_fn = lua.create_function(
        move |lua, (s, p, repl, max): (mlua::LuaString, mlua::LuaString, Value, Option<i64>)| {
            let (src, pat) = (s.as_bytes(), p.as_bytes());
            match &repl {
                Value::String(_)
                | Value::Integer(_)
                | Value::Number(_)
                | Value::Function(_)
                | Value::Table(_) => {}
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "bad argument #3 to 'gsub' (string/function/table expected, got {})",
                        other.type_name()
                    )))
                }
            }
            let repl_text = match &repl {
                Value::Integer(_) | Value::Number(_) => Some(
                    lua.coerce_string(repl.clone())?
                        .map(|s| s.as_bytes().to_vec())
                        .unwrap_or_default(),
                ),
                Value::String(t) => Some(t.as_bytes().to_vec()),
                _ => None,
            };
            let max = max.unwrap_or(src.len() as i64 + 1);
            let (anchored, pat) = match pat.first() {
                Some(b'^') => (true, &pat[1..]),
                _ => (false, &pat[..]),
            };
            let mut pay = |n| c(n);
            let mut st = State::new(&src, pat, &mut pay);
            let mut out: Vec<u8> = Vec::new();
            let (mut at, mut last, mut n, mut changed) = (0usize, None, 0i64, false);
            while n < max {
                let Some((start, end)) = next(&mut st, at, last, anchored).map_err(lua_err)? else {
                    break;
                };
                n += 1;
                let before = out.len();
                out.extend_from_slice(&src[at..start]);
                let whole = &src[start..end];
                let value: Option<Vec<u8>> = match (&repl_text, &repl) {
                    (Some(text), _) => {
                        add_text(&mut out, text, &st, start, end).map_err(lua_err)?;
                        changed = true;
                        None
                    }
                    (None, Value::Function(func)) => {
                        let caps = st.captures(Some((start, end))).map_err(lua_err)?;
                        let args = capture_values(lua, &src, &caps)?;
                        replacement(lua, func.call::<Value>(MultiValue::from_vec(args))?)?
                    }
                    (None, Value::Table(t)) => {
                        let first = st.capture(0, start, end).map_err(lua_err)?;
                        let key = capture_values(lua, &src, &[first])?;
                        replacement(
                            lua,
                            t.get::<Value>(key.into_iter().next().unwrap_or(Value::Nil))?,
                        )?
                    }
                    _ => None,
                };
                if repl_text.is_none() {
                    match value {
                        Some(v) => {
                            out.extend_from_slice(&v);
                            changed = true;
                        }
                        None => out.extend_from_slice(whole),
                    }
                }
                st.pay_bytes(out.len() - before).map_err(lua_err)?;
                at = end;
                last = Some(end);
                // An empty match that could not move on: copy one byte and go on (the
                // C loop's "skip one character").
                if anchored {
                    break;
                }
            }
            st.settle().map_err(lua_err)?;
            let result = if changed {
                out.extend_from_slice(&src[at.min(src.len())..]);
                Value::String(lua.create_string(&out)?)
            } else {
                Value::String(s.clone())
            };
            (result, n).into_lua_multi(lua)
        },
    )?;
    Ok([find_fn, match_fn, gmatch_fn, gsub_fn])
}

/// A function's or table's replacement value: `None` keeps the match.
fn replacement(lua: &Lua, v: Value) -> mlua::Result<Option<Vec<u8>>> {
    match v {
        Value::Nil | Value::Boolean(false) => Ok(None),
        Value::String(s) => Ok(Some(s.as_bytes().to_vec())),
        Value::Integer(_) | Value::Number(_) => {
            Ok(lua.coerce_string(v)?.map(|s| s.as_bytes().to_vec()))
        }
        other => Err(mlua::Error::runtime(format!(
            "invalid replacement value (a {})",
            other.type_name()
        ))),
    }
}

/// `add_s`: a replacement string with `%0`-`%9` and `%%`.
fn add_text(
    out: &mut Vec<u8>,
    text: &[u8],
    st: &State<'_, '_>,
    s: usize,
    e: usize,
) -> Result<(), PatternError> {
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        i += 1;
        if c != ESC {
            out.push(c);
            continue;
        }
        let d = text.get(i).copied().unwrap_or(0);
        i += 1;
        match d {
            ESC => out.push(ESC),
            b'0' => out.extend_from_slice(&st.src[s..e]),
            b'1'..=b'9' => match st.capture(usize::from(d - b'1'), s, e)? {
                Capture::Text(a, b) => out.extend_from_slice(&st.src[a..b]),
                Capture::Position(n) => out.extend_from_slice(n.to_string().as_bytes()),
            },
            _ => return Err(PatternError::Replacement),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::{LuaOptions, StdLib};

    /// A VM with Lua's C functions as `string.*` and these as `r.*`, metering off.
    fn vm() -> Lua {
        let lua = Lua::new_with(StdLib::STRING | StdLib::TABLE, LuaOptions::new())
            .unwrap_or_else(|e| panic!("vm: {e}"));
        let [find, m, gmatch, gsub] =
            functions(&lua, |_| Ok(())).unwrap_or_else(|e| panic!("functions: {e}"));
        let r = lua.create_table().unwrap_or_else(|e| panic!("{e}"));
        for (name, f) in [
            ("find", find),
            ("match", m),
            ("gmatch", gmatch),
            ("gsub", gsub),
        ] {
            r.set(name, f).unwrap_or_else(|e| panic!("{e}"));
        }
        lua.globals().set("r", r).unwrap_or_else(|e| panic!("{e}"));
        lua
    }

    /// Lua that runs one call both ways and returns a description of any difference.
    const COMPARE: &str = r#"
local function norm(ok, ...)
  local t = table.pack(...)
  if not ok then
    local e = tostring(t[1]):match("^[^\n]*"):gsub("^runtime error: ", "")
    return "error: " .. e
  end
  local parts = {}
  for i = 1, t.n do parts[i] = type(t[i]) .. ":" .. tostring(t[i]) end
  return table.concat(parts, "|")
end
local function all(it_ok, it)
  if not it_ok then return norm(false, it) end
  local out = {}
  for _ = 1, 100 do
    local res = table.pack(pcall(it))
    local text = norm(table.unpack(res, 1, res.n))
    out[#out + 1] = text
    if text == "" or text:sub(1, 6) == "error:" or res[2] == nil then break end
  end
  return table.concat(out, " ; ")
end
return function(kind, s, p, a, b)
  local c, rr
  if kind == "gmatch" then
    c = all(pcall(string.gmatch, s, p, a))
    rr = all(pcall(r.gmatch, s, p, a))
  else
    c = norm(pcall(string[kind], s, p, a, b))
    rr = norm(pcall(r[kind], s, p, a, b))
  end
  if c ~= rr then
    return string.format("%s(%q, %q, %s, %s): C %s, Rust %s", kind, s, p, tostring(a), tostring(b), c, rr)
  end
  return nil
end
"#;

    fn compare(lua: &Lua) -> Function {
        lua.load(COMPARE)
            .eval()
            .unwrap_or_else(|e| panic!("compare: {e}"))
    }

    fn check(f: &Function, kind: &str, s: &str, p: &str, a: Value, b: Value) {
        let diff: Option<String> = f
            .call((kind, s, p, a, b))
            .unwrap_or_else(|e| panic!("call: {e}"));
        if let Some(d) = diff {
            panic!("{d}");
        }
    }

    #[test]
    fn the_port_agrees_with_lua_on_known_cases() {
        let lua = vm();
        let f = compare(&lua);
        let subjects = [
            "",
            "hello world",
            "  trim me  ",
            "key=value; other = 2",
            "f(a(b)c) [x] 123abc",
            "THE (quick) fox",
            "aaa",
            "a.b-c+d*e?f",
            "line1\nline2\r\n",
            "\x00\x01binary\x7f",
        ];
        let patterns = [
            "",
            "o",
            "l+",
            "l*",
            "l-",
            "l?",
            "^h",
            "d$",
            "^$",
            ".",
            "%a+",
            "%A+",
            "%d+",
            "%s*",
            "%w+",
            "%p",
            "%x+",
            "%u",
            "%l+",
            "%c",
            "%g+",
            "[aeiou]",
            "[^aeiou ]+",
            "[a-f]+",
            "[%w_]+",
            "[]]",
            "[^]]",
            "[a-]",
            "(%w+)=(%w+)",
            "(%w+)%s*=%s*(%w+)",
            "()ll()",
            "(h)(e)(l)",
            "%b()",
            "%b[]",
            "%f[%w]%w+",
            "%f[%W]",
            "(a*(.)%w(%s*))",
            "(l)%1",
            "^%s*(.-)%s*$",
            "(.-)",
            ".-",
            "a-b",
            "(%d)(%d)%2",
            "[%a-]+",
            "%.",
            "%%",
            "[",
            "[a",
            "%",
            "(",
            ")",
            "%1",
            "(()",
            "%b",
            "%f",
            "%fx",
            "(.)%0",
            "^(a+)$",
            "x*$",
            "$",
            "^",
            "a+?",
            "[%]]",
            "[^%s%d]+",
        ];
        for s in subjects {
            for p in patterns {
                for init in [
                    Value::Nil,
                    Value::Integer(2),
                    Value::Integer(-3),
                    Value::Integer(50),
                ] {
                    check(&f, "find", s, p, init.clone(), Value::Nil);
                    check(&f, "match", s, p, init.clone(), Value::Nil);
                    check(&f, "gmatch", s, p, init.clone(), Value::Nil);
                }
                check(&f, "find", s, p, Value::Integer(1), Value::Boolean(true));
                let repl = lua
                    .create_string("<%0|%1>")
                    .unwrap_or_else(|e| panic!("{e}"));
                check(&f, "gsub", s, p, Value::String(repl), Value::Nil);
                let repl = lua.create_string("[%%]").unwrap_or_else(|e| panic!("{e}"));
                check(&f, "gsub", s, p, Value::String(repl), Value::Integer(2));
                let upper: Function = lua
                    .load("function(a, b) if a == 'l' then return nil end return '{' .. tostring(a) .. tostring(b) .. '}' end")
                    .eval()
                    .unwrap_or_else(|e| panic!("{e}"));
                check(&f, "gsub", s, p, Value::Function(upper), Value::Nil);
                let table: mlua::Table = lua
                    .load("{ l = 'L', hello = 1.5, o = false, [2] = 'two' }")
                    .eval()
                    .unwrap_or_else(|e| panic!("{e}"));
                check(&f, "gsub", s, p, Value::Table(table), Value::Nil);
            }
        }
    }

    #[test]
    fn the_port_agrees_with_lua_on_generated_cases() {
        let lua = vm();
        let f = compare(&lua);
        let pattern_atoms: &[&str] = &[
            "a", "b", ".", "%a", "%d", "%s", "[ab]", "[^a]", "(", ")", "()", "*", "+", "-", "?",
            "^", "$", "%b()", "%f[a]", "%1", "%", "[",
        ];
        let subject_atoms: &[&str] = &["a", "b", "1", " ", "(", ")", "ab", "x"];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..4000 {
            let p: String = (0..next(6) + 1)
                .map(|_| pattern_atoms[next(pattern_atoms.len())])
                .collect();
            let s: String = (0..next(10))
                .map(|_| subject_atoms[next(subject_atoms.len())])
                .collect();
            for kind in ["find", "match", "gmatch"] {
                check(&f, kind, &s, &p, Value::Nil, Value::Nil);
            }
            let repl = lua.create_string("<%0>").unwrap_or_else(|e| panic!("{e}"));
            check(&f, "gsub", &s, &p, Value::String(repl), Value::Nil);
        }
    }

    #[test]
    fn a_backtracking_pattern_is_stopped_by_its_charge() {
        let s = "a".repeat(3000);
        let p = format!("{}b", "a*".repeat(12));
        let mut paid = 0u64;
        let mut charge = |n: u64| {
            paid += n;
            if paid > 5_000_000 {
                Err("instruction budget exceeded".to_owned())
            } else {
                Ok(())
            }
        };
        let res = find(s.as_bytes(), p.as_bytes(), 1, false, true, &mut charge);
        assert_eq!(
            res,
            Err(PatternError::Budget("instruction budget exceeded".into()))
        );
        // A linear one over a large subject is cheap.
        let big = "x ".repeat(100_000);
        let mut paid = 0u64;
        let mut count = |n: u64| {
            paid += n;
            Ok(())
        };
        let res = find(big.as_bytes(), b"%s+$", 1, false, true, &mut count);
        assert_eq!(res.map(|f| f.map(|f| f.start)), Ok(Some(199_999)));
        assert!(paid < 2_000_000, "paid {paid}");
    }

    /// A pattern that starts with a literal byte is looked for where that byte is:
    /// an escaped URL over a 1 MiB body costs a fraction of the default budget (one
    /// step per position cost more than all of it).
    #[test]
    fn a_pattern_with_a_literal_start_skips_to_candidates() {
        let mut body = "x".repeat(1 << 20);
        body.push_str("http://app.internal:8000/");
        for (p, start) in [
            (&b"http://app%.internal:8000"[..], Some(1 << 20)),
            (b"%.internal", Some((1 << 20) + 10)),
            (b"h+ttp", Some(1 << 20)),
            (b"zz", None),
        ] {
            let mut paid = 0u64;
            let mut count = |n: u64| {
                paid += n;
                Ok(())
            };
            let res = find(body.as_bytes(), p, 1, false, true, &mut count);
            assert_eq!(res.map(|f| f.map(|f| f.start)), Ok(start));
            assert!(paid < 50_000, "{}: paid {paid}", String::from_utf8_lossy(p));
        }
    }
}
