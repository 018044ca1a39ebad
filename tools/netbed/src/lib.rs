//! P2PLane's multi-host test bed, all on one machine.
//!
//! [`Bed`] builds a switch (a network namespace holding a bridge) and `n` hosts (a
//! namespace each, joined to the bridge by a veth pair, with address `10.77.0.i/16`), and
//! injects faults: loss and partitions with nftables rules on the bridge, delay with the
//! `nfdelay` NFQUEUE daemon (this kernel has no `netem`). Hosts have no default route,
//! except those put behind a home router with [`Bed::put_behind_nat`].
//!
//! **Run a bed only inside `unshare -n`** (a new, empty network namespace around the whole
//! test): an address of the test network dialled from the machine's own namespace would
//! leave the machine. [`Bed::new`] refuses to run outside one (it checks that the only
//! network interface in sight is `lo`). [`reexec_in_empty_netns`] does the wrapping for a
//! test. Namespaces are deleted when the bed is dropped.

use std::{
    collections::HashMap,
    io::{self, BufRead as _, BufReader},
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// Set in the environment of a test re-run inside `unshare -n`.
pub const INSIDE: &str = "NETBED_INSIDE_EMPTY_NETNS";

/// Why a bed cannot run here; see [`skip`].
#[derive(Debug)]
pub struct Unavailable(pub String);

/// A test that cannot run on this machine: under `CI=true` it fails with `reason` (`.ci/run`
/// installs what the beds need, so CI runs them all); elsewhere it writes one line saying
/// what was skipped and why, straight to stderr past the test harness's capture, so a skip
/// never reads as a plain pass.
pub fn skip(test: &str, reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} cannot run here: {reason} (under CI=true every test must run)");
    }
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {reason}");
}

/// Runs the current test binary again inside a new, empty network namespace, with only the
/// test `name`, and returns `Ok(Some(passed))`. `Ok(None)` means this process is the inner
/// one: go on with the test. An [`Unavailable`] error means namespaces or nftables are
/// missing here: skip.
pub fn reexec_in_empty_netns(name: &str) -> Result<Option<bool>, Unavailable> {
    if std::env::var_os(INSIDE).is_some() {
        return Ok(None);
    }
    let missing = |what: &str| Unavailable(what.to_owned());
    for tool in ["ip", "nft"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Err(missing(&format!("`{tool}` is not installed")));
        }
    }
    let probe = Command::new("unshare")
        .args(["-n", "ip", "netns", "add", "netbed-probe"])
        .stderr(Stdio::null())
        .status();
    let _ = Command::new("ip")
        .args(["netns", "del", "netbed-probe"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        return Err(missing(
            "cannot create network namespaces here (needs CAP_NET_ADMIN and CAP_SYS_ADMIN)",
        ));
    }
    let exe = std::env::current_exe().map_err(|e| missing(&e.to_string()))?;
    let status = Command::new("unshare")
        .arg("-n")
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .status()
        .map_err(|e| missing(&e.to_string()))?;
    Ok(Some(status.success()))
}

/// Runs test `name`'s `body` inside an empty network namespace (see
/// [`reexec_in_empty_netns`]), or says why it is skipped. One bed at a time: they share the
/// machine's cores, and their figures are timings.
pub fn in_netns(name: &str, body: impl FnOnce()) {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    match reexec_in_empty_netns(name) {
        Ok(None) => body(),
        Ok(Some(passed)) => assert!(passed, "{name} failed inside its network namespace"),
        Err(why) => skip(name, &why.0),
    }
}

/// Whether the full sizes were asked for (`NETBED_SOAK=1`) rather than CI's short runs.
pub fn soak() -> bool {
    std::env::var_os("NETBED_SOAK").is_some()
}

/// The text of `key=value` in a `bednode` result line.
pub fn text_field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

static NEXT_BED: AtomicU32 = AtomicU32::new(0);

/// How a home router translates addresses (see `docs/connectivity.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Endpoint-independent, port-preserving mapping with address-and-port-dependent
    /// filtering (nftables `masquerade`): most home routers. Hole punching works.
    PortPreserving,
    /// A new random port per destination (`masquerade random,fully-random`): "symmetric".
    /// Hole punching cannot work; only a relay connects it.
    Symmetric,
}

/// A switch and `n` hosts. Dropping it kills the processes it started and deletes its
/// namespaces.
pub struct Bed {
    prefix: String,
    hosts: usize,
    /// The hosts behind a router of their own.
    routers: Vec<usize>,
    /// The `nfdelay` daemon of each delayed host.
    daemons: HashMap<usize, Proc>,
}

/// A process started on a host, with its standard output.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Its output, line by line.
    pub out: BufReader<ChildStdout>,
}

