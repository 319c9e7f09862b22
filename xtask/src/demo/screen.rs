//! The demo's terminal output: a frame (the live table) redrawn in place on a terminal, and
//! narration lines printed above it. When stdout is not a terminal every frame is printed in
//! turn, so a log of the run reads top to bottom.

use std::io::{IsTerminal, Write};

use anyhow::Result;

pub struct Screen {
    live: bool,
    /// The frame on screen (live mode), to redraw below a narration line.
    frame: String,
}

impl Screen {
    pub fn new() -> Self {
        Self {
            live: std::io::stdout().is_terminal(),
            frame: String::new(),
        }
    }

    /// Shows `text` as the current frame: in place of the previous one on a terminal, else
    /// printed after it with a blank line between.
    pub fn frame(&mut self, text: &str) -> Result<()> {
        let mut out = std::io::stdout().lock();
        if self.live {
            self.erase(&mut out)?;
            write!(out, "{text}")?;
            self.frame = text.to_string();
        } else {
            writeln!(out, "{text}")?;
        }
        out.flush()?;
        Ok(())
    }

    /// Prints `line` above the current frame.
    pub fn say(&mut self, line: &str) -> Result<()> {
        let mut out = std::io::stdout().lock();
        if self.live {
            self.erase(&mut out)?;
            writeln!(out, "{line}")?;
            write!(out, "{}", self.frame)?;
        } else {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        Ok(())
    }

    /// Leaves the current frame on screen for good: what is printed next goes below it,
    /// after a blank line (as after every frame when not live).
    pub fn keep(&mut self) {
        if self.live && !self.frame.is_empty() {
            println!();
        }
        self.frame.clear();
    }

    fn erase(&self, out: &mut impl Write) -> Result<()> {
        let lines = self.frame.lines().count();
        if lines > 0 {
            // Back to the frame's first line, then clear to the end of the screen.
            write!(out, "\x1b[{lines}F\x1b[J")?;
        }
        Ok(())
    }
}
