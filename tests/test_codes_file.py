"""codes_file: the one reader / writer of .npz code files (atomic writes, one-line errors)."""
import io
import os
import zipfile

import numpy as np
import pytest

from orthohash_jax import cli, codes_file
from test_checkpoint import file_size_limit

RESULT = {"query_codes": np.array([[3], [5]], np.uint32),
          "db_codes": np.array([[1], [2], [255]], np.uint32),
          "query_labels": np.array([0, 1], np.int32), "db_labels": np.array([1, 0, 1], np.int32)}


def test_save_and_load_round_trip(tmp_path):
  path = str(tmp_path / "codes.npz")
  codes_file.save_codes(path, RESULT, 8, {"num_bits": 8})
  assert os.listdir(tmp_path) == ["codes.npz"]
  codes = codes_file.load_codes(path)
  assert codes["num_bits"] == 8 and "config" not in codes  # the readers' arrays only
  assert codes_file.read_npz(path, optional=("config",))["config"] == '{"num_bits": 8}'
  for key, value in RESULT.items():
    np.testing.assert_array_equal(codes[key], value)


def test_write_errors_name_the_file(tmp_path):
  """A failed write names the file asked for (not the temporary file) and leaves nothing."""
  path = str(tmp_path / "missing" / "codes.npz")
  with pytest.raises(OSError) as e:
    codes_file.save_codes(path, RESULT, 8, {})
  assert str(e.value) == f"cannot write {path} (No such file or directory)"
  with pytest.raises(ValueError, match="is a directory"):
    codes_file.write_npz(tmp_path, {"a": np.zeros(1)})
  codes_file.write_npz(tmp_path / "plain", {"a": np.zeros(1)})  # no suffix added
  assert sorted(os.listdir(tmp_path)) == ["plain"]


def test_read_errors_are_one_line_naming_the_file(tmp_path):
  cases = {
      "keys.npz": ({"db_codes": RESULT["db_codes"]}, "missing keys ['num_bits']"),
      "bits.npz": ({"db_codes": RESULT["db_codes"], "num_bits": np.float32(8)},
                   "num_bits must be an integer scalar"),
      "zero.npz": ({"db_codes": RESULT["db_codes"], "num_bits": 0}, "num_bits must be >= 1"),
      "pad.npz": ({"db_codes": RESULT["db_codes"], "num_bits": 4}, "bits set above bit 4"),
      "words.npz": ({"db_codes": RESULT["db_codes"], "num_bits": 40}, "1 words per code"),
  }
  for name, (arrays, message) in cases.items():
    np.savez(tmp_path / name, **arrays)
    with pytest.raises(ValueError) as e:
      codes_file.read_npz(tmp_path / name, codes_file.INDEX_KEYS)
    assert str(e.value).startswith(f"{tmp_path / name}: ") and message in str(e.value), e.value
    assert "\n" not in str(e.value)
  np.save(tmp_path / "array.npy", RESULT["db_codes"])
  with pytest.raises(ValueError, match=r"not a .npz file \(it starts with b'\\x93NUMPY'\)"):
    codes_file.read_npz(tmp_path / "array.npy")
  np.savez(tmp_path / "q.npz", query_codes=RESULT["query_codes"], num_bits=8)
  with pytest.raises(ValueError, match="codes of 8 bits, 16 bits expected"):
    codes_file.read_npz(tmp_path / "q.npz", num_bits=16)
  with pytest.raises(ValueError, match=f"cannot read codes file {tmp_path / 'q.npz'}: missing"):
    codes_file.load_codes(str(tmp_path / "q.npz"))


def test_codes_file_errors(tmp_path):
  result = {"query_codes": np.zeros((2, 1), np.uint32), "db_codes": np.zeros((3, 1), np.uint32),
            "query_labels": np.zeros(2, np.int32), "db_labels": np.zeros(3, np.int32)}
  with pytest.raises(ValueError, match="is a directory"):
    codes_file.save_codes(str(tmp_path), result, 8, {})
  assert os.listdir(tmp_path) == []  # no stray temporary file
  path = str(tmp_path / "codes.npz")
  codes_file.save_codes(path, result, 8, {})
  raw = bytearray(open(path, "rb").read())
  raw[150:154] = b"\xff\xff\xff\xff"  # in the first member's npy header: a CRC mismatch
  open(path, "wb").write(bytes(raw))
  with pytest.raises(ValueError, match=f"cannot read codes file {path}"):
    codes_file.load_codes(path)
  (tmp_path / "text.npz").write_text("not a zip")
  with pytest.raises(ValueError, match=f"cannot read codes file {tmp_path / 'text.npz'}"):
    codes_file.load_codes(str(tmp_path / "text.npz"))


