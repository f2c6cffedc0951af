"""Where a watched folder lives: its filesystem type (network mounts are polled) and whether it can be read."""

from __future__ import annotations

import os
import re
import stat as statmod
from pathlib import Path

# Filesystems whose changes made on other machines inotify never sees: watched by polling in mode 'auto'.
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "fuse.glusterfs", "davfs", "fuse.davfs2",
    "fuse.sshfs", "sshfs", "fuse.rclone", "rclone", "afs", "ncpfs", "lustre", "fuse.s3fs", "fuse.gcsfuse",
    "fuse.cephfs", "fuse.smbnetfs", "fuse.curlftpfs", "gpfs", "beegfs", "orangefs",
})

def filesystem_type(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str | None:
    """The type of the filesystem holding `path` (from the kernel's mount table), None if unknown."""
    try:
        target = os.path.realpath(path)
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    best, best_type = "", None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount = _unescape(fields[4])
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, best_type = mount, right.split()[0]
    return best_type


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash in mount points as octal escapes (\040)
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def probe(root: Path) -> str | None:
    """Why a watched folder cannot be watched now (missing, not a folder, unreadable), or None if it can."""
    try:
        st = os.stat(root)
        if not statmod.S_ISDIR(st.st_mode):
            return "not a folder"
        with os.scandir(root) as entries:
            next(entries, None)
    except FileNotFoundError:
        return "the folder is missing (deleted, renamed or not mounted); its documents are kept"
    except PermissionError:
        return "permission denied: the folder cannot be read; its documents are kept"
    except OSError as exc:
        return f"cannot read the folder: {exc.strerror or exc}; its documents are kept"
    return None

