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
