//! A hosts file (`/etc/hosts` format) for reverse DNS, read only when `dns.hosts_file` names
//! one. Its answers are complete: a name in the file has exactly the addresses the file gives
//! it, and an address has exactly the names the file gives it, so nothing about them is asked
//! of a DNS server.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

/// The names and addresses of one hosts file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct HostsFile {
    /// Lower-case name (no trailing dot) -> its addresses, in file order.
    addresses: HashMap<String, Vec<IpAddr>>,
    /// Address -> its names, in file order (the first is the canonical name, as for glibc).
    names: HashMap<IpAddr, Vec<String>>,
}

impl HostsFile {
    /// Reads and parses the file at `path`.
    pub(crate) fn read(path: &Path) -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(path)?))
    }

    /// Parses `ADDRESS NAME [ALIAS...]` lines; `#` starts a comment; bad lines are skipped.
    pub(crate) fn parse(text: &str) -> Self {
        let mut h = HostsFile::default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(Ok(ip)) = words.next().map(|w| w.parse::<IpAddr>()) else {
                continue;
            };
            let ip = ip.to_canonical();
            for name in words {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                let addrs = h.addresses.entry(name.clone()).or_default();
                if !addrs.contains(&ip) {
                    addrs.push(ip);
                }
                let names = h.names.entry(ip).or_default();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        h
    }

    /// Every address of `name` (any case, trailing dot or not), when the file names it.
    pub(crate) fn addresses(&self, name: &str) -> Option<&[IpAddr]> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.addresses.get(&name).map(Vec::as_slice)
    }

    /// Every name of `ip`, canonical name first, when the file has the address.
    pub(crate) fn names(&self, ip: IpAddr) -> Option<&[String]> {
        self.names.get(&ip.to_canonical()).map(Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_both_ways() {
        let h = HostsFile::parse(
            "# comment\n127.0.0.1 localhost runsc\n192.0.2.50\tMail.Partner.Example. mail # x\n\
             2001:db8::50 mail.partner.example\nnot-an-ip name\n",
        );
        assert_eq!(
            h.names("127.0.0.1".parse().unwrap()).unwrap(),
            ["localhost", "runsc"]
        );
        assert_eq!(
            h.addresses("MAIL.partner.example.").unwrap(),
            [
                "192.0.2.50".parse::<IpAddr>().unwrap(),
                "2001:db8::50".parse().unwrap()
            ]
        );
        assert_eq!(
            h.names("::ffff:192.0.2.50".parse().unwrap()).unwrap(),
            ["mail.partner.example", "mail"]
        );
        assert!(h.addresses("name").is_none());
        assert!(h.names("192.0.2.1".parse().unwrap()).is_none());
    }
}
