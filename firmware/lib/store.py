# What the node keeps across resets: small state files in flash, replaced so that a power
# cut leaves the old text or the new, and the crash count in RTC memory.
import hal

# What the node keeps in flash lives under one folder whose name is no module's: on the
# board the current folder comes first in sys.path, so a folder "ring" would shadow ring.py.
STATE = "state"


def save(path: str, text: str) -> None:
    """Replace a small state file so that a power cut leaves the old or the new text,
    never none or half (a reader falls back to path + ".new" when path is missing)."""
    import os

    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    try:
        os.rename(tmp, path)  # LittleFS replaces atomically
    except OSError:
        os.remove(path)  # a file system that will not rename onto a file (FAT)
        os.rename(tmp, path)


def load(path: str):
    """A state file written by save(), or None."""
    for p in (path, path + ".new"):
        try:
            with open(p) as f:
                return f.read()
        except OSError:
            pass
    return None


def crashed() -> int:
    """After an unexpected exception (main.py): one more crash in a row, kept in RTC
    memory with the reason; returns how many in a row (the delay before the reset grows
    with it, and from 3 on the node boots in safe mode)."""
    try:
        p = hal.rtc_memory().decode().split(" ")
        if p[0] != "nk1" or len(p) != 5:
            raise ValueError
        p[3] = str(int(p[3]) + 1)
        p[4] = "crash"
    except (ValueError, UnicodeError):
        p = ["nk1", "-1", "-", "1", "crash"]
    hal.rtc_memory(" ".join(p).encode())
    return int(p[3])
