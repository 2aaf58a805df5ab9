//! dnsmasq serving test zones on a free loopback port (reverse DNS, block lists, MX, TXT and
//! TLSA records). [`txt_record`] and [`tlsa_record`] build the options of the last two.

#![allow(dead_code)]

/// A running dnsmasq; killed on drop.
pub struct Dnsmasq {
    pub child: std::process::Child,
    pub port: u16,
}

impl Dnsmasq {
    /// Starts dnsmasq with `zone_args` (`--local=…`, `--address=…`, `--ptr-record=…`,
    /// `--mx-host=…`, `--txt-record=…`, `--dns-rr=…`); `None` (after printing `SKIP:`) when
    /// dnsmasq is missing outside CI.
    pub fn start(zone_args: &[&str]) -> Option<Dnsmasq> {
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(bin) = bin else {
            assert!(
                std::env::var_os("CI").is_none(),
                "dnsmasq must be installed in CI"
            );
            eprintln!("SKIP: dnsmasq not installed");
            return None;
        };
        // A loaded CI machine may take a while, and a port taken meanwhile makes dnsmasq
        // exit: try a few ports.
        for _ in 0..5 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = std::process::Command::new(bin)
                .args([
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--user=root",
                    "--pid-file",
                    &format!("--port={port}"),
                ])
                .args(zone_args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start dnsmasq");
            let mut d = Dnsmasq { child, port };
            for _ in 0..500 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(d);
                }
                if let Ok(Some(status)) = d.child.try_wait() {
                    eprintln!("dnsmasq exited ({status}) on port {port}: trying another port");
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        panic!("dnsmasq did not start");
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--txt-record=NAME,TEXT`: one TXT record of one string. dnsmasq starts a new string at
/// each comma, so TEXT must have none (a reader joins the strings of a record anyway).
pub fn txt_record(name: &str, text: &str) -> String {
    assert!(
        !text.contains(','),
        "dnsmasq would split {text:?} at its commas"
    );
    format!("--txt-record={name},{text}")
}

/// `--dns-rr=NAME,52,HEX`: a TLSA record (RFC 6698 wire format: usage, selector, matching
/// type, association data), which dnsmasq serves as an opaque record of type 52.
pub fn tlsa_record(name: &str, usage: u8, selector: u8, matching: u8, data: &[u8]) -> String {
    let hex: String = [usage, selector, matching]
        .iter()
        .chain(data)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("--dns-rr={name},52,{hex}")
}
