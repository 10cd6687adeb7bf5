"""The codes file (``codes_file``): errors of writing to a directory and of damaged files."""
import os

import numpy as np
import pytest

from orthohash_jax import codes_file


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
