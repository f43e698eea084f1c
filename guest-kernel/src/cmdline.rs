//! The guest command line: which built-in program to run, and options.
//!
//! Grammar: words separated by spaces. Words of the form `key=value` are
//! kernel options; the first other word names the program and the rest are
//! its arguments. Options known today: `copies=N` (run N instances of the
//! program; default one per CPU for programs that say so).

/// Longest argument string passed to a program.
pub const MAX_ARGS: usize = 256;

/// A parsed command line, borrowing from the original text.
#[derive(Debug, PartialEq, Eq)]
pub struct Cmdline<'a> {
    /// The program name (`"hello"` when the line names none).
    pub program: &'a str,
    /// The words after the program name, as one string.
    pub args: &'a str,
    /// `copies=N`, if given.
    pub copies: Option<u32>,
}

/// Why a command line was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdlineError {
    BadOption,
    TooLong,
}

/// The program run when the command line names none.
pub const DEFAULT_PROGRAM: &str = "hello";

/// Parses `text`.
pub fn parse(text: &str) -> Result<Cmdline<'_>, CmdlineError> {
    let mut program = None;
    let mut copies = None;
    let mut args = "";
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (word, tail) = match rest.find(' ') {
            Some(i) => (&rest[..i], rest[i..].trim_start()),
            None => (rest, ""),
        };
        if program.is_none() {
            if let Some((key, value)) = word.split_once('=') {
                match key {
                    "copies" => {
                        let n: u32 = value.parse().map_err(|_| CmdlineError::BadOption)?;
                        if n == 0 || n > 64 {
                            return Err(CmdlineError::BadOption);
                        }
                        copies = Some(n);
                    }
                    _ => return Err(CmdlineError::BadOption),
                }
            } else {
                program = Some(word);
                args = tail;
                break;
            }
        }
        rest = tail;
    }
    if args.len() > MAX_ARGS {
        return Err(CmdlineError::TooLong);
    }
    Ok(Cmdline {
        program: program.unwrap_or(DEFAULT_PROGRAM),
        args,
        copies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_line_runs_the_default_program() {
        let c = parse("  ").unwrap();
        assert_eq!(c.program, "hello");
        assert_eq!(c.args, "");
        assert_eq!(c.copies, None);
    }

    #[test]
    fn options_come_before_the_program() {
        let c = parse("copies=3 spin 100 200").unwrap();
        assert_eq!(c.program, "spin");
        assert_eq!(c.args, "100 200");
        assert_eq!(c.copies, Some(3));
        // After the program name, `=` is an argument like any other.
        assert_eq!(parse("echo a=b").unwrap().args, "a=b");
    }

    #[test]
    fn bad_options_are_refused() {
        assert_eq!(parse("copies=0 hello"), Err(CmdlineError::BadOption));
        assert_eq!(parse("copies=x"), Err(CmdlineError::BadOption));
        assert_eq!(parse("colour=red hello"), Err(CmdlineError::BadOption));
        let long = "x ".repeat(200);
        assert_eq!(parse(&long), Err(CmdlineError::TooLong));
    }
}
