//! The log's way to standard error: lines are queued (at most [`QUEUE_LINES`]) and written by a
//! thread of their own, so no thread that logs (a worker, a control source) ever waits on the
//! reader of standard error. A pipe nobody reads (a stuck log shipper, `| sleep`) fills and its
//! writes block: the writer thread waits there, the queue fills, and further lines are dropped
//! and counted (`log_lines_dropped`) while forwarding goes on. A pipe whose reader went away
//! (`EPIPE`) makes writes fail: the lines are dropped and counted likewise, never a panic.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

/// Lines held for the writer thread before new ones are dropped.
pub const QUEUE_LINES: usize = 4096;

/// What the writer thread is given.
enum Item {
    /// One formatted line (or several, as one event wrote them).
    Line(Vec<u8>),
    /// Answer on the channel once everything before it is written.
    Flush(SyncSender<()>),
}

/// The queue's sending side, once [`writer`] made it (`None`: no writer thread).
static QUEUE: OnceLock<Option<SyncSender<Item>>> = OnceLock::new();

/// CAP_SETGID (bit 6) and CAP_SETUID (bit 7), include/uapi/linux/capability.h.
const SETID_CAPS: u32 = (1 << 7) | (1 << 6);

/// Set once the node's privileges are settled: the writer thread then drops its last
/// capabilities.
static SETTLED: AtomicBool = AtomicBool::new(false);

/// Tells the writer thread that the node's privileges are settled (capabilities dropped or
/// the user switched), so it drops the capabilities it kept for that (at its next line, or
/// within 200 ms).
pub fn privileges_settled() {
    SETTLED.store(true, Ordering::Release);
}

/// Lines dropped: the queue was full, or writing them failed.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Returns how many log lines were dropped since start.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Starts the writer thread (once; later calls do nothing) and returns the writer to give
/// `tracing_subscriber`. Without the thread (it could not be spawned) lines go to standard
/// error directly, as before.
pub fn writer() -> QueuedStderr {
    QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_LINES);
        let spawned = std::thread::Builder::new()
            .name("fustian-log".into())
            .spawn(move || {
                // Capabilities are per thread, and this one starts before the node drops its
                // own: it keeps only CAP_SETUID and CAP_SETGID (glibc runs a switch to
                // `--user` on every thread and fails it when one thread is refused), and
                // those until the node's privileges are settled. The ways back to the others
                // go first, while CAP_SETPCAP is still there to take them.
                let _ = crate::sys::restrict_calling_thread(crate::sys::Keep::Sets);
                let _ = crate::sys::keep_only_capabilities(SETID_CAPS);
                write_lines(&rx, &mut std::io::stderr());
            });
        spawned.ok().map(|_| tx)
    });
    QueuedStderr
}

/// Writes the queued lines to `out` until every sender is gone; a failed write drops the line.
/// Returns how many it dropped.
fn write_lines(rx: &Receiver<Item>, out: &mut impl Write) -> u64 {
    let mut dropped = 0;
    let mut settled = false;
    loop {
        if !settled && SETTLED.load(Ordering::Acquire) {
            settled = true;
            let _ = crate::sys::drop_capabilities();
        }
        let item = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        match item {
            Item::Line(line) => {
                if out.write_all(&line).is_err() {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                    dropped += 1;
                }
            }
            Item::Flush(done) => {
                let _ = out.flush();
                let _ = done.try_send(());
            }
        }
    }
    dropped
}

/// Queues `text` and a newline as one line of the log (written directly when there is no
/// writer thread): for the last words of a process, which must not wait on standard error
/// either.
pub fn line(text: &str) {
    let mut line = QueuedLine(sender());
    let _ = line.write(format!("{text}\n").as_bytes());
}

/// Waits up to `limit` for the lines queued so far to be written (at exit, so the last lines
/// are not lost), never longer: a standard error nobody reads must not hold the exit.
pub fn flush(limit: Duration) {
    let Some(tx) = sender() else { return };
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
    if tx.try_send(Item::Flush(done_tx)).is_ok() {
        let _ = done_rx.recv_timeout(limit);
    }
}

/// Sends a panic's message to the log instead of to standard error directly, where a pipe
/// nobody reads would hold the panicking thread (and with it the node's notice that the
/// thread ended).
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let text = crate::sys::one_line(&info.to_string()).into_owned();
        tracing::error!("thread {name} panicked: {text}");
    }));
}

fn sender() -> Option<SyncSender<Item>> {
    QUEUE.get().and_then(Clone::clone)
}

/// The `MakeWriter` of [`writer`]: each event's text goes into the queue whole, or is dropped.
#[derive(Debug, Clone, Copy)]
pub struct QueuedStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for QueuedStderr {
    type Writer = QueuedLine;

    fn make_writer(&'a self) -> Self::Writer {
        QueuedLine(sender())
    }
}

/// One event's writer.
#[derive(Debug)]
pub struct QueuedLine(Option<SyncSender<Item>>);

impl Write for QueuedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &self.0 {
            Some(tx) => match tx.try_send(Item::Line(buf.to_vec())) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
            },
            None => {
                if std::io::stderr().write_all(buf).is_err() {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Item, write_lines};
    use std::io::Write;

    /// A writer that fails every write, as a pipe whose reader is gone.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(libc::EPIPE))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::from_raw_os_error(libc::EPIPE))
        }
    }

    #[test]
    fn lines_are_written_in_order_and_a_flush_is_answered_after_them() {
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        tx.send(Item::Line(b"one\n".to_vec())).unwrap();
        tx.send(Item::Line(b"two\n".to_vec())).unwrap();
        tx.send(Item::Flush(done_tx)).unwrap();
        drop(tx);
        let mut out = Vec::new();
        write_lines(&rx, &mut out);
        assert_eq!(out, b"one\ntwo\n");
        assert!(done_rx.try_recv().is_ok());
    }

    #[test]
    fn a_broken_pipe_drops_lines_without_a_panic() {
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        tx.send(Item::Line(b"lost\n".to_vec())).unwrap();
        tx.send(Item::Line(b"lost too\n".to_vec())).unwrap();
        drop(tx);
        assert_eq!(write_lines(&rx, &mut Broken), 2);
    }

    #[test]
    fn a_full_queue_drops_lines_without_waiting() {
        let (tx, _rx) = std::sync::mpsc::sync_channel(1);
        let mut line = super::QueuedLine(Some(tx));
        let before = super::dropped();
        // Nobody reads: the first line fills the queue, the rest are dropped at once.
        for _ in 0..3 {
            assert_eq!(line.write(b"x\n").unwrap(), 2);
        }
        assert!(super::dropped() >= before + 2);
    }
}
