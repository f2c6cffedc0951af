"""A real Dovecot IMAP server for tests and benchmarks: generated configuration in a temporary directory.

Plaintext login on 127.0.0.1 (a free port), one user from a static passdb, Maildir storage. Dovecot runs in
the foreground (`dovecot -F`) as a child process; `stop()` / `restart()` simulate a server going away.
Importable from benches: `from tests.dovecot import Dovecot` (or with tests/ on sys.path).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

DOVECOT = "/usr/sbin/dovecot"

_CONFIG = """\
base_dir = {base}/run
state_dir = {base}/state
instance_name = kb-test-{port}
listen = 127.0.0.1
protocols = imap
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
log_path = {base}/dovecot.log
info_log_path = {base}/dovecot.log
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = 0
mail_location = maildir:{base}/mail/%u
mail_uid = {uid}
mail_gid = {gid}
mail_privileged_group =
mail_max_userip_connections = 100
protocol imap {{
  mail_max_userip_connections = 100
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
passdb {{
  driver = static
  args = user={user} password={password}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={base}/home/%u
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
"""


def available() -> bool:
    return Path(DOVECOT).is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _user(name: str, fallback: str = "root") -> str:
    import pwd

    try:
        pwd.getpwnam(name)
        return name
    except KeyError:
        return fallback


class Dovecot:
    """One Dovecot instance with one user. Use as a context manager, or call start() and close()."""

    def __init__(
        self, root: Path | None = None, *, user: str = "kbtest", password: str = "s3cret-Pa55", tls: bool = False
    ) -> None:
        """With tls, a self-signed certificate for 127.0.0.1: implicit TLS on `tls_port`, STARTTLS on `port`."""
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="kb-dovecot-")) if root is None else root
        self.root.mkdir(parents=True, exist_ok=True)
        self.user = user
        self.password = password
        self.port = free_port()
        self.tls_port = free_port() if tls else 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.config = self.root / "dovecot.conf"
        # Dovecot refuses to open mailboxes as root: as root, the mail is kept as an unprivileged user, whose
        # folders must be reachable (hence a root of our own under /tmp rather than pytest's 0700 tmp_path).
        uid, gid = os.getuid(), os.getgid()
        if uid == 0:
            import pwd

            nobody = pwd.getpwnam(_user("nobody"))
            uid, gid = nobody.pw_uid, nobody.pw_gid
            self.root.chmod(0o755)
        for sub in ("run", "state", "mail", "home"):
            (self.root / sub).mkdir(exist_ok=True)
        for sub in ("mail", "home"):
            os.chown(self.root / sub, uid, gid)
        ssl = "ssl = no"
        if tls:
            cert, key = self.root / "cert.pem", self.root / "key.pem"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                 "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                check=True, capture_output=True,
            )
            ssl = f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}"
        self.config.write_text(_CONFIG.format(
            base=self.root, port=self.port, tls_port=self.tls_port, ssl=ssl, user=user, password=password, uid=uid,
            gid=gid, internal=_user("dovecot"), login=_user("dovenull"),
        ))

    @property
    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout_s: float = 15.0) -> None:
        """Start in the foreground and wait until the port accepts connections and greets."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.config)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.root / "stderr.log", "ab"), start_new_session=True,  # noqa: SIM115
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dovecot exited at start: {(self.root / 'stderr.log').read_text()}{self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not accept connections on port {self.port}: {self.log}")

    def stop(self) -> None:
        """Kill the whole process group (master, login and imap processes): clients see the connection drop."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        # the master is gone; its children may linger a moment holding the port
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    time.sleep(0.05)
            except OSError:
                return

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- helpers, through IMAP like a real mail client --------------------------------------------
    def client(self):  # type: ignore[no-untyped-def]
        """A logged-in IMAPClient (the caller logs out)."""
        from imapclient import IMAPClient

        c = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=10)
        c.login(self.user, self.password)
        return c

    def append(self, folder: str, message: bytes, flags: tuple[bytes, ...] = ()) -> int:
        """Add one message with IMAP APPEND; returns its UID."""
        return self.append_many(folder, [message], flags)[0]

    def append_many(self, folder: str, messages: list[bytes], flags: tuple[bytes, ...] = ()) -> list[int]:
        c = self.client()
        try:
            uids = []
            for m in messages:
                resp = c.append(folder, m, flags=flags)
                uids.append(_appenduid(resp))
            return uids
        finally:
            with contextlib.suppress(Exception):
                c.logout()

    def append_files(self, folder: str, paths: list[Path]) -> list[int]:
        """Load message files (a Maildir's or a corpus's) into a folder; returns their UIDs."""
        return self.append_many(folder, [p.read_bytes() for p in paths])

    def flags(self, folder: str) -> dict[int, tuple[bytes, ...]]:
        """UID -> flags, read without changing anything."""
        c = self.client()
        try:
            c.select_folder(folder, readonly=True)
            uids = c.search(["ALL"])
            return {int(u): tuple(d[b"FLAGS"]) for u, d in c.fetch(uids, ["FLAGS"]).items()} if uids else {}
        finally:
            with contextlib.suppress(Exception):
                c.logout()

    def message_file(self, folder: str, uid: int) -> Path:
        """The Maildir file holding a message (to damage it, as a failing disk would)."""
        box = self.root / "mail" / self.user
        if folder != "INBOX":
            box = box / f".{folder.replace('/', '.')}"
        uidlist = (box / "dovecot-uidlist").read_text().splitlines()[1:]
        for line in uidlist:
            head, _, name = line.partition(":")
            if int(head.split()[0]) == uid:
                found = [p for sub in ("cur", "new") for p in (box / sub).glob(f"{name}*")]
                if found:
                    return found[0]
        raise FileNotFoundError(f"no file for UID {uid} in {folder}")

    def create_folder(self, folder: str) -> None:
        c = self.client()
        try:
            c.create_folder(folder)
        finally:
            with contextlib.suppress(Exception):
                c.logout()

    def delete_folder(self, folder: str) -> None:
        """Delete a folder (not INBOX); created again, it has a new UIDVALIDITY."""
        c = self.client()
        try:
            c.delete_folder(folder)
        finally:
            with contextlib.suppress(Exception):
                c.logout()

    def folder_status(self, folder: str) -> dict[bytes, int]:
        c = self.client()
        try:
            return dict(c.folder_status(folder, ["MESSAGES", "UIDVALIDITY", "UIDNEXT", "UNSEEN"]))
        finally:
            with contextlib.suppress(Exception):
                c.logout()


def _appenduid(resp: bytes | str) -> int:
    """The UID from an APPENDUID response code: b'[APPENDUID 1700000000 5] Append completed.'"""
    text = resp.decode() if isinstance(resp, bytes) else resp
    if "APPENDUID" in text:
        return int(text.split("APPENDUID", 1)[1].split("]", 1)[0].split()[1])
    return 0


# -- sample messages: the kinds of mail a real mailbox holds, including the broken ones ---------------
def _wav(seconds: float = 0.2, rate: int = 8000) -> bytes:
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x01" * int(seconds * rate))
    return buf.getvalue()


_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)
_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082"
)


def sample_messages(big_bytes: int = 300_000) -> dict[str, bytes]:
    """Raw messages (CRLF line ends, as IMAP serves them) by name: plain, html, attachments, broken_mime,
    bogus_charset, dup_a / dup_b (one Message-ID, two messages), big (about big_bytes)."""
    from email.message import EmailMessage
    from email.policy import SMTP

    def msg(subject: str, mid: str) -> EmailMessage:
        m = EmailMessage(policy=SMTP)
        m["From"] = "Ada <ada@example.org>"
        m["To"] = "kb@example.org"
        m["Subject"] = subject
        m["Date"] = "Mon, 02 Mar 2026 10:00:00 +0000"
        m["Message-ID"] = mid
        return m

    out: dict[str, bytes] = {}
    m = msg("Plain hello", "<plain@example.org>")
    m.set_content("The lease renewal is due in March.\n")
    out["plain"] = m.as_bytes()
    m = msg("HTML only", "<html@example.org>")
    m.set_content("<html><body><p>Budget <b>approved</b>.</p></body></html>", subtype="html")
    out["html"] = m.as_bytes()
    m = msg("Attachments", "<attach@example.org>")
    m.set_content("Report, photo and recording attached.\n")
    m.add_attachment(_PDF, maintype="application", subtype="pdf", filename="report.pdf")
    m.add_attachment(_PNG, maintype="image", subtype="png", filename="photo.png")
    m.add_attachment(_wav(), maintype="audio", subtype="wav", filename="memo.wav")
    out["attachments"] = m.as_bytes()
    out["broken_mime"] = (
        b"From: broken@example.org\r\nSubject: Broken MIME\r\nMessage-ID: <broken@example.org>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"never-closed\"\r\n\r\n"
        b"--never-closed\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"!!!not base64!!!\r\n--never-closed\r\nContent-Type: application/pdf; name=\"cut.pdf\"\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n"
    )
    out["bogus_charset"] = (
        b"From: charset@example.org\r\nSubject: =?x-bogus-42?Q?Gr=FC=DFe?=\r\nMessage-ID: <charset@example.org>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"x-bogus-42\"\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xfc\xdfe aus K\xf6ln\r\n"
    )
    m = msg("Duplicate one", "<same@example.org>")
    m.set_content("First message with this id.\n")
    out["dup_a"] = m.as_bytes()
    m = msg("Duplicate two", "<same@example.org>")
    m.set_content("Second message with the same id.\n")
    out["dup_b"] = m.as_bytes()
    m = msg("Too big", "<big@example.org>")
    m.set_content("Big attachment follows.\n")
    m.add_attachment(os.urandom(big_bytes * 3 // 4), maintype="application", subtype="octet-stream",
                     filename="big.bin")
    out["big"] = m.as_bytes()
    return out
