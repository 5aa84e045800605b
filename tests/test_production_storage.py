"""The production storage path, against the real Postgres and Redis on this machine.

Production switches by configuration only: the Dagster instance of deploy/dagster.prod.yaml
(its storage section; the k8s run launcher needs a cluster, which cannot run here) and MLflow with
a Postgres backend. The Redis response cache has its own module (tests/test_response_cache.py),
so that it runs whether or not Postgres is up.
"""

from __future__ import annotations

import uuid

import dagster as dg
import pytest
import yaml

from tests.conftest import ROOT, copy_sample, tiny_resources

PG = dict(host="127.0.0.1", port=5432, user="postgres")


def _pg_available() -> bool:
    try:
        import psycopg2

        psycopg2.connect(dbname="postgres", connect_timeout=2, **PG).close()
        return True
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not _pg_available(), reason="no Postgres on 127.0.0.1:5432")


@pytest.fixture
def pg_database():
    import psycopg2

    name = f"ossa_test_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(dbname="postgres", **PG)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    yield name
    conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def test_prod_instance_config_stores_runs_in_postgres(tmp_path, data_root, pg_database, monkeypatch):
    from ossa_assets.corpora.assets import source_documents

    prod = yaml.safe_load((ROOT / "deploy" / "dagster.prod.yaml").read_text())
    home = tmp_path / "prod_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({"storage": prod["storage"], "telemetry": prod["telemetry"]}))
    for k, v in {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": "5432", "DAGSTER_PG_DB": pg_database,
                 "DAGSTER_PG_USER": "postgres", "DAGSTER_PG_PASSWORD": ""}.items():
        monkeypatch.setenv(k, v)
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        instance.add_dynamic_partitions("corpus_source", ["openapi"])  # dynamic partitions in Postgres too
        key = dg.MultiPartitionKey({"domain": "api_spec", "source": "openapi"})
        result = dg.materialize(
            [source_documents], partition_key=key, instance=instance,
            resources=tiny_resources(data_root, copy_sample(tmp_path / "corpus")),
        )
        assert result.success
        rec = instance.fetch_materializations(dg.AssetKey(["corpora", "source_documents"]), limit=1).records[0]
        assert rec.asset_materialization.partition == "api_spec|openapi"
        assert rec.asset_materialization.metadata["documents"].value > 10
    finally:
        instance.dispose()


def test_mlflow_tracking_and_registry_on_postgres(pg_database):
    from resources.mlflow import MlflowResource

    res = MlflowResource(tracking_uri=f"postgresql://postgres@127.0.0.1:5432/{pg_database}")
    client = res.client()
    exp = client.get_experiment_by_name("ossa")
    run = client.create_run(exp.experiment_id, run_name="pg-check")
    client.log_metric(run.info.run_id, "val_loss", 1.5)
    mv = client.create_registered_model("ossa-pg-check") and client.create_model_version(
        "ossa-pg-check", "file:///tmp/model", run_id=run.info.run_id
    )
    client.set_terminated(run.info.run_id)
    assert client.get_run(run.info.run_id).data.metrics["val_loss"] == 1.5
    assert mv.version == "1" or mv.version == 1
