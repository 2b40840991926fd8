//! Standard output without panics. `println!` panics when stdout cannot be written (a full
//! disk, a closed terminal): the command's `out!`/`outln!` say so on stderr and exit 1 instead.
//! A reader that went away (`| head`) never gets here: SIGPIPE ends the process first, quietly,
//! as it does any Unix tool (`main` restores its default action).

use std::io::Write;

/// Write to stdout, or end the command with a message saying why it could not.
pub fn write(args: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    // Flushed at once: an error left in the buffer would be lost at exit, unreported.
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        drop(out);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            // Stderr may be as broken as stdout: then there is nobody to tell.
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot write to standard output: {e}"
            );
        }
        std::process::exit(1);
    }
}

/// Write to stdout if it can be written, else log why: for a running service, whose work
/// does not depend on anyone reading what it prints.
pub fn best_effort(args: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        tracing::warn!("cannot write to standard output: {e}");
    }
}