impl Proc {
    /// Reads lines until one starts with `prefix`, and returns it; `None` when the output
    /// ends first or `timeout` passes (the reading happens on this thread).
    pub fn line_starting(&mut self, prefix: &str, timeout: Duration) -> Option<String> {
        self.lines_until(prefix, timeout).1
    }

    /// As [`Proc::line_starting`], also returning the lines read before it.
    pub fn lines_until(
        &mut self,
        prefix: &str,
        timeout: Duration,
    ) -> (Vec<String>, Option<String>) {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        let mut line = String::new();
        while Instant::now() < deadline {
            line.clear();
            match self.out.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.starts_with(prefix) => {
                    return (before, Some(line.trim_end().to_owned()));
                }
                Ok(_) => before.push(line.trim_end().to_owned()),
            }
        }
        (before, None)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Bed {
    /// Builds the switch and `hosts` hosts (numbered from 1). Fails outside an empty
    /// network namespace.
    pub fn new(hosts: usize) -> io::Result<Self> {
        let links = Command::new("ip").args(["-o", "link"]).output()?;
        let links = String::from_utf8_lossy(&links.stdout);
        if links.lines().any(|l| !l.contains(": lo:")) {
            return Err(io::Error::other(
                "refusing to build a bed outside an empty network namespace (run under unshare -n)",
            ));
        }
        let prefix = format!(
            "nb{}x{}",
            std::process::id(),
            NEXT_BED.fetch_add(1, Ordering::Relaxed)
        );
        let bed = Self {
            prefix,
            hosts,
            routers: Vec::new(),
            daemons: HashMap::new(),
        };
        let sw = bed.switch();
        run(Command::new("ip").args(["netns", "add", &sw]))?;
        bed.sh(
            &sw,
            "ip link set lo up && ip link add br0 type bridge && ip link set br0 up",
        )?;
        for i in 1..=hosts {
            let host = bed.host(i);
            run(Command::new("ip").args(["netns", "add", &host]))?;
            bed.sh(
                &sw,
                &format!(
                    "ip link add p{i} type veth peer name eth0 netns {host} && \
                     ip link set p{i} master br0 && ip link set p{i} up"
                ),
            )?;
            bed.sh(
                &host,
                &format!(
                    "ip link set lo up && ip addr add {}/16 dev eth0 && ip link set eth0 up",
                    Self::ip(i)
                ),
            )?;
        }
        bed.nft_switch("")?;
        Ok(bed)
    }

    /// Puts host `i` behind a home router with `nat`: the router takes the host's place on
    /// the switch (and its address, [`Bed::ip`]), and the host moves to a LAN of its own
    /// (address [`Bed::lan_ip`], default route through the router). The router translates
    /// the host's outgoing connections and drops every unsolicited packet from outside
    /// (dropped silently, as home routers do: a reset would abort a hole punch).
    pub fn put_behind_nat(&mut self, i: usize, nat: Nat) -> io::Result<()> {
        let host = self.host(i);
        let router = self.router(i);
        run(Command::new("ip").args(["netns", "add", &router]))?;
        self.routers.push(i);
        // The host's link to the switch becomes the router's WAN link.
        self.sh(
            &host,
            &format!("ip addr flush dev eth0 && ip link set eth0 netns {router} name wan0"),
        )?;
        let lan = Self::lan_ip(i);
        let gateway = format!("192.168.{i}.1");
        self.sh(
            &router,
            &format!(
                "ip link set lo up && ip addr add {}/16 dev wan0 && ip link set wan0 up && \
                 ip link add lan0 type veth peer name eth0 netns {host} && \
                 ip addr add {gateway}/24 dev lan0 && ip link set lan0 up && \
                 sysctl -qw net.ipv4.ip_forward=1",
                Self::ip(i)
            ),
        )?;
        self.sh(
            &host,
            &format!(
                "ip addr add {lan}/24 dev eth0 && ip link set eth0 up && \
                 ip route add default via {gateway}"
            ),
        )?;
        let masquerade = match nat {
            Nat::PortPreserving => "masquerade",
            Nat::Symmetric => "masquerade random,fully-random",
        };
        let rules = format!(
            "table ip home {{\n\
             chain translate {{ type nat hook postrouting priority 100; oifname \"wan0\" {masquerade}; }}\n\
             chain guard_lan {{ type filter hook forward priority 0; policy accept; \
             iifname \"wan0\" ct state new drop; }}\n\
             chain guard_router {{ type filter hook input priority 0; policy accept; \
             iifname \"wan0\" ct state new drop; }}\n\
             }}"
        );
        self.sh(&router, &format!("nft -f - <<'EOF'\n{rules}\nEOF"))
    }

    /// Host `i`'s address on its LAN, once it is behind a router.
    pub fn lan_ip(i: usize) -> String {
        format!("192.168.{i}.2")
    }

    /// The namespace of host `i`'s router.
    fn router(&self, i: usize) -> String {
        format!("{}-r{i}", self.prefix)
    }

    /// The switch's namespace.
    pub fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    /// Host `i`'s namespace (from 1).
    pub fn host(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }

    /// Host `i`'s address.
    pub fn ip(i: usize) -> String {
        format!("10.77.0.{i}")
    }

    /// How many hosts.
    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// Runs a shell `script` in namespace `ns`.
    pub fn sh(&self, ns: &str, script: &str) -> io::Result<()> {
        run(Command::new("ip").args(["netns", "exec", ns, "sh", "-c", script]))
    }

    /// A command that runs `program` on host `i`.
    pub fn command(&self, i: usize, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host(i)]).arg(program);
        cmd
    }

    /// Starts `cmd` (from [`Bed::command`]) with its output piped.
    pub fn spawn(&mut self, mut cmd: Command) -> io::Result<Proc> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let out = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Proc { child, out })
    }

    /// Replaces the switch's fault rules with `rules` (nft statements in the forward chain
    /// of a bridge table); `""` lets everything through.
    fn nft_switch(&self, rules: &str) -> io::Result<()> {
        let script = format!(
            "table bridge bed {{\n chain sw {{\n  type filter hook forward priority 0; policy accept;\n{rules}\n }}\n}}"
        );
        let _ = self.sh(&self.switch(), "nft delete table bridge bed 2>/dev/null");
        self.sh(&self.switch(), &format!("nft -f - <<'EOF'\n{script}\nEOF"))
    }

    /// Drops `pct` percent of the packets crossing the switch (each way), at random.
    pub fn set_loss(&self, pct: u32) -> io::Result<()> {
        if pct == 0 {
            return self.nft_switch("");
        }
        self.nft_switch(&format!("numgen random mod 100 < {pct} counter drop"))
    }

    /// Splits the hosts into `groups`: packets between hosts of different groups are
    /// dropped (hosts in no group are cut off from all). [`Bed::heal`] undoes it.
    pub fn partition(&self, groups: &[&[usize]]) -> io::Result<()> {
        let group_of = |i: usize| groups.iter().position(|g| g.contains(&i));
        let mut rules = String::new();
        for a in 1..=self.hosts {
            for b in 1..=self.hosts {
                if a != b && (group_of(a).is_none() || group_of(a) != group_of(b)) {
                    rules.push_str(&format!("iifname \"p{a}\" oifname \"p{b}\" drop\n"));
                }
            }
        }
        self.nft_switch(&rules)
    }

    /// Removes every fault rule on the switch.
    pub fn heal(&self) -> io::Result<()> {
        self.nft_switch("")
    }

    /// Delays every packet host `i` sends by `ms` ± `jitter_ms`, with an `nfdelay` daemon
    /// in its namespace (for at most `max_secs`).
    pub fn delay(
        &mut self,
        i: usize,
        nfdelay: &Path,
        ms: u32,
        jitter_ms: u32,
        max_secs: u64,
    ) -> io::Result<()> {
        let host = self.host(i);
        let _ = self.sh(&host, "iptables -F OUTPUT 2>/dev/null");
        self.daemons.remove(&i);
        if ms == 0 && jitter_ms == 0 {
            return Ok(());
        }
        let mut cmd = self.command(i, nfdelay);
        cmd.args([
            "0",
            &ms.to_string(),
            &jitter_ms.to_string(),
            "0",
            &max_secs.to_string(),
        ]);
        let mut proc = self.spawn(cmd)?;
        if proc
            .line_starting("READY", Duration::from_secs(10))
            .is_none()
        {
            return Err(io::Error::other("nfdelay did not start"));
        }
        // nftables' own `queue` statement needs a module this kernel lacks; the iptables
        // NFQUEUE target (xtables on nftables) works.
        self.sh(
            &host,
            "iptables -A OUTPUT -o eth0 -j NFQUEUE --queue-num 0 --queue-bypass",
        )?;
        self.daemons.insert(i, proc);
        Ok(())
    }

    /// Gives host `i` `count` more addresses, `10.77.<net>.1` upward, in one /24 (for
    /// floods from many addresses of one subnet).
    pub fn add_aliases(&self, i: usize, net: u8, count: u8) -> io::Result<()> {
        let script: Vec<String> = (1..=count)
            .map(|j| format!("ip addr add 10.77.{net}.{j}/16 dev eth0"))
            .collect();
        self.sh(&self.host(i), &script.join(" && "))
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.daemons.clear();
        for ns in (1..=self.hosts)
            .map(|i| self.host(i))
            .chain(self.routers.iter().map(|&i| self.router(i)))
            .chain([self.switch()])
        {
            // Processes still in a namespace keep it alive until they end; deleting the
            // name is what matters here.
            let _ = Command::new("ip")
                .args(["netns", "pids", &ns])
                .output()
                .map(|out| {
                    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                });
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}
