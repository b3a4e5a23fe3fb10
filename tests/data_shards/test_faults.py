"""The S3 server dies during an upload: no manifest appears, and a re-run completes."""

import pytest

from data_shards import shard_writer
from data_shards.manifest import find_manifests
from data_shards.storage import S3Settings, S3Store
from data_shards.wider_layout import WiderLayout

pytestmark = pytest.mark.integration


def test_server_stopped_mid_upload_then_resume(wider_root, tmp_path, monkeypatch):
    from tests.conftest import start_seaweedfs

    s3 = start_seaweedfs(tmp_path / "weed")
    try:
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        s3.client().create_bucket(Bucket="faults")
        url = "s3://faults/wider"
        uploads = []
        original = S3Store.put_file

        def put_then_die(self, path, name, sha):
            if len(uploads) == 2:
                s3.stop()  # the server goes away after two shards are in
            uploads.append(name)
            original(self, path, name, sha)

        monkeypatch.setattr(S3Store, "put_file", put_then_die)
        with pytest.raises(Exception):  # noqa: B017 - whatever botocore raises for a dead endpoint
            shard_writer.build_split(wider_root, "train", url, shard_size_mb=0.1, progress=False)
        monkeypatch.setattr(S3Store, "put_file", original)

        s3.start()
        assert find_manifests(url, S3Settings.from_env()) == {}  # the split is not visible
        resent = []
        monkeypatch.setattr(S3Store, "put_file", lambda self, p, n, sha: (resent.append(n), original(self, p, n, sha)))
        manifest = shard_writer.build_split(wider_root, "train", url, shard_size_mb=0.1, progress=False)
        assert manifest.samples == len(WiderLayout(wider_root).records("train"))
        assert len(resent) == len(manifest.shards) - 2  # the two shards already in were skipped
        assert set(find_manifests(url)) == {"train"}
    finally:
        s3.stop()
