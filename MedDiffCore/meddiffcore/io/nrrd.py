"""A small pure-Python NRRD reader/writer (http://teem.sourceforge.net/nrrd/format.html).

Handles what 3D Slicer, ITK and teem write: attached and detached (``.nhdr``)
headers, ``raw``/``gzip``/``bzip2``/``ascii``/``hex`` encodings, both endians,
``line skip``/``byte skip``, ``data file: LIST`` and formatted file lists, any
dimension, and ``key:=value`` pairs (used by Slicer's ``.seq.nrrd``).

Arrays are returned in C order, so the numpy shape is the NRRD ``sizes``
REVERSED: NRRD axis 0 (fastest) is the LAST numpy axis. For a 3D image that is
exactly ``array[k, j, i]``.

Errors are raised as :class:`NrrdError` (a ``ValueError``); the volume readers
turn them into user-facing :class:`~meddiffcore.errors.BadInputError`.
"""

from __future__ import annotations

import bz2
import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["NrrdError", "NrrdTruncatedError", "NrrdData", "read_nrrd", "write_nrrd", "format_vector",
           "parse_vector", "NRRD_TYPES"]


class NrrdError(ValueError):
    """The file is not a valid NRRD file (or uses a feature this reader lacks)."""


class NrrdTruncatedError(NrrdError):
    """The data ends before ``sizes`` says it should."""


_TYPE_NAMES = {
    np.dtype(np.int8): ("signed char", "int8", "int8_t"),
    np.dtype(np.uint8): ("uchar", "unsigned char", "uint8", "uint8_t"),
    np.dtype(np.int16): ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    np.dtype(np.uint16): ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    np.dtype(np.int32): ("int", "signed int", "int32", "int32_t"),
    np.dtype(np.uint32): ("uint", "unsigned int", "uint32", "uint32_t"),
    np.dtype(np.int64): ("longlong", "long long", "long long int", "signed long long", "signed long long int",
                         "int64", "int64_t"),
    np.dtype(np.uint64): ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    np.dtype(np.float32): ("float",),
    np.dtype(np.float64): ("double",),
}
#: NRRD type name -> numpy dtype (native byte order).
NRRD_TYPES: dict[str, np.dtype] = {name: dt for dt, names in _TYPE_NAMES.items() for name in names}
#: numpy dtype -> the canonical name written (the names Slicer/teem write).
_WRITE_TYPE = {
    np.dtype(np.int8): "signed char", np.dtype(np.uint8): "unsigned char",
    np.dtype(np.int16): "short", np.dtype(np.uint16): "unsigned short",
    np.dtype(np.int32): "int", np.dtype(np.uint32): "unsigned int",
    np.dtype(np.int64): "long long", np.dtype(np.uint64): "unsigned long long",
    np.dtype(np.float32): "float", np.dtype(np.float64): "double",
}

_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2",
              "ascii": "ascii", "text": "ascii", "txt": "ascii", "hex": "hex"}


@dataclass
class NrrdData:
    """A parsed NRRD file: ``fields`` (lower-case names, raw string values), ``keyvalues``, ``data``."""

    fields: dict[str, str]
    keyvalues: dict[str, str] = field(default_factory=dict)
    data: np.ndarray | None = None

    @property
    def sizes(self) -> list[int]:
        return [int(s) for s in self.fields["sizes"].split()]

    def per_axis(self, name: str) -> list[str] | None:
        """A per-axis field split into one token per axis (quoted strings unquoted)."""
        value = self.fields.get(name)
        if value is None:
            return None
        if '"' in value:
            return _split_quoted(value)
        return value.split()


def _split_quoted(value: str) -> list[str]:
    out, i = [], 0
    while i < len(value):
        if value[i].isspace():
            i += 1
            continue
        if value[i] == '"':
            j = i + 1
            buf = []
            while j < len(value) and value[j] != '"':
                if value[j] == "\\" and j + 1 < len(value):
                    j += 1
                buf.append(value[j])
                j += 1
            out.append("".join(buf))
            i = j + 1
        else:
            j = i
            while j < len(value) and not value[j].isspace():
                j += 1
            out.append(value[i:j])
            i = j
    return out


