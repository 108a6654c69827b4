//! A real pseudo-terminal for the terminal UIs' tests: keys go in as
//! bytes, the screen comes back through a VT100 parser. No tmux needed.
#![allow(dead_code)]

use portable_pty::{native_pty_system, Child, CommandBuilder, PtySize};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const COLS: u16 = 110;

pub struct Term {
    pub child: Box<dyn Child + Send + Sync>,
    writer: Box<dyn Write + Send>,
    screen: Arc<Mutex<vt100::Parser>>,
}

impl Term {
    pub fn start(dir: &Path, args: &[&str]) -> Term {
        let pair = native_pty_system().openpty(PtySize { rows: 30, cols: COLS, pixel_width: 0, pixel_height: 0 }).unwrap();
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_tunegate"));
        cmd.args(args);
        cmd.cwd(dir);
        cmd.env("TERM", "xterm-256color");
        let child = pair.slave.spawn_command(cmd).unwrap();
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().unwrap();
        let writer = pair.master.take_writer().unwrap();
        let screen = Arc::new(Mutex::new(vt100::Parser::new(30, COLS, 0)));
        let s = screen.clone();
        std::thread::spawn(move || {
            let _keep = pair.master;
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().process(&buf[..n]);
            }
        });
        Term { child, writer, screen }
    }

    pub fn contents(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    /// Waits until the screen shows every one of `texts`.
    pub fn wait_for(&self, texts: &[&str]) {
        let t0 = Instant::now();
        loop {
            let c = self.contents();
            if texts.iter().all(|t| c.contains(t)) {
                return;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "the screen never showed {texts:?}:\n{c}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn keys(&mut self, s: &str) {
        self.writer.write_all(s.as_bytes()).unwrap();
        self.writer.flush().unwrap();
    }

    pub fn wait_exit(&mut self) {
        let t0 = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(t0.elapsed() < Duration::from_secs(20), "tunegate label did not exit:\n{}", self.contents());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

