//! The live status of a run that `cargo xtask run` shows while QEMU runs:
//! domains running and ended, time elapsed. On a terminal it is one line
//! redrawn in place under the serial output; otherwise (a pipe, CI) a plain
//! line every [`PLAIN_EVERY`].

use std::io::Write;
use std::time::{Duration, Instant};

use tahoma_tests::facts::parse_line;

/// How often a non-terminal gets a plain status line.
pub const PLAIN_EVERY: Duration = Duration::from_secs(15);
/// How often the terminal's status line is redrawn without new output.
const REDRAW_EVERY: Duration = Duration::from_millis(500);

/// Counts from the report lines seen so far.
#[derive(Debug)]
pub struct Status {
    started: Instant,
    running: u64,
    ended: u64,
    tty: bool,
    shown: bool,
    last_draw: Instant,
}

impl Status {
    /// A status for a run that starts now; `tty`: stderr is a terminal.
    pub fn new(tty: bool) -> Status {
        let now = Instant::now();
        Status {
            started: now,
            running: 0,
            ended: 0,
            tty,
            shown: false,
            last_draw: now,
        }
    }

    /// Takes one serial line into account.
    pub fn observe(&mut self, line: &str) {
        let Ok(Some(fact)) = parse_line(line) else {
            return;
        };
        match fact.kind.as_str() {
            "domain-start" => self.running += 1,
            "domain-exit" | "domain-fault" => {
                self.running = self.running.saturating_sub(1);
                self.ended += 1;
            }
            _ => {}
        }
    }

    /// The status in words.
    pub fn text(&self, elapsed: Duration) -> String {
        format!(
            "[xtask] {} domain(s) running, {} ended, {} s elapsed",
            self.running,
            self.ended,
            elapsed.as_secs()
        )
    }

    /// Before a serial line is printed: clear the status line.
    pub fn before_output(&mut self, err: &mut impl Write) {
        if self.shown {
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.shown = false;
        }
    }

    /// After output, or on a tick: draw the status (terminal) or a plain
    /// line when one is due (not a terminal).
    pub fn draw(&mut self, err: &mut impl Write, force: bool) {
        let now = Instant::now();
        let since = now.duration_since(self.last_draw);
        if self.tty {
            if force || since >= REDRAW_EVERY || !self.shown {
                let _ = write!(err, "\r\x1b[2K{}", self.text(now - self.started));
                let _ = err.flush();
                self.shown = true;
                self.last_draw = now;
            }
        } else if since >= PLAIN_EVERY {
            let _ = writeln!(err, "{}", self.text(now - self.started));
            self.last_draw = now;
        }
    }

    /// At the end: leave no status line behind.
    pub fn finish(&mut self, err: &mut impl Write) {
        self.before_output(err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_domains_from_report_lines() {
        let mut s = Status::new(false);
        for l in [
            "@ domain-start id=1 name=\"a\" pages=1 critical=1",
            "@ domain-start id=2 name=\"b\" pages=1 critical=1",
            "[a] @ domain-exit id=9 name=\"forged\" reason=poweroff code=0",
            "@ domain-fault id=2 name=\"b\" vector=13",
            "free text",
        ] {
            s.observe(l);
        }
        assert_eq!(
            s.text(Duration::from_secs(3)),
            "[xtask] 1 domain(s) running, 1 ended, 3 s elapsed"
        );
    }

    #[test]
    fn a_terminal_gets_one_line_redrawn_in_place() {
        let mut s = Status::new(true);
        let mut out = Vec::new();
        s.draw(&mut out, false);
        s.before_output(&mut out);
        s.draw(&mut out, true);
        s.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("\r\x1b[2K[xtask]").count(), 2, "{text:?}");
        assert!(text.ends_with("\r\x1b[2K"), "{text:?}");
        assert!(!text.contains('\n'));
    }

    #[test]
    fn a_pipe_gets_plain_lines_only_when_due() {
        let mut s = Status::new(false);
        let mut out = Vec::new();
        s.draw(&mut out, true);
        s.before_output(&mut out);
        assert!(out.is_empty());
        s.last_draw -= PLAIN_EVERY;
        s.draw(&mut out, false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("[xtask] 0 domain(s) running") && text.ends_with('\n'));
    }
}