def parse_vector(text: str) -> list[float] | None:
    """``(1,2,3)`` -> [1.0, 2.0, 3.0]; ``none`` -> None."""
    text = text.strip()
    if text.lower() == "none":
        return None
    if not (text.startswith("(") and text.endswith(")")):
        raise NrrdError(f"bad vector {text!r}")
    try:
        return [float(x) for x in text[1:-1].split(",")]
    except ValueError:
        raise NrrdError(f"bad vector {text!r}") from None


def split_vectors(text: str) -> list[str]:
    """Split ``(1,0,0) (0, 1, 0) none`` into its items (spaces allowed inside parentheses)."""
    out, depth, cur = [], 0, []
    for ch in text.strip():
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch.isspace() and depth == 0:
            if cur:
                out.append("".join(cur))
                cur = []
            continue
        if not ch.isspace():
            cur.append(ch)
    if cur:
        out.append("".join(cur))
    return out


def format_vector(values) -> str:
    """Shortest exact text for floats: ``(0.7,0,-2.5)``."""
    return "(" + ",".join(_fmt(v) for v in values) + ")"


def _fmt(v: float) -> str:
    v = float(v)
    if v == 0.0:
        return "0"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


# --------------------------------------------------------------------------------------------- reading


def _read_header(f) -> tuple[dict[str, str], dict[str, str]]:
    magic = f.readline()
    if not magic.startswith(b"NRRD"):
        raise NrrdError("not a NRRD file (no NRRD magic at the start)")
    fields: dict[str, str] = {}
    keyvalues: dict[str, str] = {}
    while True:
        line = f.readline()
        if not line:
            break  # end of file: allowed for detached headers
        text = line.decode("latin-1").rstrip("\r\n")
        if text == "":
            break
        if text.startswith("#"):
            continue
        if ":=" in text and (": " not in text or text.index(":=") < text.index(": ")):
            key, value = text.split(":=", 1)
            keyvalues[_unescape(key)] = _unescape(value)
            continue
        if ":" not in text:
            raise NrrdError(f"bad header line {text!r}")
        name, value = text.split(":", 1)
        fields[name.strip().lower()] = value.strip()
        if name.strip().lower() == "data file" and value.strip().upper().startswith("LIST"):
            # the remaining lines of the header are the file names
            fields["_data_file_list"] = "\n".join(
                ln.decode("latin-1").strip() for ln in f.read().splitlines() if ln.strip())
            break
    return fields, keyvalues


def _unescape(s: str) -> str:
    return s.replace("\\n", "\n").replace("\\\\", "\\")


def _escape(s: str) -> str:
    return str(s).replace("\\", "\\\\").replace("\n", "\\n")


def _data_files(fields: dict[str, str], header_path: Path) -> list[Path]:
    spec = fields["data file"]
    base = header_path.parent
    parts = spec.split()
    if parts[0].upper() == "LIST":
        names = fields.get("_data_file_list", "").splitlines()
    elif len(parts) >= 4 and "%" in parts[0]:
        fmt, lo, hi, step = parts[0], int(parts[1]), int(parts[2]), int(parts[3])
        if step == 0:
            raise NrrdError(f"bad data file step in {spec!r}")
        names = [fmt % n for n in range(lo, hi + (1 if step > 0 else -1), step)]
    else:
        names = [spec]
    return [Path(n) if os.path.isabs(n) else base / n for n in names]


def _skip_lines(buf: bytes, n: int) -> bytes:
    pos = 0
    for _ in range(n):
        nl = buf.find(b"\n", pos)
        if nl < 0:
            raise NrrdTruncatedError("the data ends inside the skipped lines")
        pos = nl + 1
    return buf[pos:]


