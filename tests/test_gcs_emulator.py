"""The test GCS emulator: every client the project uses reaches it (gcsfs/etils.epath, tensorstore),
and the create-only precondition that the object-store lock relies on is honoured."""
import json

import gcsfs
import numpy as np
import pytest
import tensorstore as ts
from etils import epath


def test_epath_writes_reads_and_lists_through_the_emulator(gcs):
  root = epath.Path(gcs.prefix("epath"))
  (root / "sub").mkdir(parents=True, exist_ok=True)
  (root / "sub" / "a.json").write_text(json.dumps({"x": 1}))
  assert json.loads((root / "sub" / "a.json").read_text()) == {"x": 1}
  assert [p.name for p in (root / "sub").iterdir()] == ["a.json"]
  assert not (root / "missing").exists()


def test_create_only_upload_refuses_an_existing_object(gcs):
  fs = gcsfs.GCSFileSystem()
  path = gcs.prefix("lock")[len("gs://"):] + "/lock"
  fs.pipe_file(path, b"first", mode="create")
  with pytest.raises(FileExistsError):
    fs.pipe_file(path, b"second", mode="create")
  assert fs.cat_file(path) == b"first"


def test_tensorstore_round_trip(gcs):
  bucket, name = gcs.prefix("ts")[len("gs://"):].split("/", 1)
  spec = {"driver": "zarr", "kvstore": {"driver": "gcs", "bucket": bucket, "path": name}}
  x = np.arange(12, dtype=np.float32).reshape(3, 4)
  store = ts.open(spec, create=True, dtype=ts.float32, shape=x.shape).result()
  store.write(x).result()
  np.testing.assert_array_equal(ts.open(spec).result().read().result(), x)
