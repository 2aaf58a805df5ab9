"""Python smtplib client for tests/e2e.rs: one scenario per run, prints what a user would see.

Usage: smtplib_client.py SCENARIO HOST PORT
Scenarios:
  starttls   EHLO, STARTTLS, EHLO, sendmail with Message-ID <e2e-py@test> / Subject "from python"
  oversize   a message over 2 KiB: sendmail (refused at MAIL via SIZE=), then sendmail with the
             SIZE extension hidden from smtplib (refused at the end of DATA)
  smtputf8   josé@example.com with an 8-bit UTF-8 body: send_message (smtplib adds SMTPUTF8
             itself) and sendmail(mail_options=["SMTPUTF8", "BODY=8BITMIME"])
Every line printed is `KEY value`; the Rust side asserts on them. Exit status 0 unless the
scenario itself went wrong (an unexpected exception is printed and exits 1).
"""

import smtplib
import ssl
import sys
from email.message import EmailMessage


def out(key, value):
    print(f"{key} {value}", flush=True)


def starttls(host, port):
    s = smtplib.SMTP(host, port, timeout=10)
    code, _ = s.ehlo("python.client.example")
    out("ehlo1", code)
    out("ehlo1_starttls", s.has_extn("starttls"))
    code, msg = s.starttls(context=ssl._create_unverified_context())
    out("starttls", f"{code} {msg.decode()}")
    out("cipher", " ".join(str(x) for x in s.sock.cipher()))
    code, _ = s.ehlo("python.client.example")
    out("ehlo2", code)
    out("ehlo2_starttls", s.has_extn("starttls"))
    msg = (
        "From: py@other.example\r\n"
        "To: bob@example.com\r\n"
        "Message-ID: <e2e-py@test>\r\n"
        "Subject: from python\r\n"
        "\r\n"
        "hello from smtplib\r\n"
    )
    refused = s.sendmail("py@other.example", ["bob@example.com"], msg)
    out("refused", len(refused))
    code, msg = s.quit()
    out("quit", f"{code} {msg.decode()}")


def oversize(host, port):
    big = "Subject: big\r\n\r\n" + ("x" * 70 + "\r\n") * 40  # 2.9 KiB > 2 KiB
    s = smtplib.SMTP(host, port, timeout=10)
    s.ehlo("python.client.example")
    out("size_ext", s.esmtp_features.get("size", ""))
    try:
        s.sendmail("py@other.example", ["bob@example.com"], big)
        out("sendmail", "accepted")
    except smtplib.SMTPSenderRefused as e:
        out("sendmail", f"SMTPSenderRefused {e.smtp_code} {e.smtp_error.decode()}")
    except smtplib.SMTPDataError as e:
        out("sendmail", f"SMTPDataError {e.smtp_code} {e.smtp_error.decode()}")
    # Without SIZE= on MAIL the server can only count while DATA streams in.
    del s.esmtp_features["size"]
    try:
        s.sendmail("py@other.example", ["bob@example.com"], big)
        out("sendmail_nosize", "accepted")
    except smtplib.SMTPSenderRefused as e:
        out("sendmail_nosize", f"SMTPSenderRefused {e.smtp_code} {e.smtp_error.decode()}")
    except smtplib.SMTPDataError as e:
        out("sendmail_nosize", f"SMTPDataError {e.smtp_code} {e.smtp_error.decode()}")
    code, _ = s.noop()
    out("noop_after", code)
    s.quit()


def smtputf8(host, port):
    s = smtplib.SMTP(host, port, timeout=10)
    s.ehlo("python.client.example")
    out("smtputf8_ext", s.has_extn("smtputf8"))
    out("8bitmime_ext", s.has_extn("8bitmime"))
    m = EmailMessage()
    m["From"] = "py@other.example"
    m["To"] = "josé@example.com"
    m["Subject"] = "grüße"
    m["Message-ID"] = "<e2e-utf8@test>"
    m.set_content("Grüße aus Köln, ½ € — ok\n", cte="8bit")
    # send_message adds SMTPUTF8 and BODY=8BITMIME itself for a non-ASCII address.
    refused = s.send_message(m, from_addr="py@other.example", to_addrs=["josé@example.com"])
    out("send_message_refused", len(refused))
    # sendmail adds nothing: the caller asks for SMTPUTF8 in mail_options.
    raw = m.as_bytes(policy=m.policy.clone(utf8=True, linesep="\r\n")).replace(b"e2e-utf8@test", b"e2e-utf8b@test")
    refused = s.sendmail(
        "py@other.example", ["josé@example.com"], raw, mail_options=["SMTPUTF8", "BODY=8BITMIME"]
    )
    out("sendmail_refused", len(refused))
    code, msg = s.quit()
    out("quit", f"{code} {msg.decode()}")


def main():
    scenario, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        {"starttls": starttls, "oversize": oversize, "smtputf8": smtputf8}[scenario](host, port)
    except Exception as e:  # noqa: BLE001 - report anything to the Rust side
        out("exception", f"{type(e).__name__}: {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