def _decode(raw: bytes, encoding: str, nbytes: int, line_skip: int, byte_skip: int) -> bytes:
    if line_skip:
        raw = _skip_lines(raw, line_skip)
    if encoding == "gzip":
        try:
            raw = _gunzip(raw)
        except (EOFError, zlib.error, OSError) as exc:
            raise NrrdTruncatedError(f"the compressed data is cut short or damaged ({exc})") from None
    elif encoding == "bzip2":
        try:
            raw = bz2.decompress(raw)
        except (EOFError, OSError, ValueError) as exc:
            raise NrrdTruncatedError(f"the compressed data is cut short or damaged ({exc})") from None
    if byte_skip == -1:
        if encoding in ("ascii", "hex"):
            raise NrrdError("byte skip: -1 is only allowed with binary encodings")
        raw = raw[-nbytes:] if nbytes else b""
    elif byte_skip:
        raw = raw[byte_skip:]
    return raw


def _gunzip(raw: bytes) -> bytes:
    # zlib with automatic gzip/zlib header detection; tolerate concatenated members
    out = []
    while raw:
        d = zlib.decompressobj(47)
        out.append(d.decompress(raw))
        if not d.eof:
            raise EOFError("compressed stream ended before the end-of-stream marker")
        raw = d.unused_data.lstrip(b"\0")
    return b"".join(out)


def _read_into(f, out: memoryview, encoding: str, line_skip: int, byte_skip: int, chunk: int = 1 << 20) -> None:
    """Fill ``out`` (bytes) from the open data file ``f`` (raw or gzip; ``byte skip`` -1 raw only), reading and
    decompressing ``chunk`` bytes at a time, so no second copy of the data is ever held."""
    for _ in range(line_skip):
        if not f.readline().endswith(b"\n"):
            raise NrrdTruncatedError("the data ends inside the skipped lines")
    nbytes = len(out)
    if encoding == "raw":
        if byte_skip == -1:
            f.seek(0, os.SEEK_END)
            if f.tell() < nbytes:
                raise NrrdTruncatedError(f"expected {nbytes} bytes of data, found {f.tell()}")
            f.seek(-nbytes, os.SEEK_END)
        elif byte_skip:
            f.seek(byte_skip, os.SEEK_CUR)
        filled = 0
        while filled < nbytes:
            n = f.readinto(out[filled:filled + chunk])
            if not n:
                raise NrrdTruncatedError(f"expected {nbytes} bytes of data, found {filled}")
            filled += n
        return
    skip, filled, tail = byte_skip, 0, b""  # tail: compressed bytes read but not yet given to the decompressor
    d = zlib.decompressobj(47)  # gzip or zlib header, found automatically
    while True:
        if d.eof:  # the end of a member; more may follow (concatenated members, as _gunzip tolerates)
            tail = d.unused_data.lstrip(b"\0")
            while not tail:
                more = f.read(chunk)
                if not more:
                    break
                tail = more.lstrip(b"\0")
            if not tail:
                if filled < nbytes:
                    raise NrrdTruncatedError(f"expected {nbytes} bytes of data, found {filled}")
                return
            d = zlib.decompressobj(47)
        if d.unconsumed_tail:
            src = d.unconsumed_tail
        else:
            src, tail = tail or f.read(chunk), b""
            if not src:
                raise NrrdTruncatedError("the compressed data is cut short or damaged (compressed stream ended "
                                         "before the end-of-stream marker)")
        try:
            data = d.decompress(src, chunk)
        except zlib.error as exc:
            raise NrrdTruncatedError(f"the compressed data is cut short or damaged ({exc})") from None
        if skip:
            cut = min(skip, len(data))
            data, skip = data[cut:], skip - cut
        take = min(len(data), nbytes - filled)
        out[filled:filled + take] = data[:take]
        filled += take


