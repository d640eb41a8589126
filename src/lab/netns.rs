//! Network namespaces, veth links and processes for the lab and the netns tests.
//!
//! Every namespace, link and process made here is owned by a guard that removes it on `Drop`,
//! also while unwinding from a panic, so a failed run leaves nothing behind. Links are created
//! directly inside their namespaces (`ip link add ... netns A type veth peer ... netns B`), so
//! no name is ever taken in the caller's namespace. Setup uses iproute2's `ip`.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::Error;

/// Runs `ip` with `args`; fails with its stderr.
///
/// # Errors
///
/// [`Error::Lab`] naming the command, or saying that iproute2 is missing.
pub fn ip(args: &[&str]) -> Result<(), Error> {
    run_tool("ip", args)
}

/// Runs iproute2's `bridge` with `args`; fails with its stderr.
///
/// # Errors
///
/// [`Error::Lab`] naming the command, or saying that iproute2 is missing.
pub fn bridge(args: &[&str]) -> Result<(), Error> {
    run_tool("bridge", args)
}

fn run_tool(tool: &str, args: &[&str]) -> Result<(), Error> {
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::Lab(format!(
                    "the `{tool}` command is missing: install iproute2 (apt-get install iproute2)"
                ))
            } else {
                Error::Lab(format!("cannot run {tool}: {e}"))
            }
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Lab(format!(
            "`{tool} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Checks that the lab can run here: root, `ip`, `/dev/net/tun`.
///
/// # Errors
///
/// [`Error::Lab`] naming the missing prerequisite.
pub fn check_prerequisites() -> Result<(), Error> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(Error::Lab(
            "/dev/net/tun is missing: the tun driver is not available".into(),
        ));
    }
    ip(&["-V"])?;
    if !is_root() {
        return Err(Error::Lab(
            "network namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN)".into(),
        ));
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            .is_some_and(|euid| euid == "0")
    })
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` with its loopback up.
    ///
    /// # Errors
    ///
    /// [`Error::Lab`] when `ip netns add` fails (for example the name is taken).
    pub fn add(name: &str) -> Result<Self, Error> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Returns the name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <name> args`.
    ///
    /// # Errors
    ///
    /// As [`ip`].
    pub fn ip(&self, args: &[&str]) -> Result<(), Error> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Sets a sysctl under `/proc/sys/` inside this namespace, e.g. `net/ipv4/ip_forward`.
    ///
    /// # Errors
    ///
    /// [`Error::Lab`] when the namespace cannot be entered or the write fails.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), Error> {
        let path = format!("/proc/sys/{key}");
        let value = value.to_owned();
        self.run(move || std::fs::write(&path, value))?
            .map_err(|e| Error::Lab(format!("cannot set {key}: {e}")))
    }

    /// Runs `f` on a new thread inside this namespace and waits for its result.
    ///
    /// # Errors
    ///
    /// [`Error::Lab`] when the namespace cannot be entered or the thread panics.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        self.spawn(f)?
            .join()
            .map_err(|_| Error::Lab("a lab thread panicked".into()))
    }

    /// Starts `f` on a new thread inside this namespace. Sockets it creates belong to the
    /// namespace wherever they are used later.
    ///
    /// # Errors
    ///
    /// [`Error::Lab`] when the namespace cannot be opened or entered.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JoinHandle<T>, Error> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).map_err(|e| Error::Lab(format!("cannot open {path}: {e}")))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let entered = crate::sys::enter_netns(&file);
            let ok = entered.is_ok();
            let _ = tx.send(entered);
            assert!(ok, "setns failed");
            f()
        });
        match rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => Err(Error::Lab(format!("cannot enter {}: {e}", self.name))),
            Err(_) => Err(Error::Lab(
                "a lab thread died before entering its namespace".into(),
            )),
        }
    }

    /// Starts `program args` inside this namespace with stdout and stderr to `log`.
    ///
    /// # Errors
    ///
    /// [`Error::Lab`] when the process cannot be started.
    pub fn start(&self, program: &str, args: &[String], log: PathBuf) -> Result<Process, Error> {
        self.start_with(program, args, log, |_| {})
    }

    /// Starts `program args` as [`Self::start`] does, after `prepare` has adjusted the command
    /// that runs `ip netns exec` (tests use it to confine the process before it starts).
    ///
    /// # Errors
    ///
    /// [`Error::Lab`] when the process cannot be started.
    pub fn start_with(
        &self,
        program: &str,
        args: &[String],
        log: PathBuf,
        prepare: impl FnOnce(&mut Command),
    ) -> Result<Process, Error> {
        let out = File::create(&log)
            .map_err(|e| Error::Lab(format!("cannot create {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::Lab(format!("cannot dup log fd: {e}")))?;
        // `ip netns exec` enters the namespace and then execs the program, so the child's pid
        // is the program's own.
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        prepare(&mut command);
        let child = command
            .spawn()
            .map_err(|e| Error::Lab(format!("cannot start {program} in {}: {e}", self.name)))?;
        Ok(Process {
            child: Some(child),
            log,
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            tracing::warn!("cannot delete namespace {}: {e}", self.name);
        }
    }
}

/// Joins two namespaces with a veth pair, named `a_if` in `a` and `b_if` in `b`. The links
/// disappear with either namespace.
///
/// # Errors
///
/// As [`ip`].
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<(), Error> {
    ip(&[
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])
}

/// A process started in a namespace; stopped with SIGTERM (then SIGKILL) on drop.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Returns the process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Returns the exit status if the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Returns what the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM, waits up to `grace` for the exit, then kills. Returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = crate::sys::terminate(child.id());
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}
