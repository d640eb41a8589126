//! The TUN device's own drop counters, as the kernel keeps them: packets it dropped before
//! fustian could read them (`tx_dropped`: the device's transmit queue was full because the
//! workers fell behind) and packets fustian wrote that it refused (`rx_dropped`). Neither
//! passes through fustian, so its own counters cannot see them.
//!
//! Read from `/proc/thread-self/net/dev`, the calling thread's network namespace (the node's),
//! when the counters are rendered; never on the packet path.

/// The device's drop counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceDrops {
    /// Packets written to the device that the kernel dropped.
    pub rx_dropped: u64,
    /// Packets routed to the device that the kernel dropped before they were read.
    pub tx_dropped: u64,
}

impl DeviceDrops {
    /// Returns `(name, value)` pairs as the node's counters name them.
    pub fn named(self) -> [(&'static str, u64); 2] {
        [
            ("tun_device_rx_dropped", self.rx_dropped),
            ("tun_device_tx_dropped", self.tx_dropped),
        ]
    }
}

/// Why a device's counters could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NetDevError {
    /// Neither file could be read.
    #[error("cannot read /proc/net/dev: {0}")]
    Read(#[from] std::io::Error),
    /// The device has no line.
    #[error("{0} is not listed")]
    NotListed(String),
    /// The device's line is cut short or holds something other than numbers.
    #[error("{0}: malformed line")]
    Malformed(String),
}

/// Reads device `name`'s drop counters.
///
/// # Errors
///
/// [`NetDevError`] when the file cannot be read or does not hold the device's counters.
pub fn device_drops(name: &str) -> Result<DeviceDrops, NetDevError> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev")
        .or_else(|_| std::fs::read_to_string("/proc/net/dev"))?;
    parse_net_dev(&text, name)
}

/// Finds device `name` in the text of `/proc/net/dev` (two header lines, then
/// `name: <8 receive fields> <8 transmit fields>`, the fourth of each being the drops).
///
/// # Errors
///
/// [`NetDevError::NotListed`] or [`NetDevError::Malformed`].
pub fn parse_net_dev(text: &str, name: &str) -> Result<DeviceDrops, NetDevError> {
    let rest = text
        .lines()
        .skip(2)
        .filter_map(|line| line.split_once(':'))
        .find_map(|(dev, rest)| (dev.trim() == name).then_some(rest))
        .ok_or_else(|| NetDevError::NotListed(name.to_owned()))?;
    let mut fields = rest.split_ascii_whitespace().map(|f| f.parse::<u64>().ok());
    let mut field = |n| {
        fields
            .nth(n)
            .flatten()
            .ok_or_else(|| NetDevError::Malformed(name.to_owned()))
    };
    let rx_dropped = field(3)?;
    let tx_dropped = field(7)?;
    Ok(DeviceDrops {
        rx_dropped,
        tx_dropped,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SAMPLE: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1200      12    0    0    0     0          0         0     1200      12    0    0    0     0       0          0
flannel0: 4167417312  111904    0    7    0     0          0         0 4121142700  465061    0 48684    0     0       0          0
  ul0: 99 1 0 3 0 0 0 0 99 1 0 4 0 0 0 0
";

    #[test]
    fn finds_the_device_and_its_drops() {
        assert_eq!(
            parse_net_dev(SAMPLE, "flannel0").expect("listed"),
            DeviceDrops {
                rx_dropped: 7,
                tx_dropped: 48684
            }
        );
        assert_eq!(
            parse_net_dev(SAMPLE, "ul0").expect("listed"),
            DeviceDrops {
                rx_dropped: 3,
                tx_dropped: 4
            }
        );
        for name in ["flannel", "eth0"] {
            assert!(matches!(
                parse_net_dev(SAMPLE, name),
                Err(NetDevError::NotListed(_))
            ));
        }
        // A line cut short, or a field that is not a number, is not a reading.
        let short = "h\nh\nflannel0: 1 2 3 4 5 6 7 8 9 10 11\n";
        let bad = "h\nh\nflannel0: 1 2 3 x 5 6 7 8 9 10 11 12 13 14 15 16\n";
        for text in [short, bad] {
            assert!(matches!(
                parse_net_dev(text, "flannel0"),
                Err(NetDevError::Malformed(_))
            ));
        }
    }

    #[test]
    fn reads_this_namespace() {
        // Loopback exists in every namespace.
        assert!(device_drops("lo").is_ok());
    }

    proptest! {
        #[test]
        fn any_text_is_read_without_panic(text in ".{0,400}", name in "[a-z0-9]{1,15}") {
            let _ = parse_net_dev(&text, &name);
        }

        #[test]
        fn any_line_of_the_device_is_read_or_refused(rest in ".{0,200}") {
            let text = format!("h\nh\nflannel0:{rest}\n");
            prop_assert!(!matches!(
                parse_net_dev(&text, "flannel0"),
                Err(NetDevError::NotListed(_) | NetDevError::Read(_))
            ));
        }

        #[test]
        fn a_well_formed_line_is_read_back(
            rx in proptest::array::uniform8(any::<u64>()),
            tx in proptest::array::uniform8(any::<u64>()),
            name in "[a-z][a-z0-9]{0,14}",
        ) {
            let fields: Vec<String> = rx.iter().chain(&tx).map(u64::to_string).collect();
            let text = format!("h\nh\n    lo: {}\n{name}: {}\n", fields.join(" "), fields.join(" "));
            prop_assert_eq!(
                parse_net_dev(&text, &name).ok(),
                Some(DeviceDrops { rx_dropped: rx[3], tx_dropped: tx[3] })
            );
        }
    }
}