def read_nrrd(path: str | os.PathLike, read_data: bool = True) -> NrrdData:
    """Read a ``.nrrd`` or ``.nhdr`` file. ``data`` has numpy shape ``sizes[::-1]``, native byte order."""
    path = Path(path)
    with open(path, "rb") as f:
        fields, keyvalues = _read_header(f)
        data_start = f.tell()
    if "datafile" in fields and "data file" not in fields:
        fields["data file"] = fields.pop("datafile")
    nrrd = NrrdData(fields, keyvalues)
    for req in ("type", "dimension", "sizes", "encoding"):
        if req not in fields:
            raise NrrdError(f"the header has no '{req}' field")
    type_name = fields["type"].strip().lower()
    if type_name not in NRRD_TYPES:
        raise NrrdError(f"unsupported NRRD type {fields['type']!r}")
    dtype = NRRD_TYPES[type_name]
    try:
        sizes = nrrd.sizes
        dim = int(fields["dimension"])
    except ValueError:
        raise NrrdError("bad 'sizes' or 'dimension' field") from None
    if len(sizes) != dim or any(s <= 0 for s in sizes):
        raise NrrdError(f"'sizes' {sizes} does not match 'dimension' {dim}")
    encoding = _ENCODINGS.get(fields["encoding"].strip().lower())
    if encoding is None:
        raise NrrdError(f"unsupported NRRD encoding {fields['encoding']!r}")
    if not read_data:
        return nrrd
    if dtype.itemsize > 1 and encoding not in ("ascii",):
        endian = fields.get("endian", "").strip().lower()
        if endian not in ("little", "big"):
            raise NrrdError("the header has no valid 'endian' field")
        file_dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    else:
        file_dtype = dtype
    count = int(np.prod(sizes, dtype=np.int64))
    nbytes = count * dtype.itemsize
    line_skip = int(fields.get("line skip", fields.get("lineskip", "0")))
    byte_skip = int(fields.get("byte skip", fields.get("byteskip", "0")))

    files = _data_files(fields, path) if "data file" in fields else [path]
    if encoding in ("raw", "gzip") and len(files) == 1 and not (encoding == "gzip" and byte_skip == -1):
        # the common case (attached or one data file, raw or gzip): decoded straight into the array, one copy
        if not files[0].is_file():
            raise NrrdError(f"the data file '{files[0]}' named in the header does not exist")
        buffer = np.empty(count, dtype=file_dtype)
        with open(files[0], "rb") as f:
            if files[0] == path:
                f.seek(data_start)
            _read_into(f, memoryview(buffer.view(np.uint8)), encoding, line_skip, byte_skip)
        if not buffer.dtype.isnative:
            buffer.byteswap(inplace=True)
        nrrd.data = buffer.view(dtype).reshape(sizes[::-1])
        return nrrd
    attached = b""
    if "data file" not in fields:
        with open(path, "rb") as f:
            f.seek(data_start)
            attached = f.read()
    if "data file" in fields:
        chunks = []
        files = _data_files(fields, path)
        per_file = nbytes // len(files) if encoding not in ("ascii", "hex") else None
        for fp in files:
            if not fp.is_file():
                raise NrrdError(f"the data file '{fp}' named in the header does not exist")
            chunks.append(_decode(fp.read_bytes(), encoding, per_file or 0, line_skip, byte_skip))
        raw = b"".join(chunks)
    else:
        raw = _decode(attached, encoding, nbytes, line_skip, byte_skip)

    if encoding in ("ascii", "hex"):
        if encoding == "ascii":
            text = raw.decode("latin-1").replace(",", " ").split()
            if len(text) < count:
                raise NrrdTruncatedError(f"expected {count} values, found {len(text)}")
            values = np.array(text[:count], dtype=np.float64 if dtype.kind == "f" else np.int64).astype(dtype)
        else:
            hexdigits = b"".join(raw.split())
            if len(hexdigits) < 2 * nbytes:
                raise NrrdTruncatedError(f"expected {nbytes} bytes of hex data, found {len(hexdigits) // 2}")
            values = np.frombuffer(bytes.fromhex(hexdigits[: 2 * nbytes].decode("ascii")), dtype=file_dtype)
    else:
        if len(raw) < nbytes:
            raise NrrdTruncatedError(f"expected {nbytes} bytes of data, found {len(raw)}")
        values = np.frombuffer(raw, dtype=file_dtype, count=count)
    arr = values.astype(dtype, copy=False).reshape(sizes[::-1])
    if not arr.flags.writeable or arr.base is not None:
        arr = arr.copy()
    nrrd.data = arr
    return nrrd


