"""The header elements of a plain DICOM Part 10 file, read with struct: no pydicom import, no per-element objects.

pydicom's element generator (readers._walk_plain) costs ~2.3 us an element in Python: 77 us for a 33-element
testdata header, 350 us for a CT header of ~150; and `import pydicom` alone is ~0.3 s of a run that parses any
DICOM (measured 2026-12-04, small100k tree: DICOM facts were 40% of the hashing workers' CPU). This walks the
same elements at ~0.2 us each, for the files whose structure leaves nothing to decide: it answers only when
every element it passes is well formed and it reaches the pixel data (or, given the whole file, its clean end).
Anything else — a truncation, an unknown VR, a character set other than the default, Latin-1 or UTF-8, an
undefined length outside an explicit-VR sequence, a sequence that does not close where it should — is None, and
the caller reads the file with pydicom exactly as before. tests/test_dicom_facts.py holds the two to the same
elements, on generated and on randomly damaged files.

Element encoding (DICOM PS3.5 section 7.1): little endian; explicit VR: tag (4), VR (2), then a 2-byte length,
or 2 reserved bytes and a 4-byte length for the VRs in _LONG_VRS; implicit VR: tag (4), length (4). Sequence
items (PS3.5 7.5): (FFFE,E000) with a length, or undefined length and an (FFFE,E00D) delimiter; an
undefined-length sequence ends with (FFFE,E0DD).
"""

from __future__ import annotations

from collections.abc import Callable
from struct import Struct
from struct import error as struct_error

_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})  # where dcmread's stop_before_pixels stops
META_GROUP_LENGTH, TRANSFER_SYNTAX, CHARACTER_SET = 0x00020000, 0x00020010, 0x00080005
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
                        b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