def test_a_text_file_is_named_as_such_not_by_numpy_pickle_hint(tmp_path):
  for kind in (".npz", ".npy"):
    text = tmp_path / f"codes{kind}"
    text.write_text("0 1 0 1\n")
    with pytest.raises(ValueError, match=rf"codes\{kind}: not a \{kind} file \(it starts with "
                       r"b'0 1 0 '\)") as e:
      codes_file.check_format(str(text), kind)
    assert "pickle" not in str(e.value)
  with pytest.raises(ValueError, match="not a .npz file"):
    codes_file.load_codes(str(tmp_path / "codes.npz"))


def with_member(path, name, data: bytes):
  """Adds a member ``name`` holding ``data`` (deflated) to the .npz ``path``."""
  with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
    archive.writestr(name, data)


def test_only_the_arrays_a_command_uses_are_read(tmp_path):
  """Issue 36 #19: an unused member is never decompressed (here it cannot be: its npy header
  claims 2**40 bytes and its data is not there), and labels are read only where used."""
  path = str(tmp_path / "codes.npz")
  codes_file.save_codes(path, RESULT, 16, {"seed": 0})
  huge = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.uint8))
  huge["shape"] = (2 ** 40,)
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(header, huge)
  with_member(path, "unused.npy", header.getvalue())
  codes = codes_file.load_codes(path)
  assert sorted(codes) == ["db_codes", "db_labels", "num_bits", "query_codes", "query_labels"]
  index = codes_file.read_npz(path, codes_file.INDEX_KEYS)
  assert sorted(index) == ["db_codes", "num_bits"]
  index = codes_file.read_npz(path, codes_file.INDEX_KEYS, optional=("db_labels", "absent"))
  np.testing.assert_array_equal(index["db_labels"], RESULT["db_labels"])


def test_an_array_over_the_size_bound_is_refused_before_it_is_read(tmp_path, monkeypatch):
  path = str(tmp_path / "codes.npz")
  codes_file.save_codes(path, RESULT, 16, {})
  monkeypatch.setattr(codes_file, "MAX_ARRAY_BYTES", RESULT["db_codes"].nbytes - 1)
  monkeypatch.setattr(np.lib.format, "read_array", None)  # reading the data would fail here
  with pytest.raises(ValueError) as e:
    codes_file.read_npz(path, codes_file.INDEX_KEYS)
  assert str(e.value).startswith(f"{path}: not a readable .npz file (ValueError: db_codes is "
                                 f"uint32 {RESULT['db_codes'].shape}: ")
  assert "GiB bound (half of this machine's memory)" in str(e.value)


@pytest.mark.parametrize("change,message", [
    ({"db_labels": np.int32(3)}, "db_labels must be (N,) class ids or (N, C) multi-hot rows for "
     "the N = 3 db_codes, got shape ()"),
    ({"query_labels": np.zeros(3, np.int32)}, "query_labels must be (N,) class ids or (N, C) "
     "multi-hot rows for the N = 2 query_codes, got shape (3,)"),
    ({"db_codes": np.zeros((0, 1), np.uint32), "db_labels": np.zeros(0, np.int32)},
     "db_codes has no rows"),
])
def test_labels_that_do_not_fit_their_codes_and_an_empty_database_are_one_line(tmp_path, change,
                                                                             message):
  path = str(tmp_path / "codes.npz")
  np.savez(path, **{**RESULT, "num_bits": np.int64(16), **change})
  with pytest.raises(ValueError) as e:
    codes_file.load_codes(path)
  assert str(e.value) == f"cannot read codes file {path}: {message}"


def test_a_full_disk_while_writing_codes_exits_1_not_2(tmp_path, capsys):
  """Issue 36 #20: status 2 is for bad flags, config or data; a full disk is the machine's."""
  path = str(tmp_path / "codes.npz")
  big = {**RESULT, "db_codes": np.zeros((50_000, 1), np.uint32),
         "db_labels": np.zeros(50_000, np.int32)}
  with file_size_limit(20_000):
    status = cli.run_tool(lambda: codes_file.save_codes(path, big, 16, {}))
  assert status == 1 and os.listdir(tmp_path) == []
  assert capsys.readouterr().err.strip() == f"error: cannot write {path} (File too large)"
  assert cli.run_tool(lambda: codes_file.save_codes(str(tmp_path / "no" / "c.npz"), RESULT, 16,
                                                    {})) == 2  # a bad path stays a usage error