# --------------------------------------------------------------------------------------------- writing

#: Field order used when writing (teem/Slicer order).
_FIELD_ORDER = ["type", "dimension", "space", "space dimension", "sizes", "space directions", "kinds", "labels",
                "units", "endian", "encoding", "space units", "space origin", "measurement frame", "data file"]


def write_nrrd(
    path: str | os.PathLike,
    data: np.ndarray,
    fields: dict[str, str] | None = None,
    keyvalues: dict[str, str] | None = None,
    encoding: str = "gzip",
    data_path: str | os.PathLike | None = None,
    compresslevel: int = 1,
) -> None:
    """Write ``data`` (numpy C order: NRRD axis 0 is the LAST numpy axis) to ``path``.

    ``fields`` adds per-file fields (space, space directions, kinds, ...);
    ``type``, ``dimension``, ``sizes``, ``endian`` and ``encoding`` are filled in.
    With ``data_path`` the header is detached and the data goes to that file
    (named in the header relative to the header's folder).
    """
    arr = np.asarray(data)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    dt = arr.dtype.newbyteorder("=")
    if dt not in _WRITE_TYPE:
        raise NrrdError(f"NRRD cannot store dtype {arr.dtype}")
    encoding = _ENCODINGS.get(encoding, encoding)
    if encoding not in ("raw", "gzip"):
        raise NrrdError(f"writing encoding {encoding!r} is not supported (use raw or gzip)")
    allf = {"type": _WRITE_TYPE[dt], "dimension": str(arr.ndim), "sizes": " ".join(str(s) for s in arr.shape[::-1])}
    for k, v in (fields or {}).items():
        if k.lower() not in allf:
            allf[k.lower()] = v
    allf["endian"] = "little"
    allf["encoding"] = encoding
    path = Path(path)
    if data_path is not None:
        data_path = Path(data_path)
        rel = os.path.relpath(data_path, path.parent) if data_path.is_absolute() or data_path.parent != Path(".") \
            else str(data_path)
        allf["data file"] = rel
        data_file = data_path if data_path.is_absolute() else path.parent / data_path
    order = [k for k in _FIELD_ORDER if k in allf] + [k for k in allf if k not in _FIELD_ORDER]
    lines = ["NRRD0004", "# Complete NRRD file format specification at:",
             "# http://teem.sourceforge.net/nrrd/format.html"]
    lines += [f"{k}: {allf[k]}" for k in order]
    lines += [f"{_escape(k)}:={_escape(v)}" for k, v in (keyvalues or {}).items()]
    header = ("\n".join(lines) + "\n").encode("latin-1")
    payload = np.ascontiguousarray(arr, dtype=dt.newbyteorder("<"))
    if data_path is None:
        with open(path, "wb") as f:
            f.write(header + b"\n")
            _write_payload(f, payload, encoding, compresslevel)
    else:
        with open(data_file, "wb") as f:
            _write_payload(f, payload, encoding, compresslevel)
        with open(path, "wb") as f:
            f.write(header)


def _write_payload(f, payload: np.ndarray, encoding: str, compresslevel: int, chunk: int = 1 << 20) -> None:
    """Stream the array bytes (raw or gzip) in chunks: no second full-size copy in memory."""
    flat = memoryview(payload.reshape(-1).view(np.uint8))
    if encoding == "gzip":
        with gzip.GzipFile(filename="", fileobj=f, mode="wb", compresslevel=compresslevel, mtime=0) as gz:
            for start in range(0, len(flat), chunk):
                gz.write(flat[start:start + chunk])
    else:
        for start in range(0, len(flat), chunk):
            f.write(flat[start:start + chunk])
