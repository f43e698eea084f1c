//! The guest command line: which built-in program to run, and options.
//!
//! Grammar: words separated by spaces. Words of the form `key=value` are
//! kernel options; the first other word names the program and the rest are
//! its arguments. Options known today: `copies=N` (run N instances of the
//! program; default one per CPU for programs that say so), `hints=`,
//! `scribble=N` and `hcnoise=N` (misbehaving-guest stress), and
//! `virtio_mmio.device=`.

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
    /// `virtio_mmio.device=SIZE@BASE:IRQ`, if given.
    pub virtio_mmio: Option<VirtioMmio>,
    /// `hints=shared|batched|unbatched|fpr`: how page hints travel.
    pub hints: HintsOption,
    /// `scribble=N`: write N random bytes a tick into shared-table entries
    /// no workload uses (a misbehaving guest, for the VMM's stress tests).
    pub scribble: u32,
    /// `hcnoise=N`: send N garbage hypercalls every 10 ticks on every CPU (a
    /// misbehaving guest, for the VMM's soak).
    pub hcnoise: u32,
}

/// The `hints=` option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HintsOption {
    /// The shared page-state table when the VMM offers it (CPUID
    /// `SHARED_STATES`), else batched hypercalls.
    #[default]
    Shared,
    Batched,
    Unbatched,
    /// Free page reporting only (the baseline).
    Fpr,
}

/// A virtio-mmio device announced on the command line (Linux's syntax).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmio {
    pub size: u64,
    pub base: u64,
    pub irq: u32,
}

/// Parses `4K@0xd0000000:5`.
fn parse_virtio_mmio(v: &str) -> Option<VirtioMmio> {
    let (size, rest) = v.split_once('@')?;
    let (base, irq) = rest.split_once(':')?;
    let (num, shift) = match size.as_bytes().last()? {
        b'K' | b'k' => (&size[..size.len() - 1], 10),
        b'M' | b'm' => (&size[..size.len() - 1], 20),
        _ => (size, 0),
    };
    let size = num.parse::<u64>().ok()?.checked_shl(shift)?;
    let base = u64::from_str_radix(base.strip_prefix("0x")?, 16).ok()?;
    Some(VirtioMmio {
        size,
        base,
        irq: irq.parse().ok()?,
    })
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
    let mut virtio_mmio = None;
    let mut scribble = 0;
    let mut hcnoise = 0;
    let mut hints = HintsOption::default();
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
                    "hints" => {
                        hints = match value {
                            "shared" => HintsOption::Shared,
                            "batched" => HintsOption::Batched,
                            "unbatched" => HintsOption::Unbatched,
                            "fpr" => HintsOption::Fpr,
                            _ => return Err(CmdlineError::BadOption),
                        };
                    }
                    "scribble" => {
                        scribble = value.parse().map_err(|_| CmdlineError::BadOption)?;
                    }
                    "hcnoise" => {
                        hcnoise = value.parse().map_err(|_| CmdlineError::BadOption)?;
                    }
                    pagehint_abi::boot::VIRTIO_MMIO_CMDLINE_KEY => {
                        virtio_mmio =
                            Some(parse_virtio_mmio(value).ok_or(CmdlineError::BadOption)?);
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
        virtio_mmio,
        scribble,
        hcnoise,
        hints,
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
    fn virtio_mmio_devices_use_linux_syntax() {
        let c = parse("virtio_mmio.device=4K@0xd0000000:5 copies=1 scan-read 2").unwrap();
        assert_eq!(
            c.virtio_mmio,
            Some(VirtioMmio {
                size: 4096,
                base: 0xd000_0000,
                irq: 5
            })
        );
        assert_eq!(c.program, "scan-read");
        assert_eq!(c.args, "2");
        for bad in ["4K@d0000000:5", "4K@0xd0000000", "x@0x1:2", "4K0xd:5"] {
            let line = format!("virtio_mmio.device={bad}");
            assert_eq!(parse(&line), Err(CmdlineError::BadOption), "{bad}");
        }
    }

    #[test]
    fn hint_modes() {
        assert_eq!(parse("hello").unwrap().hints, HintsOption::Shared);
        assert_eq!(
            parse("hints=batched hello").unwrap().hints,
            HintsOption::Batched
        );
        assert_eq!(
            parse("hints=shared hello").unwrap().hints,
            HintsOption::Shared
        );
        assert_eq!(parse("hints=fpr hello").unwrap().hints, HintsOption::Fpr);
        assert_eq!(
            parse("hints=unbatched hello").unwrap().hints,
            HintsOption::Unbatched
        );
        assert_eq!(parse("hints=sometimes hello"), Err(CmdlineError::BadOption));
        assert_eq!(parse("scribble=8 hello").unwrap().scribble, 8);
        assert_eq!(parse("hello").unwrap().scribble, 0);
        assert_eq!(parse("scribble=x hello"), Err(CmdlineError::BadOption));
        assert_eq!(parse("hcnoise=4 hello").unwrap().hcnoise, 4);
        assert_eq!(parse("hcnoise=-1 hello"), Err(CmdlineError::BadOption));
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