# Character sets whose text needs no decision here (pydicom decodes them without a warning); any other: pydicom.
_PLAIN_CHARSETS = frozenset({b"", b"ISO_IR 6", b"ISO_IR 100", b"ISO_IR 192"})
_IMPLICIT, _EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
# The little-endian, non-deflated, encapsulated transfer syntaxes pydicom reads as explicit VR (readers.
# _plain_syntaxes computes the same from pydicom.uid; a test holds the two equal).
ENCAPSULATED_SYNTAXES = frozenset(
    ["1.2.840.10008.1.2.4." + s for s in (
        "50", "51", "57", "70", "80", "81", "90", "91", "92", "93", "100", "100.1", "101", "101.1", "102",
        "102.1", "103", "103.1", "104", "104.1", "105", "105.1", "106", "106.1", "107", "108",
        "201", "202", "203", "204", "205")]
    + ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.7.1", "1.2.840.10008.1.2.7.2", "1.2.840.10008.1.2.7.3"])

_TAG_LENGTH = Struct("<HHL")  # implicit VR: group, element, 4-byte length; also item headers
_TAG_VR_SHORT = Struct("<HH2sH")  # explicit VR: group, element, VR, 2-byte length
_LONG_LENGTH = Struct("<L")
# The data set's explicit VR elements, read as (element << 16 | group, VR as a 16-bit number, 2-byte length): one
# number for the tag and for the VR, looked up in sets of numbers (a 2-byte bytes object is made and hashed anew
# for each element; the tag was built from two). Its walk of a plain header, ~60 elements, went from 22 to 18 us.
_SWAPPED_VR_SHORT = Struct("<LHH")


def _swapped(tag: int) -> int:
    return (tag & 0xFFFF) << 16 | tag >> 16


def _vr_number(vr: bytes) -> int:
    return int.from_bytes(vr, "little")


_SHORT_VR_NUMBERS = frozenset(map(_vr_number, _SHORT_VRS))
_LONG_VR_NUMBERS = frozenset(map(_vr_number, _LONG_VRS))
_SQ_NUMBER = _vr_number(b"SQ")
_PIXEL_SWAPPED = frozenset(map(_swapped, PIXEL_TAGS))


class _Odd(Exception):
    """Anything the walk does not decide: pydicom reads the file."""


def _header(head: bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value length, position of the value) of the element at `pos`."""
    end = len(head)
    if implicit:
        if pos + 8 > end:
            raise _Odd
        group, element, length = _TAG_LENGTH.unpack_from(head, pos)
        return group << 16 | element, None, length, pos + 8
    if pos + 8 > end:
        raise _Odd
    group, element, vr, length = _TAG_VR_SHORT.unpack_from(head, pos)
    if vr in _SHORT_VRS:
        return group << 16 | element, vr, length, pos + 8
    if vr not in _LONG_VRS or pos + 12 > end:
        raise _Odd
    return group << 16 | element, vr, _LONG_LENGTH.unpack_from(head, pos + 8)[0], pos + 12


def _skip_sequence(head: bytes, pos: int, implicit: bool, depth: int = 0) -> int:
    """The position after the undefined-length sequence whose items start at `pos`."""
    if depth > 16:
        raise _Odd
    end = len(head)
    while True:
        if pos + 8 > end:
            raise _Odd
        group, element, length = _TAG_LENGTH.unpack_from(head, pos)
        tag, pos = group << 16 | element, pos + 8
        if tag == _SEQUENCE_END:
            if length:
                raise _Odd
            return pos
        if tag != _ITEM:
            raise _Odd
        if length != _UNDEFINED:
            pos = _skip_elements(head, pos, pos + length, implicit, depth)
            continue
        while True:  # an undefined-length item: its elements, up to the item delimiter
            if pos + 8 > end:
                raise _Odd
            group, element, length = _TAG_LENGTH.unpack_from(head, pos)
            if group << 16 | element == _ITEM_END:
                if length:
                    raise _Odd
                pos += 8
                break
            pos = _skip_element(head, pos, implicit, depth)


def _skip_elements(head: bytes, pos: int, stop: int, implicit: bool, depth: int) -> int:
    """Walk the elements of a defined-length item from `pos` to exactly `stop`."""
    if stop > len(head):
        raise _Odd
    while pos < stop:
        pos = _skip_element(head, pos, implicit, depth)
    if pos != stop:
        raise _Odd
    return pos


def _skip_element(head: bytes, pos: int, implicit: bool, depth: int) -> int:
    tag, vr, length, pos = _header(head, pos, implicit)
    if tag >> 16 == 0xFFFE:
        raise _Odd
    if length == _UNDEFINED:
        if vr != b"SQ":
            raise _Odd
        return _skip_sequence(head, pos, implicit, depth + 1)
    if pos + length > len(head):
        raise _Odd
    if vr == b"SQ":  # a defined-length sequence: its items, each walked to its end
        stop = pos + length
        while pos < stop:
            if pos + 8 > stop:
                raise _Odd
            group, element, item_length = _TAG_LENGTH.unpack_from(head, pos)
            if group << 16 | element != _ITEM or item_length == _UNDEFINED:
                raise _Odd
            pos = _skip_elements(head, pos + 8, pos + 8 + item_length, implicit, depth + 1)
        if pos != stop:
            raise _Odd
        return pos
    return pos + length


def plain_elements(head: bytes, wanted: frozenset[int], *, complete: bool,
                   pixels_at: list[tuple[int, int]] | None = None) -> dict[int, bytes] | None:
    """The raw values of the `wanted` tags (and of the Specific Character Set, as pydicom's generator always
    reads it) in the dataset of a plain DICOM Part 10 file whose first bytes are `head` (`complete`: the whole
    file), or None when the walk does not decide it (see the module's text). Given `pixels_at`, where the walk met
    the pixel data is appended to it, as pixel_data_at says it: where the values are given, that is its answer."""
    try:
        return _plain_elements(head, wanted, complete, pixels_at)
    except _Odd:
        return None


def pixel_data_at(head: bytes) -> tuple[int, int] | None:
    """(where the pixel data's value starts, its declared length: UNDEFINED_LENGTH for encapsulated pixel data) in a
    plain DICOM Part 10 file whose first bytes are `head`, when the walk reaches a Pixel Data element within them."""
    at: list[tuple[int, int]] = []
    try:
        _plain_elements(head, frozenset(), False, at)
    except _Odd:
        pass  # (an odd character set, met before the pixel data, leaves the structure as walked)
    return at[0] if at else None


UNDEFINED_LENGTH = _UNDEFINED
_ITEM_LE, _SEQUENCE_END_LE = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"  # (FFFE,E000), (FFFE,E0DD) as written


def encapsulated_whole(read_at: Callable[[int, int], bytes], start: int, size: int) -> bool:
    """Whether encapsulated pixel data starting at `start` in a file of `size` bytes end within it: the file ends
    with their sequence delimiter (a whole file, but for elements after the pixel data: one small read, a cloud
    object's one request), or a walk of their items' headers (8 bytes each: the Basic Offset Table, then a fragment
    or more per frame; `read_at(offset, n)` gives fewer bytes at the file's end) reaches the delimiter. False where
    the file ends first, inside an item or before the delimiter: cut short. Items of the encapsulated syntaxes are
    little endian (PS3.5 A.4); what is no item is not decided here (a decoder will tell): True."""
    if size >= start + 8 and read_at(size - 8, 8) == _SEQUENCE_END_LE + b"\0\0\0\0":
        return True
    pos = start
    while True:
        header = read_at(pos, 8)
        if len(header) < 8:
            return False
        if header[:4] == _SEQUENCE_END_LE:
            return True
        if header[:4] != _ITEM_LE or header[4:] == b"\xff\xff\xff\xff":  # (fragments have a defined length)
            return True
        pos += 8 + int.from_bytes(header[4:], "little")


def _plain_elements(head: bytes, wanted: frozenset[int], complete: bool,
                    pixels_at: list[tuple[int, int]] | None = None) -> dict[int, bytes] | None:
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
        return None
    pos, syntax, end = 132, None, len(head)
    short, short_vrs = _TAG_VR_SHORT.unpack_from, _SHORT_VRS
    while pos + 8 <= end:  # the file meta group (explicit VR), its elements read inline as below
        group, element, vr, length = short(head, pos)
        if group != 2:
            break
        if vr in short_vrs:
            value = pos + 8
        elif vr in _LONG_VRS and pos + 12 <= end:
            length, value = _LONG_LENGTH.unpack_from(head, pos + 8)[0], pos + 12
        else:
            raise _Odd
        if length == _UNDEFINED or value + length > end or vr == b"SQ":
            raise _Odd
        if element == TRANSFER_SYNTAX & 0xFFFF:
            if vr != b"UI":
                raise _Odd
            syntax = head[value: value + length]
        pos = value + length
    else:
        if head[pos: pos + 2] == b"\x02\x00":  # a meta element cut inside its header
            raise _Odd
    if syntax is None:
        return None
    syntax_text = syntax.rstrip(b"\x00 ").decode("ascii", "replace")
    implicit = True if syntax_text == _IMPLICIT else False if (
        syntax_text == _EXPLICIT or syntax_text in ENCAPSULATED_SYNTAXES) else None
    if implicit is None:
        return None
    first = head[pos: pos + 6]
    if len(first) < 6 or first[:2] == b"\x00\x00":  # a command set, or (almost) nothing: dcmread decides
        return None
    if implicit == (0x40 < first[4] < 0x5B and 0x40 < first[5] < 0x5B):  # dcmread would switch (and warn)
        return None
    found: dict[int, bytes] = {}
    kept = _kept(wanted)
    if not implicit:
        # The usual element inline, and its checks in the order of their frequency: a short VR (no undefined
        # length, no sequence), a group neither the pixel data's, the meta group's nor the items' (FFFE)
        element_of, short_vrs, kept_tag = _SWAPPED_VR_SHORT.unpack_from, _SHORT_VR_NUMBERS, _kept_swapped(kept).get
        long_vrs, long_length, pixel_tags = _LONG_VR_NUMBERS, _LONG_LENGTH.unpack_from, _PIXEL_SWAPPED
        # (an element's header running past `head`: unpack_from raises struct.error, told as _Odd below; one test an
        # element fewer)
        try:
            while pos < end:
                swapped, vr, length = element_of(head, pos)
                if vr in short_vrs:
                    value = pos + 8
                    # (its group is 3..0x7FDF, as nearly every element's: one test; else the pixel data's, the meta
                    # group's or the items')
                    if (swapped - 3) & 0xFFFF >= 0x7FDD:
                        group = swapped & 0xFFFF
                        if swapped in pixel_tags:
                            if pixels_at is not None:
                                pixels_at.append((value, length))
                            return _checked(found)
                        if group == 0xFFFE or group == 0x0002:
                            raise _Odd
                    # (a value past the end is told once the loop ends: its position is then past the end)
                    if (tag := kept_tag(swapped)) is not None:
                        found[tag] = head[value: value + length]
                    pos = value + length
                    continue
                if vr not in long_vrs:
                    raise _Odd
                length, value = long_length(head, pos + 8)[0], pos + 12
                if swapped in pixel_tags:
                    if pixels_at is not None:
                        pixels_at.append((value, length))
                    return _checked(found)
                if (group := swapped & 0xFFFF) == 0xFFFE or group == 0x0002:
                    raise _Odd
                tag = kept_tag(swapped)
                if length == _UNDEFINED:
                    if vr != _SQ_NUMBER or _swapped(swapped) in wanted:
                        raise _Odd
                    pos = _skip_sequence(head, value, False)
                    continue
                if value + length > end:
                    raise _Odd
                if tag is not None:
                    if vr == _SQ_NUMBER:
                        raise _Odd
                    found[tag] = head[value: value + length]
                # else skipped, as pydicom's generator skips an unwanted element of defined length (a sequence too)
                pos = value + length
        except struct_error:
            raise _Odd from None
        if pos > end:
            raise _Odd
    else:
        while pos < end:
            tag, vr, length, value = _header(head, pos, True)
            if tag in PIXEL_TAGS:
                if pixels_at is not None:
                    pixels_at.append((value, length))
                return _checked(found)
            if tag >> 16 == 0xFFFE or tag >> 16 == 0x0002:
                raise _Odd
            if length == _UNDEFINED:  # (no VR to say it is a sequence: pydicom decides)
                raise _Odd
            if value + length > end:
                raise _Odd
            if tag in kept:
                found[tag] = head[value: value + length]
            pos = value + length
    if not complete:  # ended where `head` ends, not at the pixel data: the header may go on
        return None
    return _checked(found)


_KEPT: dict[frozenset[int], frozenset[int]] = {}


def _kept(wanted: frozenset[int]) -> frozenset[int]:
    """`wanted` and the Specific Character Set (one set lookup an element, not two)."""
    kept = _KEPT.get(wanted)
    if kept is None:
        kept = _KEPT[wanted] = wanted | {CHARACTER_SET}
    return kept


_KEPT_SWAPPED: dict[frozenset[int], dict[int, int]] = {}


def _kept_swapped(kept: frozenset[int]) -> dict[int, int]:
    """`kept` (tags) by their swapped number, as _SWAPPED_VR_SHORT reads them: swapped -> tag."""
    by_swapped = _KEPT_SWAPPED.get(kept)
    if by_swapped is None:
        by_swapped = _KEPT_SWAPPED[kept] = {_swapped(tag): tag for tag in kept}
    return by_swapped


def _checked(found: dict[int, bytes]) -> dict[int, bytes]:
    charset = found.get(CHARACTER_SET)
    if charset is not None and charset.strip(b"\x00 ") not in _PLAIN_CHARSETS:
        raise _Odd
    return found
