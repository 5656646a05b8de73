# The `stored` confirmation (contract/stored.py) on the device: which of its readings the
# platform holds durably, as inclusive seq ranges, and the platform's time.
#
#     {"v": 1, "seq": [[40, 52], [55, 55]], "t": 1764000000.25}
#
# The full parser, loaded on demand and dropped again: ring.check reads the form the
# platform writes itself, and ring.apply comes here only for any other.
# A parser over the payload's bytes rather than json.loads: the ranges go into a list the
# node made once (no JSON objects on the heap), and the time is read as integer
# milliseconds (the ESP32's floats are single precision: 1.7e9 s in one is off by up to a
# minute). It accepts exactly what the contract's parse_stored accepts (a test feeds both
# the same payloads); keys written with escapes and nesting deeper than _DEPTH are the
# two corners where it says "invalid" and the contract might not.
from micropython import const

MAX_RANGES = const(32)  # contract/stored.py MAX_RANGES
MAX_SEQ = 9007199254740991  # 2^53 - 1, contract/payload.py MAX_SEQ
_T_END_MS = 8589934592000  # 2^33 s: t is below it
_BIG = 100000000000000000000  # 10^20: digits beyond it only scale the number
_DEPTH = const(16)

_int = -1  # the last number read: its value if an integer >= 0 (else -1) ...
_ms = -1  # ... and in thousandths, floored (-1 if negative or 2^33 s or more)
_n = -1  # ranges read by the last _ranges: count, or -1 if they break the contract


def _ws(p, i: int) -> int:
    n = len(p)
    while i < n:
        b = p[i]
        if b != 32 and b != 10 and b != 13 and b != 9:
            return i
        i += 1
    return i


def _hex(b: int) -> bool:
    return 48 <= b <= 57 or 65 <= b <= 70 or 97 <= b <= 102


def _str(p, i: int) -> int:
    # A string starting at p[i] ('"'): the index after its closing quote, or -1.
    n = len(p)
    i += 1
    while i < n:
        b = p[i]
        if b == 34:
            return i + 1
        if b < 32:
            return -1
        if b == 92:
            i += 1
            if i >= n:
                return -1
            b = p[i]
            if b == 117:  # \uXXXX
                if i + 4 >= n or not (_hex(p[i + 1]) and _hex(p[i + 2]) and _hex(p[i + 3]) and _hex(p[i + 4])):
                    return -1
                i += 4
            elif not (b == 34 or b == 92 or b == 47 or b == 98 or b == 102 or b == 110 or b == 114 or b == 116):
                return -1
        i += 1
    return -1


def _digits(p, i: int) -> bool:
    return i < len(p) and 48 <= p[i] <= 57


def _num(p, i: int) -> int:
    # A number at p[i]: the index after it, or -1; sets _int and _ms.
    global _int, _ms
    n = len(p)
    neg = i < n and p[i] == 45
    if neg:
        i += 1
    if not _digits(p, i):
        return -1
    m = scale = 0
    isint = True
    if p[i] == 48:
        i += 1
        if _digits(p, i):
            return -1  # no leading zeros in JSON
    while _digits(p, i):
        if m < _BIG:
            m = m * 10 + p[i] - 48
        else:
            scale += 1
        i += 1
    if i < n and p[i] == 46:
        isint = False
        i += 1
        if not _digits(p, i):
            return -1
        while _digits(p, i):
            if m < _BIG:
                m = m * 10 + p[i] - 48
                scale -= 1
            i += 1
    if i < n and (p[i] == 101 or p[i] == 69):
        isint = False
        i += 1
        sign = 1
        if i < n and (p[i] == 43 or p[i] == 45):
            sign = -1 if p[i] == 45 else 1
            i += 1
        if not _digits(p, i):
            return -1
        e = 0
        while _digits(p, i):
            if e < 100000:
                e = e * 10 + p[i] - 48
            i += 1
        scale += sign * e
    _int = m if isint and scale == 0 and not (neg and m) else -1
    if neg and m:
        _ms = -1
    elif not m:
        _ms = 0
    else:
        x = scale + 3
        if x > 20:
            _ms = -1
        elif x >= 0:
            _ms = m * 10 ** x
        elif x < -40:
            _ms = 0
        else:
            _ms = m // 10 ** -x
        if _ms >= _T_END_MS:
            _ms = -1
    return i


def _word(p, i: int, w: bytes) -> int:
    if i + len(w) > len(p):
        return -1
    for k in range(len(w)):
        if p[i + k] != w[k]:
            return -1
    return i + len(w)


