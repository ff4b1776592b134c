"""Reading GGUF files quickly and defensively.

gguf-py's `GGUFReader` turns every array element into its own numpy object: a 262,144-token
vocabulary takes tens of seconds and hundreds of MB. Here the header is read with `struct`,
numeric arrays are numpy views of one memory map, and string arrays are only located (one
offset per string) until `contents()` asks for them.

The API is the part of `gguf.GGUFReader` the project uses, with the same types: `fields`,
`get_field(key).contents()`, `tensors` (gguf-py's own `ReaderTensor`: `.name`, `.tensor_type`,
`.shape` in GGUF dim order, `.n_elements`, `.n_bytes`, `.data_offset`, `.data` as a view of
the map, typed or raw bytes exactly as gguf-py gives it), `data_offset`, `alignment`.

Every length, count, offset and size is checked against the file before it is used, so a
corrupt file raises ModelError naming the problem (never a traceback, a hang, or an allocation
sized by a lying count). The tensor layout rule is llama.cpp's: tensors follow each other in
table order, each at the aligned end of the one before.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, ReaderTensor
from gguf.quants import quant_shape_to_byte_shape

from .errors import ModelError

MAX_DIMS = 4
MAX_STRINGS = 1 << 24  # string arrays walk element by element: bound the walk (vocabularies ~1M)
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_SCALARS = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4", GGUFValueType.UINT64: "<u8", GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT64: "<f8", GGUFValueType.BOOL: "?",
}
# tensor types gguf-py hands out as typed arrays (all others as raw bytes in their block shape)
_TYPED = {GGMLQuantizationType.F16: np.float16, GGMLQuantizationType.F32: np.float32,
          GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8,
          GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
          GGMLQuantizationType.I64: np.int64}


class Field:
    """One metadata key; `contents()` gives what gguf-py's ReaderField.contents() gives."""

    def __init__(self, offset: int, name: str, types: list[GGUFValueType], value=None,
                 reader: GGUFFile | None = None, starts: np.ndarray | None = None):
        self.offset, self.name, self.types = offset, name, types
        self._value, self._reader, self._starts = value, reader, starts

    def __len__(self) -> int:
        """Elements of an array (1 for a scalar or string)."""
        if self._starts is not None:
            return len(self._starts)
        return len(self._value) if isinstance(self._value, np.ndarray) else 1

    def contents(self, index_or_slice: int | slice = slice(None)):
        if self._starts is not None:  # an array of strings, decoded on demand
            if isinstance(index_or_slice, slice):
                starts = self._starts[index_or_slice]
                if index_or_slice.step in (None, 1):  # a run of neighbours: decoded in one pass
                    return self._reader._strings(starts, self.name)
                return [self._reader._string_at(int(p), self.name) for p in starts]
            return self._reader._string_at(int(self._starts[index_or_slice]), self.name)
        if isinstance(self._value, np.ndarray):
            return self._value[index_or_slice].tolist()
        return self._value


