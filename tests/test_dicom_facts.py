"""DICOM header facts: the plain path (pydicom's element generator, no Dataset) gives exactly what dcmread gives.

readers._dicom_facts reads a plain Part 10 file's header with the generator dcmread itself reads with, and hands
every other file to dcmread. These tests hold the two to the same facts, and the same error, on plain files, on
each kind of file that must go to dcmread, and on random damage to a plain file (hypothesis)."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from chorus_batch.validate import dicom_walk, readers
from chorus_batch.validate.rules import KIND_DICOM


def dicom(syntax=ExplicitVRLittleEndian, *, preamble: bool = True, private_bytes: int = 0, pixels: int = 64,
          meta: bool = True, **attributes) -> bytes:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid(entropy_srcs=["x"])
    ds.PatientID, ds.PatientName = "000177", "Doe^Jane"
    ds.StudyDate, ds.StudyTime, ds.Modality = "20200102", "145700", "CT"
    ds.AccessionNumber, ds.SeriesNumber, ds.InstanceNumber = "177038", 3, 7
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series"])
    if private_bytes:  # a vendor's private header before the patient module (as group 0009 lies)
        ds.add_new(0x00090010, "LO", "VENDOR")
        ds.add_new(0x00091001, "OB", b"\x01" * private_bytes)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if pixels and syntax != JPEGBaseline8Bit:
        ds.Rows = ds.Columns = 4
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = b"\x07" * pixels
    if meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    if preamble:
        ds.save_as(out, enforce_file_format=True, little_endian=syntax != ExplicitVRBigEndian,
                   implicit_vr=syntax == ImplicitVRLittleEndian)
    else:
        ds.save_as(out, enforce_file_format=False, little_endian=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return out.getvalue()


def by_dcmread(data: bytes, monkeypatch) -> dict:
    with monkeypatch.context() as patched:
        patched.setattr(readers, "_dicom_elements_plain", lambda head, complete, **_: None)
        return readers.parse_facts(KIND_DICOM, io.BytesIO(data))


def facts(data: bytes) -> dict:
    return readers.parse_facts(KIND_DICOM, io.BytesIO(data))


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit])
def test_a_plain_file_is_read_without_dcmread_and_gives_its_facts(syntax, monkeypatch):
    data = dicom(syntax)
    assert readers._dicom_elements_plain(data, complete=True) is not None  # the plain path took it
    got = facts(data)
    assert got == by_dcmread(data, monkeypatch)
    assert got["patient_id"] == "000177" and got["patient_name"] == readers.IDENTIFYING_FILLED and got["instance_number"] == "7"
    assert got["series_number"] == "3" and got["modality"] == "CT" and "error" not in got


@pytest.mark.parametrize("case, data", [
    ("big endian", lambda: dicom(ExplicitVRBigEndian)),
    ("deflated", lambda: dicom(DeflatedExplicitVRLittleEndian)),
    ("no preamble", lambda: dicom(preamble=False)),
    ("no file meta", lambda: dicom(meta=False, preamble=False)),
    ("a header longer than the first bytes read", lambda: dicom(private_bytes=readers.DICOM_HEAD_BYTES)),
    ("truncated in the header", lambda: dicom()[:300]),
    ("not DICOM", lambda: b"\x00" * 128 + b"NOPE" + b"\x01" * 400),
    ("empty dataset", lambda: dicom()[: dicom().index(b"\x08\x00\x16\x00")]),
])
def test_a_file_that_is_not_plain_is_read_by_dcmread(case, data, monkeypatch):
    data = data()
    head = data[: readers.DICOM_HEAD_BYTES]
    assert readers._dicom_elements_plain(head, complete=len(head) < readers.DICOM_HEAD_BYTES) is None
    assert facts(data) == by_dcmread(data, monkeypatch)


def test_a_header_longer_than_the_first_bytes_read_still_gives_its_facts():
    got = facts(dicom(private_bytes=readers.DICOM_HEAD_BYTES))
    assert got["patient_id"] == "000177" and "error" not in got


@pytest.mark.parametrize("private", [100, 1500, 5000])
def test_a_header_longer_than_the_first_bytes_read_cut_short_is_told_as_a_short_one_is(private, monkeypatch):
    """A file whose header runs past the first DICOM_HEAD_BYTES (a large private or multi-frame header), cut inside
    it by an interrupted copy, went to dcmread, which read what was there without a word: no facts, no error (a
    short header cut alike: 'the file ends inside its DICOM header'). It is read on, doubling, and told alike; whole,
    it gives the facts dcmread gives. (The first bytes read pinned at 1 KiB.)"""
    monkeypatch.setattr(readers, "DICOM_HEAD_BYTES", 1024)
    whole = dicom(private_bytes=private)
    cut = whole[: whole.index(b"\x01" * 50) + private // 2]  # inside the private element's value
    assert len(cut) > 100
    with pytest.raises(readers.BadContent, match="ends inside its DICOM header"):
        readers._dicom_facts(io.BytesIO(cut))
    assert facts(whole) == by_dcmread(whole, monkeypatch) and facts(whole)["patient_id"] == "000177"


def test_a_header_longer_than_the_most_read_for_it_cut_short_is_told_as_a_short_one_is(monkeypatch):
    """Past DICOM_HEAD_MAX_BYTES (16 MiB: a large private or embedded-document element) the header goes to dcmread,
    which skips an element it is not asked for by seeking past it: a copy cut inside that element read as a whole
    file without pixel data, with its facts and no error. Told alike, by the hashing worker's one read too; whole,
    it gives dcmread's facts. (The bytes read pinned at 1 KiB, at most 4 KiB.)"""
    import hashlib

    from chorus_batch.sources.base import HashingReader, parse_through

    monkeypatch.setattr(readers, "DICOM_HEAD_BYTES", 1024)
    monkeypatch.setattr(readers, "DICOM_HEAD_MAX_BYTES", 4096)
    whole = dicom(private_bytes=20_000)
    cut = whole[: whole.index(b"\x01" * 50) + 12_000]  # inside the private element's value, past the 4 KiB
    assert facts(cut) == {"error": "the file ends inside its DICOM header (an interrupted copy?): copy the file again"}
    reader = HashingReader(io.BytesIO(cut).read, hashlib.md5(), len(cut))
    assert json.loads(parse_through(readers.parser(KIND_DICOM), reader)) == facts(cut)
    got = facts(whole)
    assert got == by_dcmread(whole, monkeypatch) and got["patient_id"] == "000177" and "error" not in got


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_pixels_cut_short_are_told_by_the_files_size_not_read(syntax, monkeypatch):
    """A file cut inside its pixel data (an interrupted copy: most of an image's bytes are pixels) gave its header's
    facts and no error: the site was told nothing of an image no viewer opens. The pixel data's declared end is
    compared with the file's size; the pixels are still not read, and either path that reads the header tells it."""
    whole = dicom(syntax, pixels=4096)
    data = whole[:-2048]
    assert readers._dicom_elements_plain(data, complete=True) is not None
    got = facts(data)
    assert got == by_dcmread(data, monkeypatch)
    assert got["error"].startswith(readers.PIXELS_CUT) and f"{len(data):,} bytes" in got["error"], got
    assert got["error"].endswith("copy the file again")
    assert "error" not in facts(whole) and facts(whole + b"\x00" * 8).get("patient_id") == "000177"


