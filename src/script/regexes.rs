//! Regexes written in modules (`~` and `std.url_rewrite` patterns): compiled once
//! when a generation loads, and bounded in memory, each and all of a generation's
//! together, so that a module within the line and size limits cannot exhaust the
//! process. A repeated Unicode class such as `\w{1,30}` compiles to megabytes; a
//! thousand of them, to gigabytes.

use regex::{Regex, RegexBuilder};

/// Most memory one compiled regex may take.
pub const PER_REGEX: usize = 1 << 20;
/// Most memory the regexes of one generation's modules may take together.
pub const PER_GENERATION: usize = 64 << 20;
/// Most memory one regex's lazy DFA may use per thread while matching.
const DFA_CACHE: usize = 1 << 20;

/// What is left of a generation's regex memory.
#[derive(Debug)]
pub struct Budget {
    left: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            left: PER_GENERATION,
        }
    }
}

/// Why a pattern was refused: the message and a hint for the diagnostic.
pub struct Refused {
    pub message: String,
    pub hint: &'static str,
    /// Refused only because the generation's budget is spent.
    pub over_budget: bool,
}

/// Compiles `pattern`, charging the memory it takes to `budget`.
pub fn compile(pattern: &str, budget: &mut Budget) -> Result<Regex, Refused> {
    let limit = PER_REGEX.min(budget.left);
    let re = RegexBuilder::new(pattern)
        .size_limit(limit)
        .dfa_size_limit(DFA_CACHE)
        .build()
        .map_err(|e| refused(&e, limit))?;
    // `regex` does not say how big a compiled regex is; its engine does. The same
    // pattern built there (same defaults) gives the figure, then goes.
    let used = regex_automata::meta::Regex::builder()
        .configure(regex_automata::meta::Config::new().nfa_size_limit(Some(limit)))
        .build(pattern)
        .map(|m| m.memory_usage())
        .unwrap_or(limit);
    budget.left = budget.left.saturating_sub(used);
    Ok(re)
}

fn refused(e: &regex::Error, limit: usize) -> Refused {
    match e {
        regex::Error::CompiledTooBig(_) if limit < PER_REGEX => Refused {
            message: format!(
                "the regexes of the modules take more than {} MiB together",
                PER_GENERATION >> 20
            ),
            hint: "use fewer or smaller regexes (prefix checks such as starts_with cost nothing)",
            over_budget: true,
        },
        regex::Error::CompiledTooBig(_) => Refused {
            message: format!(
                "the regex compiles to more than {} MiB",
                PER_REGEX >> 20
            ),
            hint: "a repeated Unicode class is large: use an ASCII one, e.g. [A-Za-z0-9_] or (?-u:\\w) for \\w",
            over_budget: false,
        },
        other => {
            let msg = other.to_string();
            let last = msg.lines().last().unwrap_or("").trim();
            Refused {
                message: format!(
                    "invalid regex: {}",
                    last.strip_prefix("error: ").unwrap_or(last)
                ),
                hint: "regex syntax: https://docs.rs/regex/#syntax",
                over_budget: false,
            }
        }
    }
}

/// A group a replacement (`$1`, `${name}`, as the regex crate expands them) names
/// that `re` does not have: the regex crate puts nothing there, silently. Returns what
/// the replacement names and a hint.
pub fn missing_group(re: &Regex, replacement: &str) -> Option<(String, String)> {
    let bytes = replacement.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        i += 1;
        let (name, braced) = match bytes.get(i) {
            Some(b'$') => {
                i += 1;
                continue;
            }
            Some(b'{') => match replacement[i + 1..].find('}') {
                Some(len) => {
                    let name = &replacement[i + 1..i + 1 + len];
                    i += len + 2;
                    (name, true)
                }
                // No `}`: the regex crate writes the `$` as it is.
                None => continue,
            },
            _ => {
                let len = bytes[i..]
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                    .count();
                let name = &replacement[i..i + len];
                i += len;
                (name, false)
            }
        };
        if name.is_empty() && !braced {
            continue;
        }
        let exists = match name.parse::<usize>() {
            Ok(n) => n < re.captures_len(),
            Err(_) => re.capture_names().flatten().any(|n| n == name),
        };
        if exists {
            continue;
        }
        let digits = name.bytes().take_while(u8::is_ascii_digit).count();
        let hint = if !braced && digits > 0 && digits < name.len() {
            format!(
                "`${name}` reads as one group name: write `${{{}}}{}` for group {} followed by `{}`",
                &name[..digits],
                &name[digits..],
                &name[..digits],
                &name[digits..]
            )
        } else {
            let mut groups: Vec<String> = (0..re.captures_len()).map(|n| n.to_string()).collect();
            groups.extend(re.capture_names().flatten().map(str::to_owned));
            format!("the pattern's groups: {}", groups.join(", "))
        };
        return Some((name.to_owned(), hint));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_regexes_compile_and_are_charged() {
        let mut b = Budget::default();
        let re = compile("^/a(b|c)+$", &mut b).unwrap_or_else(|r| panic!("{}", r.message));
        assert!(re.is_match("/abcb"));
        assert!(b.left < PER_GENERATION);
    }

    #[test]
    fn a_large_unicode_repetition_is_refused_with_a_hint() {
        let mut b = Budget::default();
        let Err(r) = compile(r"^\w{1,30}x\w{1,30}$", &mut b) else {
            panic!("compiled");
        };
        assert!(r.message.contains("more than 1 MiB"), "{}", r.message);
        assert!(r.hint.contains("(?-u:\\w)"));
        assert!(compile(r"^(?-u:\w){1,30}x$", &mut b).is_ok());
    }

    #[test]
    fn the_generation_budget_runs_out() {
        let mut b = Budget::default();
        let mut refused = None;
        for i in 0..1000 {
            if let Err(r) = compile(&format!(r"^\w{{1,10}}{i}$"), &mut b) {
                refused = Some(r.message);
                break;
            }
        }
        let message = refused.unwrap_or_else(|| panic!("never refused"));
        assert!(message.contains("together"), "{message}");
    }

    #[test]
    fn syntax_errors_keep_their_words() {
        let Err(r) = compile("(", &mut Budget::default()) else {
            panic!("compiled");
        };
        assert!(r.message.starts_with("invalid regex: "), "{}", r.message);
    }
}