class GGUFFile:
    """A validated GGUF file (little-endian, version 2 or 3), memory-mapped read-only."""

    alignment = 32

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.data = _map(self.path)
        self._buf = memoryview(self.data)
        self._size = len(self.data)
        self.fields: OrderedDict[str, Field] = OrderedDict()
        self.tensors: list[ReaderTensor] = []
        try:
            self._parse()
        except struct.error:  # a read past the end: unpack_from checks every offset
            raise self._error("ends inside its header (truncated)") from None

    def get_field(self, key: str) -> Field | None:
        return self.fields.get(key)

    def get_tensor(self, idx: int) -> ReaderTensor:
        return self.tensors[idx]

    # ---- parsing

    def _error(self, what: str) -> ModelError:
        return ModelError(f"{self.path} {what}; it is not a readable GGUF file (re-download or re-convert it)")

    def _parse(self) -> None:
        if bytes(self._buf[:4]) != b"GGUF":
            raise self._error("does not start with the GGUF magic")
        version = _U32.unpack_from(self._buf, 4)[0]
        if version & 0xFFFF == 0 and version:
            raise self._error("is big-endian, which loopcli does not read")
        if version not in (2, 3):
            raise self._error(f"has GGUF version {version} (supported: 2, 3)")
        n_tensors, n_kv = struct.unpack_from("<QQ", self._buf, 8)
        self.fields["GGUF.version"] = Field(4, "GGUF.version", [GGUFValueType.UINT32], version)
        self.fields["GGUF.tensor_count"] = Field(8, "GGUF.tensor_count", [GGUFValueType.UINT64], n_tensors)
        self.fields["GGUF.kv_count"] = Field(16, "GGUF.kv_count", [GGUFValueType.UINT64], n_kv)
        pos = 24
        # the smallest key/value takes 13 bytes, the smallest tensor info 32: counts must fit
        if n_kv * 13 + n_tensors * 32 > self._size - pos:
            raise self._error(f"claims {n_kv} keys and {n_tensors} tensors, more than its "
                              f"{self._size} bytes can hold (truncated?)")
        for _ in range(n_kv):
            pos = self._read_kv(pos)
        infos = []
        for _ in range(n_tensors):
            info, pos = self._read_tensor_info(pos)
            infos.append(info)
        align = self.fields.get("general.alignment")
        if align is not None:
            if align.types != [GGUFValueType.UINT32] or not _power_of_two(align.contents()):
                raise self._error("has a general.alignment that is not a power of two (u32)")
            self.alignment = align.contents()
        self.data_offset = _aligned(pos, self.alignment)
        self._build_tensors(infos)

    def _read_string(self, pos: int, what: str) -> tuple[str, int]:
        n = _U64.unpack_from(self._buf, pos)[0]
        if n > self._size - pos - 8:
            raise self._error(f"has a {what} of {n} bytes at offset {pos}, past the end of the file "
                              "(truncated?)")
        return self._decode(pos + 8, n, what), pos + 8 + n

    def _decode(self, start: int, n: int, what: str) -> str:
        try:
            return str(self._buf[start:start + n], "utf-8")
        except UnicodeDecodeError:
            raise self._error(f"has a {what} at offset {start} that is not UTF-8") from None

    def _string_at(self, pos: int, key: str) -> str:
        n = _U64.unpack_from(self._buf, pos)[0]  # checked when the array was located
        return self._decode(pos + 8, n, f"string in {key}")

    def _strings(self, starts: np.ndarray, key: str) -> list[str]:
        """Neighbouring strings whose length fields sit at `starts`, decoded in one pass: each 8-byte
        length becomes one 0xFF byte (never part of UTF-8), the whole run is decoded with
        surrogateescape (0xFF -> U+DCFF, a character valid UTF-8 never yields) and split there."""
        if len(starts) < 64:
            return [self._string_at(int(p), key) for p in starts]
        first, last = int(starts[0]), int(starts[-1])
        end = last + 8 + _U64.unpack_from(self._buf, last)[0]
        run = np.array(self.data[first:end])
        rel = starts - first
        run[rel] = 0xFF
        edges = np.zeros(len(run) + 8, dtype=np.int32)  # +1 where a length's bytes 2-8 begin, -1 after
        edges[rel + 1] = 1
        edges[rel + 8] = -1
        text = run[np.cumsum(edges[:len(run)]) == 0].tobytes().decode("utf-8", "surrogateescape")
        parts = text.split("\udcff")
        if len(parts) != len(starts) + 1 or _ESCAPED.search(text):
            for p in starts:  # some string is not UTF-8: find and name it
                self._string_at(int(p), key)
        return parts[1:]

    def _value_type(self, raw: int, what: str) -> GGUFValueType:
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self._error(f"has {what} of unknown value type {raw}") from None

    def _read_kv(self, pos: int) -> int:
        start = pos
        key, pos = self._read_string(pos, "key")
        if key in self.fields:
            raise self._error(f"has the key {key} twice")
        vtype = self._value_type(_U32.unpack_from(self._buf, pos)[0], f"key {key}")
        pos += 4
        if vtype == GGUFValueType.STRING:
            value, pos = self._read_string(pos, f"value of {key}")
            self.fields[key] = Field(start, key, [vtype], value)
        elif vtype != GGUFValueType.ARRAY:
            dtype = np.dtype(_SCALARS[vtype])
            value = self._array(pos, dtype, 1, key)[0].item()
            self.fields[key] = Field(start, key, [vtype], value)
            pos += dtype.itemsize
        else:
            sub = self._value_type(_U32.unpack_from(self._buf, pos)[0], f"array {key}")
            n = _U64.unpack_from(self._buf, pos + 4)[0]
            pos += 12
            if sub == GGUFValueType.ARRAY:
                raise self._error(f"has a nested array in {key}, which loopcli does not read")
            types = [vtype, sub] if n else [vtype]  # as gguf-py: no element, no element type
            if sub == GGUFValueType.STRING:
                starts, pos = self._locate_strings(pos, n, key)
                self.fields[key] = Field(start, key, types, reader=self, starts=starts)
            else:
                dtype = np.dtype(_SCALARS[sub])
                self.fields[key] = Field(start, key, types, self._array(pos, dtype, n, key))
                pos += n * dtype.itemsize
        return pos

    def _array(self, pos: int, dtype, n: int, what: str) -> np.ndarray:
        """n items at pos, a view of the map (gguf-py's type: np.memmap)."""
        dtype = np.dtype(dtype)
        if n * dtype.itemsize > self._size - pos:
            raise self._error(f"claims {n} elements for {what} at offset {pos}, past the end of the file "
                              "(truncated?)")
        return self.data[pos:pos + n * dtype.itemsize].view(dtype)

    def _locate_strings(self, pos: int, n: int, key: str) -> tuple[np.ndarray, int]:
        if n > MAX_STRINGS or n * 8 > self._size - pos:
            raise self._error(f"claims {n} strings in {key}, more than the file holds (truncated?)")
        starts: list[int] = []
        append, unpack, buf, size = starts.append, _U64.unpack_from, self._buf, self._size
        for _ in range(n):  # each string's length gives the next one's place
            if pos > size:
                break
            append(pos)
            pos += 8 + unpack(buf, pos)[0]
        if pos > size:
            raise self._error(f"has strings in {key} that run past the end of the file (truncated?)")
        return np.array(starts, dtype=np.int64), pos

    def _read_tensor_info(self, pos: int) -> tuple[tuple, int]:
        name, pos = self._read_string(pos, "tensor name")
        n_dims = _U32.unpack_from(self._buf, pos)[0]
        if not 1 <= n_dims <= MAX_DIMS:
            raise self._error(f"gives tensor {name} {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        dims = self._array(pos + 4, "<u8", n_dims, f"the shape of {name}")
        pos += 4 + 8 * n_dims
        raw_type, offset = struct.unpack_from("<IQ", self._buf, pos)
        return (name, dims, raw_type, offset), pos + 12

    def _build_tensors(self, infos: list[tuple]) -> None:
        end = 0  # of the previous tensor, relative to data_offset
        names: set[str] = set()
        previous = None
        for name, dims, raw_type, offset in infos:
            if name in names:
                raise self._error(f"has two tensors named {name}")
            names.add(name)
            qtype = _tensor_type(raw_type)
            if qtype is None:
                raise self._error(f"gives tensor {name} the unknown type {raw_type}")
            shape = [int(d) for d in dims]
            if 0 in shape:
                raise self._error(f"gives tensor {name} a dimension of 0 ({shape})")
            n_elements = 1
            for d in shape:
                n_elements *= d
            block, type_size = GGML_QUANT_SIZES[qtype]
            if n_elements >= 1 << 62 or shape[0] % block:
                raise self._error(f"gives tensor {name} the shape {shape}, which type {qtype.name} "
                                  f"cannot hold (rows in blocks of {block})")
            n_bytes = n_elements // block * type_size
            if offset != _aligned(end, self.alignment):
                where = f"after {previous} ends at {end}" if previous else "as the first tensor"
                raise self._error(f"puts tensor {name} at data offset {offset}, but {where} it should "
                                  f"start at {_aligned(end, self.alignment)}: a tensor's type, shape "
                                  "or offset is wrong")
            start = self.data_offset + offset
            if start + n_bytes > self._size:
                raise self._error(f"is truncated: tensor {name} ({qtype.name}, {n_bytes} bytes) ends at "
                                  f"byte {start + n_bytes}, the file has {self._size}")
            np_shape = tuple(reversed(shape))
            data = self._array(start, _TYPED.get(qtype, np.uint8), n_elements if qtype in _TYPED else n_bytes, name)
            if qtype not in _TYPED:
                np_shape = quant_shape_to_byte_shape(np_shape, qtype)
            self.tensors.append(ReaderTensor(name=name, tensor_type=qtype, shape=dims, n_elements=n_elements,
                                             n_bytes=n_bytes, data_offset=start,
                                             data=data.reshape(np_shape), field=None))
            end, previous = offset + n_bytes, name
        if self.tensors and self._size > self.data_offset + _aligned(end, self.alignment):
            extra = self._size - self.data_offset - end
            raise self._error(f"has {extra} bytes after its last tensor {previous}: a tensor's type "
                              "or shape, or the tensor count, is wrong")


_ESCAPED = re.compile("[\udc80-\udcfe]")  # bytes that were not UTF-8, the separator excluded


def _map(path: Path) -> np.ndarray:
    """The file as a read-only byte array; refuses directories, FIFOs and devices without
    blocking on them (O_NONBLOCK, then fstat)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ModelError(f"{path} does not exist; give a .gguf file") from None
    except OSError as exc:
        raise ModelError(f"{path} cannot be opened ({exc.strerror}); give a readable .gguf file") from None
    st = os.fstat(fd)
    problem = None
    if stat.S_ISDIR(st.st_mode):
        problem = f"{path} is a directory; give a .gguf file"
    elif not stat.S_ISREG(st.st_mode):
        problem = f"{path} is not a regular file (a FIFO, socket or device); give a .gguf file"
    elif st.st_size < 24:
        problem = (f"{path} has {st.st_size} bytes, too few for a GGUF header; it is not a readable "
                   "GGUF file (re-download or re-convert it)")
    if problem:
        os.close(fd)
        raise ModelError(problem)
    with os.fdopen(fd, "rb") as f:
        return np.memmap(f, mode="r")


def _tensor_type(raw: int) -> GGMLQuantizationType | None:
    try:
        qtype = GGMLQuantizationType(raw)
    except ValueError:
        return None
    return qtype if qtype in GGML_QUANT_SIZES else None


def _aligned(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def _power_of_two(n) -> bool:
    return isinstance(n, int) and n > 0 and n & (n - 1) == 0