def test_pixels_cut_short_in_a_big_endian_file_are_told(monkeypatch):
    """A big-endian file (Explicit VR Big Endian, read by dcmread) cut inside its pixel data gave its header's facts
    and no error: the pixel data were looked for by the little-endian walk alone, which reads no such file. dcmread
    stops before them: their element is read there, in the file's byte order; by the hashing worker's reader too."""
    import hashlib

    from chorus_batch.sources.base import HashingReader, parse_through

    whole = dicom(ExplicitVRBigEndian, pixels=4096)
    cut = whole[:-2048]
    got = facts(cut)
    assert got["error"].startswith(readers.PIXELS_CUT) and f"{len(whole):,}" in got["error"], got
    reader = HashingReader(io.BytesIO(cut).read, hashlib.md5(), len(cut))
    assert json.loads(parse_through(readers.parser(KIND_DICOM), reader)) == got
    assert "error" not in facts(whole) and facts(whole)["patient_id"] == "000177"
    assert "error" not in facts(dicom(ExplicitVRBigEndian, pixels=0))  # no pixel data: nothing to cut


def test_pixels_cut_short_after_an_element_the_struct_walk_leaves_to_pydicom_are_told(monkeypatch):
    """A private element of undefined length with VR UN (a sequence a de-identification tool wrote so) before the
    pixel data: the struct walk leaves the file to pydicom's generator, which read it but said nothing of where the
    pixel data were, so a copy cut inside them read as whole. The generator's stop before them says where."""
    whole = dicom(pixels=4096)
    at = whole.index(b"\x10\x00\x10\x00")  # (0010,0010) PatientName, after the vendor's group 0009
    private = (b"\x09\x00\x10\x00LO\x06\x00VENDOR" + b"\x09\x00\x02\x10UN\x00\x00\xff\xff\xff\xff"
               + b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    whole = whole[:at] + private + whole[at:]
    assert dicom_walk.plain_elements(whole, readers._DICOM_TAG_SET, complete=True) is None  # not the struct walk's
    cut = whole[:-2048]
    got = facts(cut)
    assert got["error"].startswith(readers.PIXELS_CUT) and f"{len(whole):,}" in got["error"], got
    assert got == by_dcmread(cut, monkeypatch)
    assert "error" not in facts(whole) and facts(whole)["patient_id"] == "000177"


def test_pixels_cut_short_in_a_large_file_are_told_without_reading_them():
    """A file larger than the bytes read for its header, as a hashing worker parses it (through the reader that
    hashes what it reads): the size is asked of the reader, the pixels are not read for it."""
    import hashlib

    from chorus_batch.sources.base import HashingReader

    whole = dicom(pixels=8 << 20)
    for data, cut in ((whole, False), (whole[: len(whole) // 2], True)):
        stream = io.BytesIO(data)
        reader = HashingReader(stream.read, hashlib.md5(), len(data))
        got = readers.parse_facts(KIND_DICOM, reader)
        assert got.get("error", "").startswith(readers.PIXELS_CUT) is cut, got
        assert reader.done <= 2 * readers.DICOM_HEAD_BYTES  # the header's bytes, not the pixels'
        assert got == facts(data)


def encapsulated(frames: int = 3, fragment: int = 5000, *, trailing: int = 0) -> bytes:
    """A JPEG Baseline file with `frames` frames of compressed (encapsulated) pixel data, as PACS send most images."""
    import pydicom
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(io.BytesIO(dicom(JPEGBaseline8Bit)))
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel, ds.NumberOfFrames = 7, 0, 1, frames
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes([k]) * fragment + b"\xff\xd9" for k in range(frames)])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    if trailing:  # an element after the pixel data (Data Set Trailing Padding): the file no longer ends with them
        ds.add_new(0xFFFCFFFC, "OB", b"\x00" * trailing)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("trailing", [0, 16])
def test_compressed_pixels_cut_short_are_told_by_their_items(trailing, monkeypatch):
    """Compressed (encapsulated) pixel data declare no length: a JPEG image cut inside them (an interrupted copy) gave
    its header's facts and no error, only an uncompressed one was told. Their items' lengths (8 bytes each) say where
    they end; a whole file is known by the delimiter it ends with, or by the walk where an element follows them."""
    whole = encapsulated(trailing=trailing)
    end = whole.rindex(b"\xfe\xff\xdd\xe0") + 8  # the pixel data's end
    assert "error" not in facts(whole) and facts(whole)["patient_id"] == "000177"
    for at in (end - 1, end - 8, end - 9, end - 5010, (whole.index(b"\xe0\x7f\x10\x00") + end) // 2):
        data = whole[:at]
        got = facts(data)
        assert got.get("error", "").startswith(readers.PIXELS_CUT) and f"{len(data):,} bytes" in got["error"], (at, got)
        assert got["error"].endswith("copy the file again") and got == by_dcmread(data, monkeypatch)


def test_compressed_pixels_of_a_large_file_are_known_whole_by_their_last_bytes():
    """As a hashing worker parses it (through the reader that hashes what it reads), and as a cloud object is read:
    the file's last 8 bytes, not its frames, tell a whole one."""
    import hashlib

    from chorus_batch.sources.base import HashingReader, parse_through

    whole = encapsulated(frames=200, fragment=60_000)

    class Counting(io.BytesIO):
        reads = 0

        def read(self, size=-1):
            Counting.reads += 1
            return super().read(size)

    stream = Counting(whole)
    assert "error" not in readers.parse_facts(KIND_DICOM, stream) and Counting.reads <= 3
    reader = HashingReader(io.BytesIO(whole).read, hashlib.md5(), len(whole))
    assert json.loads(parse_through(readers.parser(KIND_DICOM), reader)) == facts(whole)
    assert reader.finish() == len(whole) and reader.digest.hexdigest() == hashlib.md5(whole).hexdigest()
    # cut: the walk seeks back from the end to the items, which the hashing reader no longer keeps: no facts from
    # it (never wrong ones); the file is read again for them, and told
    cut = whole[: len(whole) - 30_000]
    reader = HashingReader(io.BytesIO(cut).read, hashlib.md5(), len(cut))
    assert parse_through(readers.parser(KIND_DICOM), reader) is None
    assert reader.finish() == len(cut) and reader.digest.hexdigest() == hashlib.md5(cut).hexdigest()
    assert facts(cut)["error"].startswith(readers.PIXELS_CUT)


def test_a_transfer_syntax_that_disagrees_with_the_dataset_goes_to_dcmread(monkeypatch):
    data = dicom(ExplicitVRLittleEndian)
    relabelled = data.replace(ExplicitVRLittleEndian.encode() + b"\x00", ImplicitVRLittleEndian.encode() + b"\x00\x00\x00")
    relabelled = relabelled.replace(b"UI\x14\x00" + ImplicitVRLittleEndian.encode(), b"UI\x12\x00" + ImplicitVRLittleEndian.encode())
    assert readers._dicom_elements_plain(relabelled, complete=True) is None
    assert facts(relabelled) == by_dcmread(relabelled, monkeypatch)


def damaged(base: bytes, edits) -> bytes:
    """`base` with each (edit, where, payload) applied: bytes overwritten, the file cut, bytes inserted or deleted."""
    data = bytearray(base)
    for edit, where, payload in edits:
        at = where % max(len(data), 1)
        if edit == "flip":
            data[at: at + len(payload)] = payload
        elif edit == "cut":
            del data[at:]
        elif edit == "insert":
            data[at:at] = payload
        else:
            del data[at: at + len(payload)]
    return bytes(data)


PLAIN = [dicom(ExplicitVRLittleEndian, PatientBirthDate="19700101"), dicom(ImplicitVRLittleEndian, OtherPatientIDs="X1")]


class Trickle(io.RawIOBase):
    """A stream that returns at most 1,000 bytes a read, as a network stream may."""

    def __init__(self, data: bytes):
        self._data, self._pos = data, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = offset if whence == io.SEEK_SET else self._pos + offset if whence == io.SEEK_CUR else len(self._data) + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        size = len(self._data) - self._pos if size is None or size < 0 else size
        chunk = self._data[self._pos: self._pos + min(size, 1000)]
        self._pos += len(chunk)
        return chunk


def test_short_reads_do_not_cut_the_header_short():
    data = dicom(private_bytes=5000)  # the patient module lies past the first short read
    got = readers.parse_facts(KIND_DICOM, Trickle(data))
    assert got == facts(data) and got["patient_id"] == "000177"


def test_short_reads_do_not_cut_a_wfdb_header_short():
    from chorus_batch.validate.rules import KIND_WFDB

    text = "r 40 250 1000\n" + "".join(f"r.dat 16 200 12 0 0 0 0 S{k:02}\n" for k in range(40))
    assert readers.parse_facts(KIND_WFDB, Trickle(text.encode()))["n_sig"] == 40


@pytest.mark.parametrize("keep", [100 + 32, 150, 200, "meta", "meta+4", "into the patient module", "before pixels - 3"])
def test_a_file_cut_inside_its_header_is_unreadable_not_empty(keep, monkeypatch):
    """An interrupted copy ends inside the header: dcmread (and the generator) read what is there without a word,
    so the file's facts were empty and validation blamed its folders ("Modality (none) in the header") and its
    PatientID. Now it is unreadable, by both paths, with what to do."""
    data = dicom(private_bytes=0)
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    at = {"meta": meta_end, "meta+4": meta_end + 4, "into the patient module": data.index(b"000177") + 3,
          "before pixels - 3": data.index(b"\xe0\x7f\x10\x00") - 3}.get(keep, keep)
    cut = data[:at]
    got, again = facts(cut), by_dcmread(cut, monkeypatch)
    assert got == again and "ends inside its DICOM header" in got.get("error", ""), (at, got)
    assert facts(data).get("patient_id") == "000177"


# dicom_walk: the struct reading that decides most plain files before pydicom's generator (readers._walk_plain)


def with_sequences(syntax=ExplicitVRLittleEndian, *, nested: bool = True, **attributes) -> bytes:
    """A plain file with sequences before the patient module (pydicom writes them with undefined lengths)."""
    from pydicom.sequence import Sequence

    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CTImageStorage, generate_uid(entropy_srcs=["r"])
    if nested:
        inner = Dataset()
        inner.CodeValue, inner.CodingSchemeDesignator = "113100", "DCM"
        item.PurposeOfReferenceCodeSequence = Sequence([inner, Dataset()])
    return dicom(syntax, ReferencedImageSequence=Sequence([item, Dataset()]), **attributes)


def walked(data: bytes):
    return dicom_walk.plain_elements(data, readers._DICOM_TAG_SET, complete=True)


def by_generator(data: bytes) -> dict:
    return {tag: element.value or None for tag, element in readers._walk_plain(data, complete=True).items()}


@pytest.mark.parametrize("case, data", [
    ("explicit", lambda: dicom(ExplicitVRLittleEndian)),
    ("encapsulated", lambda: dicom(JPEGBaseline8Bit)),
    ("implicit", lambda: dicom(ImplicitVRLittleEndian)),
    ("a private header", lambda: dicom(private_bytes=5000)),
    ("sequences", lambda: with_sequences()),
    ("flat sequences", lambda: with_sequences(nested=False)),
    ("implicit-VR sequences", lambda: with_sequences(ImplicitVRLittleEndian)),
    ("Latin-1", lambda: dicom(SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Jörg")),
    ("no pixel data", lambda: dicom(pixels=0)),
])
def test_the_struct_walk_decides_plain_files_as_pydicoms_generator_does(case, data, monkeypatch):
    data = data()
    fast = walked(data)
    assert fast is not None  # decided without pydicom
    assert {tag: value or None for tag, value in fast.items()} == by_generator(data)
    assert facts(data) == by_dcmread(data, monkeypatch)


@pytest.mark.parametrize("case, data", [
    ("another character set", lambda: dicom(SpecificCharacterSet="ISO_IR 144")),
    ("cut in the dataset", lambda: with_sequences()[:700]),
])
def test_what_the_struct_walk_does_not_decide_goes_to_pydicom(case, data, monkeypatch):
    data = data()
    assert walked(data) is None
    assert facts(data) == by_dcmread(data, monkeypatch)


def test_the_struct_walks_transfer_syntaxes_are_pydicoms():
    assert {k for k, implicit in readers._plain_syntaxes().items() if not implicit} == (
        dicom_walk.ENCAPSULATED_SYNTAXES | {ExplicitVRLittleEndian})
    assert {k for k, implicit in readers._plain_syntaxes().items() if implicit} == {ImplicitVRLittleEndian}


def test_reading_a_plain_header_does_not_import_pydicom():
    import subprocess
    import sys

    code = ("import io, sys; from chorus_batch.validate import readers, rules; data = sys.stdin.buffer.read(); "
            "f = readers.parse_facts(rules.KIND_DICOM, io.BytesIO(data)); "
            "assert f['patient_id'] == '000177', f; print('pydicom' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], input=with_sequences(), capture_output=True, check=True)
    assert out.stdout.strip() == b"False"


SEQUENCED = [with_sequences(), with_sequences(JPEGBaseline8Bit, nested=False, PatientBirthDate="19700101")]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(PLAIN + SEQUENCED), edits=st.lists(st.tuples(
    st.sampled_from(["flip", "cut", "insert", "delete"]), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
    min_size=1, max_size=4))
# (the Pixel Data's VR 'OW' made b"\x00W", no VR: the walk read it as implicit VR, as pydicom's generator does, and
# told the file cut inside its pixel data; the read after dcmread took a 2-byte length of 0 and read it whole)
@example(base=PLAIN[0], edits=[("flip", PLAIN[0].index(b"\xe0\x7f\x10\x00OW") + 4, b"\x00")])
# (PixelRepresentation's 'US' lost "S\x02": VR b"U\x00", which pydicom's reader takes for a VR it does not know, of
# length 0; the generator's path told PixelRepresentation lacking, dcmread's "cannot parse the file (NotImplementedError")
@example(base=PLAIN[0], edits=[("delete", 3175, b"\x00\x00")])
# (a tag's bytes overwritten: an unwanted element (F05A,5741) of VR 'SI', which both paths skip; 6 bytes inserted in the
# pixel data, so that (0707,0707) follows them: the generator's path told it out of order, dcmread's did not look)
@example(base=SEQUENCED[0], edits=[("insert", 927, b"\x83\x1e\x12\x16G\x89"), ("flip", 8661, b"E\xd3WZ\xf0AWS")])
def test_damaged_plain_files_give_what_dcmread_gives(base, edits, monkeypatch):
    data = damaged(base, edits)
    got = facts(data)
    assert got == by_dcmread(data, monkeypatch)
    assert not got.get("error", "").startswith("cannot parse the file"), got  # (a reader's bug, not the file's)
    fast = walked(data)
    if fast is not None:  # what it decides, it decides as pydicom's generator does
        assert {tag: value or None for tag, value in fast.items()} == by_generator(data)


@pytest.mark.parametrize("value", [b"", b"\x01\x00"])
def test_an_element_of_no_valid_vr_is_told_as_damage_by_either_path(value, monkeypatch):
    """A damaged explicit VR (PixelRepresentation's 'US' made b"U\\x00": two bytes lost) is one pydicom's reader takes
    for a VR it does not know; dcmread refused it, where of no value, as "cannot parse the file (NotImplementedError:
    Unknown Value Representation ...)", a reader's words, while the generator's path told PixelRepresentation lacking
    (and, of a value, both read its bytes as the attribute). Both tell the damaged element, and what to do."""
    base = PLAIN[0]
    at = base.index(b"\x28\x00\x03\x01US\x02\x00")
    data = base[:at] + b"\x28\x00\x03\x01U\x00" + len(value).to_bytes(2, "little") + value + base[at + 10:]
    assert walked(data) is None  # (the struct walk leaves it to pydicom's generator)
    expected = {"error": "element (0028,0103) PixelRepresentation has no valid value representation (VR 'U\\x00', "
                         "not one of DICOM's): the file is damaged (bytes lost or changed, as an interrupted or faulty "
                         "copy leaves them): copy or export the file again"}
    assert facts(data) == expected
    assert by_dcmread(data, monkeypatch) == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6 << 20), st.integers(0, 64)), min_size=1, max_size=8))
def test_the_hashing_reader_gives_the_bytes_asked_for_after_a_seek_far_ahead(steps):
    """A parser reading through the hashing worker's reader (the encapsulated pixel data's walk: the file's last bytes,
    then its items) is given the file's own bytes at every position, or NotKept where it seeks back too far: never
    other bytes. A seek far past the bytes kept dropped more than was kept, and later reads were shifted."""
    import hashlib

    from chorus_batch.sources.base import HashingReader, NotKept

    data = bytes(range(256)) * (6 << 12)  # 6 MiB (more than KEEP_BYTES), each byte telling its position mod 256
    reader = HashingReader(io.BytesIO(data).read, hashlib.md5(), len(data))
    for at, n in steps:
        try:
            reader.seek(at)
            got = reader.read(n)
        except NotKept:
            continue
        assert got == data[at: at + n], (at, n)
    reader.finish()
    assert reader.digest.hexdigest() == hashlib.md5(data).hexdigest()


def test_a_deflated_file_cut_short_is_told_to_be_copied_again():
    """A Deflated Explicit VR file is inflated whole by dcmread: cut anywhere past its header, it gave 'cannot parse the
    file (error: Error -5 while decompressing data: incomplete or truncated stream)', and the finding added
    're-export the image as DICOM Part 10': an interrupted copy, told as such."""
    whole = dicom(DeflatedExplicitVRLittleEndian, pixels=4096)
    assert facts(whole)["patient_id"] == "000177"
    got = facts(whole[:-10])
    assert got == {"error": "the file ends inside its deflated (compressed) data set (an interrupted copy?): copy the "
                            "file again"}, got


def test_a_deflated_file_is_inflated_only_as_far_as_its_header_is_read():
    """dcmread inflates a deflated data set whole to read its header (zlib.decompress of the whole file, even with
    stop_before_pixels): a 64 MiB image held ~2 x 64 MiB at once (a 200 MiB one, 437 MiB). It is inflated a chunk at a
    time, what lies past the header counted, not kept; its facts are the same."""
    import tracemalloc

    small, large = dicom(DeflatedExplicitVRLittleEndian, pixels=4096), dicom(DeflatedExplicitVRLittleEndian,
                                                                                pixels=64 << 20)
    tracemalloc.start()
    try:
        got = facts(large)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == facts(small) and got["patient_id"] == "000177", got
    assert peak < 16 << 20, f"{peak:,} bytes at the peak"


def test_a_deflated_file_whose_header_runs_past_the_most_read_for_it_still_gives_its_facts(monkeypatch):
    """A deflated header longer than DICOM_HEAD_MAX_BYTES (a large private element) goes to dcmread, which reads on in
    the inflated data set, and skips by seeking: it is inflated as far as dcmread reads, not cut where the first bytes
    read for a header end (no facts and no error). (The most read for a header pinned at 64 KiB.)"""
    from pydicom import dcmread

    monkeypatch.setattr(readers, "DICOM_HEAD_BYTES", 16 * 1024)
    monkeypatch.setattr(readers, "DICOM_HEAD_MAX_BYTES", 64 * 1024)
    ds = dcmread(io.BytesIO(dicom(DeflatedExplicitVRLittleEndian, pixels=4096)))
    ds.add_new(0x00090010, "LO", "VENDOR")
    ds.add_new(0x00091001, "OB", bytes(range(256)) * 1024)  # 256 KiB, 4x the most read
    ds.PatientID = "000177"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    got = facts(out.getvalue())
    assert got["patient_id"] == "000177" and "error" not in got, got
    assert facts(out.getvalue()[:-5])["error"].startswith("the file ends inside its deflated (compressed) data set")


def test_a_deflated_file_whose_data_set_inflates_short_of_its_pixel_data_is_told():
    """A deflated data set that inflates whole, but to fewer bytes than its header gives the pixel data (a writer that
    stopped, then closed the stream), read as a whole image: dcmread's size check skips deflated files."""
    import zlib

    whole = dicom(DeflatedExplicitVRLittleEndian, pixels=4096)
    meta_length = int.from_bytes(whole[140:144], "little")  # (the meta group's length: the data set follows it)
    start = 144 + meta_length
    body = zlib.decompress(whole[start:], -zlib.MAX_WBITS)
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    short = whole[:start] + packer.compress(body[:-1000]) + packer.flush()
    got = facts(short)
    assert got["error"].startswith(f"{readers.PIXELS_CUT} (its deflated data set inflates whole, but to too few "
                                   "bytes: "), got
    assert "copy the file again" in got["error"], got


@pytest.mark.parametrize(("name", "kept"), [("Doe^Jane", False), ("MADONNA", False), ("000177", True),
                                            ("000177^^^", True), ("P0001", True)])
def test_the_values_of_identifying_attributes_are_never_kept_only_that_they_are_filled(name, kept, monkeypatch):
    """A DICOM file's facts are kept in the manifest for good (file_facts): a file not de-identified put its patient's
    name, birth date, address and other ids there, for dicom.identifying_tag, which asks only whether they are
    filled. A PatientName that may be the person id (the pseudonym the rule accepts) is kept as written."""
    data = dicom(PatientName=name, PatientBirthDate="19700101", PatientAddress="1 Main St", OtherPatientIDs="MRN4711")
    for got in (facts(data), by_dcmread(data, monkeypatch)):
        text = readers.facts_text(got)
        assert not any(value in text for value in ("19700101", "Main St", "MRN4711")), text
        assert got["patient_birth_date"] == got["patient_address"] == got["other_patient_ids"] == readers.IDENTIFYING_FILLED
        assert got["patient_name"] == (name if kept else readers.IDENTIFYING_FILLED)


def test_headers_read_in_threads_from_a_remote_source_never_meet_a_half_imported_pydicom():
    """A run over s3:// or az:// reads headers in threads; the first of them to need pydicom imported it while others
    did too, and some got "no readable DICOM header: cannot parse the file (ImportError: cannot import name ... from
    partially initialized module 'pydicom...' (most likely due to a circular import))" of good files, kept in
    file_facts and said again by every later validate. pydicom is imported once, the other threads waiting for it."""
    import subprocess
    import sys

    code = """
import hashlib, json, fsspec, polars as pl
from chorus_batch.sources import open_source
from chorus_batch.validate import readers, rules
fs = fsspec.filesystem("memory")
files = {f"/site/{i:06d}/Images/CT/1/2.25.1/{i}.dcm": bytes([i]) * (200 + i) for i in range(1, 49)}
fs.pipe(files)
source = open_source("memory://site")
todo = pl.DataFrame({"srcfile": [k[len("/site/"):] for k in files], "md5": [hashlib.md5(v).hexdigest() for v in files.values()],
                     "kind": [rules.KIND_DICOM] * len(files)})
facts = readers.extract_facts(source, todo, workers=24)
print(json.dumps(sorted(set(facts["facts"].to_list()))))
"""
    for _ in range(3):  # each in a new interpreter: pydicom not imported yet
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        said = json.loads(out.stdout)
        assert not any("Error" in text for text in said), said
        assert all("not a DICOM Part 10 file" in text for text in said), said


@pytest.mark.parametrize("where", ["a private OB element's length", "the pixel data's length"])
def test_a_file_cut_inside_an_elements_4_byte_length_is_told_as_cut(where, monkeypatch):
    """A copy cut inside the 4-byte length of an element of a long VR (OB, OW, UN, SQ: 12-byte element header) made
    dcmread raise struct.error, told as "cannot parse the file (error: unpack requires a buffer of 4 bytes)": neither
    what happened nor what to do. It is a file cut inside its header, by both paths, as any other."""
    data = dicom(private_bytes=50)
    element = data.index(b"\x09\x00\x01\x10OB") if where.startswith("a private") else data.index(b"\xe0\x7f\x10\x00")
    for at in range(element + 9, element + 12):  # (tag 4, VR 2, reserved 2, then the length's 4 bytes)
        cut = data[:at]
        got, again = facts(cut), by_dcmread(cut, monkeypatch)
        assert got == again == {"error": "the file ends inside its DICOM header (an interrupted copy?): copy the file "
                                         "again"}, (at, got, again)


def test_a_file_cut_at_any_byte_of_its_data_set_is_decided_by_the_walk_or_left_to_pydicom(monkeypatch):
    """The struct walk learns that an element's header runs past the bytes given from struct.error (not a bounds test
    per element): a cut at any byte of the data set, inside an element's 8- or 12-byte header as inside a value, is
    never an exception out of the walk; given as a head, it is undecided (the header may go on); given whole, the
    facts are dcmread's."""
    data = dicom(private_bytes=50)
    start = readers._Inflated.meta_group(data)[0]  # (the data set's first element, after the meta group)
    for at in range(start, data.index(b"\xe0\x7f\x10\x00") + 12):
        cut = data[:at]
        assert dicom_walk.plain_elements(cut, readers._DICOM_TAG_SET, complete=False) is None, at
        walked(cut)  # (None, or the elements: never an exception)
        assert facts(cut) == by_dcmread(cut, monkeypatch), at


def test_a_file_holding_nothing_of_an_image_after_its_meta_group_is_told_so():
    """A copy cut at an element's end early in its data set (after ImageType, before SOPClassUID) read well and gave
    no facts: validation told a header lacking PatientID, Modality, the series, the study attributes (five findings,
    none saying the file is cut). Nothing an image's header holds and no pixel data: told as such, once."""
    data = dicom(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    assert data[meta_end:meta_end + 6] == b"\x08\x00\x08\x00CS"
    at = meta_end + 8 + int.from_bytes(data[meta_end + 6:meta_end + 8], "little")
    assert facts(data[:at]) == {"error": f"the file holds no image after its File Meta Information: no SOPClassUID, "
                                         f"Modality, PatientID nor pixel data (it ends at byte {at}): the copy is cut "
                                         f"(an interrupted copy?), or it is no image (a DICOMDIR?); copy the file "
                                         f"again, or export the image again"}
    assert facts(dicom(pixels=0)).get("patient_id") == "000177"  # (a header without pixel data still reads)


# ----------------------------------------------------------------------------- a File Meta group dcmread reads oddly
# Found by fuzzing the readers (test_formats.py's test_every_reader_tells_damage_as_what_is_wrong): each gave the
# catch-all "cannot parse the file (AttributeError: 'MultiValue' object has no attribute 'is_deflated')", or a
# ValueError of pydicom's UID, a NotImplementedError, a BytesLengthException, not what is wrong with the file.
SYNTAX = ExplicitVRLittleEndian.encode() + b"\0"  # (as written: 20 bytes, NUL-padded)


@pytest.mark.parametrize("syntax", [b"1.2.999.1.2.3.4.5.6\0", b"1.2.840\\1.2.840.1000"], ids=["private", "two"])
def test_a_transfer_syntax_pydicom_does_not_know_is_read_in_the_encoding_dcmread_found(syntax):
    # a vendor's private transfer syntax (its UID outside 1.2.840.10008), or a damaged value of two UIDs: dcmread
    # reads the data set in the encoding it finds; the facts are those of the data set, not a crash on is_deflated
    data = dicom(ExplicitVRLittleEndian)
    assert data.count(SYNTAX) == 1 and len(syntax) == len(SYNTAX)
    got = facts(data.replace(SYNTAX, syntax))
    assert "error" not in got, got
    assert got["patient_id"] == "000177" and got["modality"] == "CT"
    # ... and the UID is kept, for dicom.transfer_syntax: no standard viewer decodes such a file's pixel data
    assert got["unknown_transfer_syntax"] == syntax.rstrip(b"\0").decode(), got


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, ExplicitVRBigEndian,
                                    DeflatedExplicitVRLittleEndian, "1.2.840.10008.1.2.4.94"])  # (JPIP Referenced)
def test_a_transfer_syntax_of_the_standard_is_not_kept(syntax):
    # (a JPIP-referenced file's pixel data lie on a server: it holds none; and pydicom reads none of these retired
    # syntaxes, which its UID dictionary holds)
    got = facts(dicom(syntax, pixels=0 if syntax.endswith(".94") else 64))
    assert "error" not in got and "unknown_transfer_syntax" not in got, got


@pytest.mark.parametrize("old, new, told", [
    (b"\x02\x00\x10\x00UI", b"\x02\x00\x10\x00UK", "Unknown Value Representation 'UK' in tag (0002,0010)"),
    (b"\x02\x00\x01\x00OB", b"\x02\x00\x01\x00Ob", "(0002,0000)"),
], ids=["unknown-vr", "group-length-misread"])
def test_a_damaged_file_meta_group_is_told_as_a_header_not_parsed(old, new, told):
    data = dicom(ExplicitVRLittleEndian)
    assert data.count(old) == 1
    error = facts(data.replace(old, new))["error"]
    assert error.startswith("DICOM header cannot be parsed: ") and told in error, error
    assert "pydicom.config" not in error  # (pydicom's advice to its own users: nothing a site can do)


class _Pieces:
    """A stream giving its bytes in the pieces given (as a network stream's short reads), then b"" for good."""

    def __init__(self, *pieces: bytes):
        self.pieces, self.reads = list(pieces), 0

    def read(self, n: int) -> bytes:
        self.reads += 1
        if not self.pieces:
            return b""
        piece = self.pieces.pop(0)
        assert len(piece) <= n
        return piece


def test_a_header_shorter_than_the_head_read_is_its_one_read_not_a_copy():
    # A DICOM file smaller than DICOM_HEAD_BYTES (most of a site's: 64 KiB images) was joined with the b"" of the
    # read that found its end: a copy of the whole file for each header parsed, a sixth of the parse's CPU
    whole = dicom(pixels=32 * 1024)
    assert len(whole) < readers.DICOM_HEAD_BYTES
    stream = _Pieces(whole)
    assert readers._read_up_to(stream, readers.DICOM_HEAD_BYTES) is whole
    assert stream.reads == 2  # (the second found the end)
    # short reads are still joined into all the bytes asked for, and stop at the end or at n
    stream = _Pieces(whole[:100], whole[100:5000], whole[5000:])
    assert readers._read_up_to(stream, readers.DICOM_HEAD_BYTES) == whole
    assert readers._read_up_to(_Pieces(b"ab", b"cd"), 4) == b"abcd"
    assert readers._read_up_to(_Pieces(), 4) == b""


def fragmented(frames: int = 2, **attributes) -> bytes:
    """A JPEG file whose pixel data are encapsulated: a Basic Offset Table, then two fragments per frame."""
    import pydicom
    from pydicom.encaps import encapsulate

    data = dicom(JPEGBaseline8Bit, **attributes)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.NumberOfFrames = 1, "MONOCHROME2", frames
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes([i]) * (40 + i) + b"\xff\xd9" for i in range(frames)],
                               fragments_per_frame=2, has_bot=True)
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# Files the first damaged-file test's bases do not hold: pixel data encapsulated (offset table and fragments), a
# deflated or big-endian data set, nested sequences of undefined length in implicit VR, no preamble
OTHER_BASES = [
    fragmented(PatientBirthDate="19700101"),
    dicom(DeflatedExplicitVRLittleEndian, PatientBirthDate="19700101"),
    dicom(ExplicitVRBigEndian, OtherPatientIDs="X1"),
    with_sequences(ImplicitVRLittleEndian),
    dicom(preamble=False),
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(OTHER_BASES), edits=st.lists(st.tuples(
    st.sampled_from(["flip", "cut", "insert", "delete"]), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
    min_size=1, max_size=4))
# (a sequence item's header past the file's end: pydicom raised "OSError: No tag to read at file position 388", which
# parse_facts lets through as the file's reading failing, not its content)
@example(base=OTHER_BASES[0], edits=[("flip", 8226, b"\xecS\x02"), ("delete", 4384, b"u\xb4b8")])
def test_damaged_files_of_other_encodings_give_what_dcmread_gives(base, edits, monkeypatch):
    data = damaged(base, edits)
    got = facts(data)
    assert got == by_dcmread(data, monkeypatch)
    assert not got.get("error", "").startswith("cannot parse the file"), got  # (a reader's bug, not the file's)


def test_an_element_after_the_pixel_data_is_told_by_either_path(monkeypatch):
    # A file the struct walk leaves to pydicom's generator (an element of a VR that pydicom does not know, and which
    # the facts do not ask for): the generator's path told an element after the pixel data, dcmread's path did not
    data = damaged(SEQUENCED[0], [("insert", 927, b"\x83\x1e\x12\x16G\x89"), ("flip", 8661, b"E\xd3WZ\xf0AWS")])
    assert walked(data) is None
    got = facts(data)
    assert got["error"].startswith("its elements are out of order: (0707,0707) follows the pixel data"), got
    assert by_dcmread(data, monkeypatch) == got


def test_a_sequence_item_past_the_files_end_is_told_as_a_cut_header():
    """pydicom reads a sequence item's header past the file's end (damaged or cut: an item length running past it) as
    "OSError: No tag to read at file position ...", which was let through as the file's reading failing."""
    data = damaged(OTHER_BASES[0], [("flip", 8226, b"\xecS\x02"), ("delete", 4384, b"u\xb4b8")])
    assert facts(data) == {"error": "the file ends inside its DICOM header (an interrupted copy?): copy the file again"}


def _dicomdir() -> bytes:
    """A DICOMDIR (Media Storage Directory Storage) as pydicom's FileSet writes one, of one image."""
    import tempfile
    from pathlib import Path

    import pydicom
    from pydicom.fileset import FileSet

    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "image.dcm"
        image.write_bytes(dicom(StudyID="1", StudyInstanceUID=generate_uid(entropy_srcs=["study"])))
        fs = FileSet()
        fs.add(pydicom.dcmread(image))
        fs.write(Path(folder) / "out")
        return (Path(folder) / "out" / "DICOMDIR").read_bytes()


def test_a_dicomdir_under_a_dcm_name_is_told_as_no_image(monkeypatch):
    """A DICOMDIR saved as 000.dcm was told as a file cut after its File Meta Information ("copy the file again"), to
    no avail. It is told as the export's index, not an image, by either path."""
    data = _dicomdir()
    error = facts(data)["error"]
    assert error.startswith("a DICOMDIR (MediaStorageSOPClassUID 1.2.840.10008.1.3.10") and "leave it out of Images/" in error, error
    assert by_dcmread(data, monkeypatch)["error"] == error


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
                                    DeflatedExplicitVRLittleEndian])
def test_burned_in_annotation_is_kept_on_every_path(syntax):
    # BurnedInAnnotation YES: the pixels hold text that identifies the patient (dicom.burned_in); dicom.v15 did not
    # read it, and such an image passed as de-identified. The struct walk and dcmread keep it alike.
    got = facts(dicom(syntax, BurnedInAnnotation="YES"))
    assert got.get("burned_in_annotation") == "YES", got
    assert "burned_in_annotation" not in facts(dicom(syntax))
