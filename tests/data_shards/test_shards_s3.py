"""Shards through the real local S3 (SeaweedFS): round trip, resume, inspect, access errors."""

import io
import json
import tarfile

import pytest
from click.testing import CliRunner

from data_shards import shard_writer
from data_shards.loader import AugmentConfig, LoaderConfig, make_train_loader, make_val_loader
from data_shards.manifest import fetch_ground_truth, find_manifests, manifest_url, read_manifest, verify_manifest
from data_shards.storage import S3Settings, S3Store, StorageAccessError, check_access, s3_client
from data_shards.wider_layout import Face, WiderLayout
from isrn_model.wider_eval import load_ground_truth

pytestmark = pytest.mark.integration


def settings_of(s3) -> S3Settings:
    return S3Settings(endpoint_url=s3.endpoint_url, access_key=s3.access_key, secret_key=s3.secret_key, region=s3.region)


def test_round_trip_is_exact(wider_root, s3_env, fresh_bucket, tmp_path):
    url = f"s3://{fresh_bucket}/wider"
    layout = WiderLayout(wider_root)
    for split in ("train", "val"):
        manifest = shard_writer.build_split(wider_root, split, url, shard_size_mb=0.15, progress=False)
        records = layout.records(split)
        assert manifest.samples == len(records) and manifest.faces == sum(len(r.faces) for r in records)
        assert len(manifest.shards) > 1
        client = s3_client(S3Settings.from_env())
        seen = {}
        for shard in manifest.shards:
            body = client.get_object(Bucket=fresh_bucket, Key=f"wider/{split}/{shard.name}")["Body"].read()
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                for member in tar.getmembers():
                    seen[member.name] = tar.extractfile(member).read()
        for rec in records:
            key = f"{rec.event}/{rec.name}"
            assert seen[f"{key}.jpg"] == layout.image_path(split, rec).read_bytes()  # byte-identical
            meta = json.loads(seen[f"{key}.json"])
            assert tuple(Face(**f) for f in meta["faces"]) == rec.faces  # boxes and all six attributes
            assert meta["event"] == rec.event and meta["source"] == f"WIDER_{split}/images/{rec.path}"
    found = find_manifests(url)
    assert set(found) == {"train", "val"}
    assert verify_manifest(*found["val"]) == []
    fetch_ground_truth(manifest_url(url, "val"), tmp_path / "gt")
    gt = load_ground_truth(tmp_path / "gt")
    assert set(gt.keys()) == {(r.event, r.name) for r in layout.records("val")}

    # the loaders stream the same shards from S3 through the boto3 opener
    cfg = LoaderConfig(batch_size=2, augment=AugmentConfig(out_size=96), num_workers=1, val_batch_size=4)
    assert len(list(make_train_loader(manifest_url(url, "train"), cfg))) == 6
    keys = [k for b in make_val_loader(manifest_url(url, "val"), cfg) for k in b["keys"]]
    assert sorted(keys) == sorted((r.event, r.name) for r in layout.records("val"))


def test_rerun_skips_present_shards(wider_root, s3_env, fresh_bucket, monkeypatch):
    url = f"s3://{fresh_bucket}/w"
    first = shard_writer.build_split(wider_root, "val", url, shard_size_mb=0.15, progress=False)
    uploads = []
    original = S3Store.put_file
    monkeypatch.setattr(S3Store, "put_file", lambda self, p, n, sha: (uploads.append(n), original(self, p, n, sha)))
    second = shard_writer.build_split(wider_root, "val", url, shard_size_mb=0.15, progress=False)
    assert uploads == [] and second.shards == first.shards  # reproducible tars, nothing re-sent


def test_inspect_cli(wider_root, s3_env, fresh_bucket):
    from jobs.commands.shards import shards

    url = f"s3://{fresh_bucket}/cli"
    runner = CliRunner()
    result = runner.invoke(shards, ["build", "--wider-root", str(wider_root), "--split", "val", "--out", url,
                                    "--shard-size-mb", "0.2"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(shards, ["inspect", url, "--json", "--verify"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    records = WiderLayout(wider_root).records("val")
    assert summary["splits"]["val"]["images"] == len(records)
    assert summary["splits"]["val"]["faces"] == sum(len(r.faces) for r in records)


def test_access_errors_name_the_cause(local_s3, fresh_bucket):
    good = settings_of(local_s3)
    with pytest.raises(StorageAccessError, match="AWS_SECRET_ACCESS_KEY"):
        check_access(f"s3://{fresh_bucket}/x", S3Settings(endpoint_url=good.endpoint_url, access_key="a"))
    with pytest.raises(StorageAccessError, match="127.0.0.1:1"):
        check_access(f"s3://{fresh_bucket}/x", S3Settings(endpoint_url="http://127.0.0.1:1", access_key="a", secret_key="b"))
    with pytest.raises(StorageAccessError, match="bucket 'no-such-bucket-xyz' does not exist"):
        check_access("s3://no-such-bucket-xyz/x", good)
    with pytest.raises(StorageAccessError, match="refused the credentials"):
        check_access(f"s3://{fresh_bucket}/x", S3Settings(endpoint_url=good.endpoint_url, access_key="wrong", secret_key="wrong"))
