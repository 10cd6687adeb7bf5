"""codes_file: the one reader / writer of .npz code files (atomic writes, one-line errors)."""
import os

import numpy as np
import pytest

from orthohash_jax import codes_file

RESULT = {"query_codes": np.array([[3], [5]], np.uint32),
          "db_codes": np.array([[1], [2], [255]], np.uint32),
          "query_labels": np.array([0, 1], np.int32), "db_labels": np.array([1, 0, 1], np.int32)}


def test_save_and_load_round_trip(tmp_path):
  path = str(tmp_path / "codes.npz")
  codes_file.save_codes(path, RESULT, 8, {"num_bits": 8})
  assert os.listdir(tmp_path) == ["codes.npz"]
  codes = codes_file.load_codes(path)
  assert codes["num_bits"] == 8 and codes["config"] == '{"num_bits": 8}'
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