def _val(p, i: int, depth: int) -> int:
    # Any JSON value at p[i]: the index after it, or -1.
    if i >= len(p):
        return -1
    b = p[i]
    if b == 34:
        return _str(p, i)
    if b == 123 or b == 91:
        if depth >= _DEPTH:
            return -1
        close = b + 2  # '{' -> '}', '[' -> ']'
        i = _ws(p, i + 1)
        if i < len(p) and p[i] == close:
            return i + 1
        while True:
            if b == 123:
                if i >= len(p) or p[i] != 34:
                    return -1
                i = _str(p, i)
                if i < 0:
                    return -1
                i = _ws(p, i)
                if i >= len(p) or p[i] != 58:
                    return -1
                i = _ws(p, i + 1)
            i = _val(p, i, depth + 1)
            if i < 0:
                return -1
            i = _ws(p, i)
            if i >= len(p):
                return -1
            if p[i] == close:
                return i + 1
            if p[i] != 44:
                return -1
            i = _ws(p, i + 1)
    if b == 116:
        return _word(p, i, b"true")
    if b == 102:
        return _word(p, i, b"false")
    if b == 110:
        return _word(p, i, b"null")
    return _num(p, i)


def _ranges(p, i: int, out) -> int:
    # `seq` in its expected shape, [[lo, hi], ...], read into out: the index after it, or
    # -1 if it has another shape (the caller then reads it as any value); sets _n.
    global _n
    _n = k = 0
    last = -1
    if i >= len(p) or p[i] != 91:
        return -1
    i = _ws(p, i + 1)
    if i < len(p) and p[i] == 93:
        return i + 1
    while True:
        if i >= len(p) or p[i] != 91:
            return -1
        i = _num(p, _ws(p, i + 1))
        if i < 0:
            return -1
        lo = _int
        i = _ws(p, i)
        if i >= len(p) or p[i] != 44:
            return -1
        i = _num(p, _ws(p, i + 1))
        if i < 0:
            return -1
        hi = _int
        i = _ws(p, i)
        if i >= len(p) or p[i] != 93:
            return -1
        if lo < 0 or hi < 0 or hi > MAX_SEQ or lo > hi or lo <= last or k >= MAX_RANGES:
            _n = -1
        elif _n >= 0:
            out[2 * k] = lo
            out[2 * k + 1] = hi
        k += 1
        last = hi
        i = _ws(p, i + 1)
        if i >= len(p):
            return -1
        if p[i] == 93:
            if _n >= 0:
                _n = k
            return i + 1
        if p[i] != 44:
            return -1
        i = _ws(p, i + 1)


def parse(p, out):
    """(n, t_ms) of a `stored` payload: its n ranges written to out (lo0, hi0, lo1, hi1, ...;
    out holds 2 * MAX_RANGES) and the platform's time in ms (-1 if not given); n is -1 for
    a payload the contract refuses."""
    v = n = -1
    t = -1
    i = _ws(p, 0)
    if i >= len(p) or p[i] != 123:
        return -1, -1
    i = _ws(p, i + 1)
    if i < len(p) and p[i] == 125:
        i += 1
    else:
        while True:
            if i >= len(p) or p[i] != 34:
                return -1, -1
            k0 = i + 1
            i = _str(p, i)
            if i < 0:
                return -1, -1
            klen = i - 1 - k0
            key = 0
            if klen == 1 and p[k0] == 118:
                key = 1  # v
            elif klen == 1 and p[k0] == 116:
                key = 3  # t
            elif klen == 3 and _word(p, k0, b"seq") > 0:
                key = 2
            i = _ws(p, i)
            if i >= len(p) or p[i] != 58:
                return -1, -1
            i = _ws(p, i + 1)
            start = i
            if key == 2:
                i = _ranges(p, i, out)
                n = _n
                if i < 0:
                    n = -1
                    i = _val(p, start, 1)
            else:
                i = _val(p, i, 1)
                if key == 1:
                    v = _int if i > 0 and (p[start] == 45 or 48 <= p[start] <= 57) else -1
                elif key == 3:
                    if i > 0 and p[start] == 110:
                        t = -1  # null: no time given
                    elif i > 0 and (p[start] == 45 or 48 <= p[start] <= 57):
                        t = _ms if _ms >= 0 else -2
                    else:
                        t = -2
            if i < 0:
                return -1, -1
            i = _ws(p, i)
            if i >= len(p):
                return -1, -1
            if p[i] == 125:
                i += 1
                break
            if p[i] != 44:
                return -1, -1
            i = _ws(p, i + 1)
    if _ws(p, i) != len(p) or v != 1 or n < 0 or t == -2:
        return -1, -1
    return n, t
